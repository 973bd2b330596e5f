"""Virtual environments for the real clients from PyPI that the scripts under tests/ drive:
one per pinned requirement, under `target/`, created once and kept between runs."""

import os
import subprocess
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
