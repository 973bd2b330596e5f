"""What the scripts under tests/ share: virtual environments for the real clients from PyPI
they drive (one per pinned requirement, under `target/`, created once and kept between runs),
and the test guests the end-to-end suite built."""

import glob
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(group, name, requirement):
    """The python of `target/{group}/{name}`, a virtual environment with `requirement`
    installed; made again only when the requirement changed."""
    path = os.path.join(ROOT, "target", group, name)
    python = os.path.join(path, "bin", "python")
    marker = os.path.join(path, "installed")
    if not os.path.exists(marker) or open(marker).read() != requirement:
        venv.create(path, clear=True, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
                       check=True)
        with open(marker, "w") as f:
            f.write(requirement)
    return python


def guest(name):
    """The newest build of a test guest, as tests/artifacts/build.rs left it."""
    pattern = os.path.join(ROOT, "target", "*", "build", "guest-artifacts-*", "out", "guests", "*", "release",
                           f"{name}.wasm")
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        sys.exit(f"no built {name}.wasm under target/: run the end-to-end tests first (cargo test), which build it")
    return found[-1]
