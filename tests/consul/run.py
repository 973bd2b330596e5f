#!/usr/bin/env python3
"""The Consul clients from PyPI against a real shoal node: `python3 tests/consul/run.py`.

For each pinned client (py-consul 1.8.0 and python-consul 1.1.0, which both install the
module `consul`, so each gets its own virtual environment under `target/consul-venvs`, kept
between runs), it starts `target/debug/shoal` on a fresh data directory with the API on
127.0.0.1:8500, where the seed's code expects it, runs the seed's registration unchanged
(`seed_register.py`), then `scenarios.py`; then it starts a node requiring a token and runs
the token scenario. Run by `scripts/test` after `cargo build --bin shoal`.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHOAL = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target", "debug", "shoal"))
CLIENTS = {"py-consul": "py-consul==1.8.0", "python-consul": "python-consul==1.1.0"}
SEED_PORT = 8500


def environment(name, requirement):
    """A virtual environment with one client installed, created once and reused."""
    path = os.path.join(ROOT, "target", "consul-venvs", name)
    python = os.path.join(path, "bin", "python")
    marker = os.path.join(path, "installed")
    if not os.path.exists(marker) or open(marker).read() != requirement:
        venv.create(path, clear=True, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement],
                       check=True)
        with open(marker, "w") as f:
            f.write(requirement)
    return python


def start_node(data_dir, api, token=None):
    """`shoal up` on loopback; returns the process, its API port and its gateway URL."""
    env = dict(os.environ)
    env.pop("SHOAL_TOKEN", None)
    args = [SHOAL, "up", "--data-dir", data_dir, "--api-listen", api, "--gateway-listen", "127.0.0.1:0",
            "--fuel-per-cpu-second", "1000000000"]
    if token:
        args += ["--token", token]
    node = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = node.stdout.readline()
    match = re.search(r"api (\S+) gateway (\S+)", line)
    if not match:
        node.kill()
        sys.exit(f"shoal did not start on {api}: {line!r}")
    return node, int(match.group(1).rsplit(":", 1)[1]), match.group(2)


def port_is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def main():
    if not os.path.exists(SHOAL):
        sys.exit(f"{SHOAL} is missing: run `cargo build --bin shoal` first")
    if not port_is_free(SEED_PORT):
        sys.exit(f"127.0.0.1:{SEED_PORT} is taken: the seed's code registers with localhost:{SEED_PORT}")
    for name, requirement in CLIENTS.items():
        python = environment(name, requirement)
        print(f"{requirement}:")
        with tempfile.TemporaryDirectory() as data_dir:
            node, api_port, gateway = start_node(data_dir, f"127.0.0.1:{SEED_PORT}")
            try:
                subprocess.run([python, os.path.join(HERE, "seed_register.py")], check=True)
                print("  ok: the seed's registration, unchanged")
                subprocess.run([python, os.path.join(HERE, "scenarios.py"), str(api_port), gateway], check=True)
            finally:
                node.terminate()
                node.wait()
        with tempfile.TemporaryDirectory() as data_dir:
            node, api_port, gateway = start_node(data_dir, "127.0.0.1:0", token="py-token")
            try:
                subprocess.run([python, os.path.join(HERE, "scenarios.py"), str(api_port), gateway, "py-token"],
                               check=True)
            finally:
                node.terminate()
                node.wait()
    print("consul clients: all passed")


if __name__ == "__main__":
    main()
