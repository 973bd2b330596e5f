"""What the scripts under tests/ share: virtual environments for the real clients from PyPI
they drive (one per pinned requirement, under `target/`, created once and kept between runs),
and the test guests the end-to-end suite built."""

import glob
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOAL = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target", "debug", "shoal"))


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


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


def request(method, url, body=None, token=None):
    """An HTTP call, with `token` as a bearer token if given: (status, headers, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def start_node(data_dir, token):
    """`shoal up` on loopback with `token`, its log kept aside: (process, api, gateway)."""
    env = dict(os.environ)
    env.pop("SHOAL_TOKEN", None)
    args = [SHOAL, "up", "--data-dir", data_dir, "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0",
            "--token", token]
    log = tempfile.TemporaryFile("w+")
    node = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    match = re.search(r"api (\S+) gateway (\S+)", node.stdout.readline())
    if not match:
        node.kill()
        node.wait()
        log.seek(0)
        sys.exit(f"shoal did not start:\n{log.read()[-4000:]}")
    return node, match.group(1), match.group(2)


def in_environment(group, name, requirement, script, marker):
    """Runs `script` again in the virtual environment with `requirement`, unless this is that
    run (`marker` set in the environment: the venv's python links to this one)."""
    if os.environ.get(marker):
        return
    python = environment(group, name, requirement)
    os.execve(python, [python, os.path.abspath(script)] + sys.argv[1:], dict(os.environ, **{marker: "1"}))
