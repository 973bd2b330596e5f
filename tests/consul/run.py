#!/usr/bin/env python3
"""The Consul clients from PyPI against a real shoal node: `python3 tests/consul/run.py`.

For each pinned client (py-consul 1.8.0 and python-consul 1.1.0, which both install the
module `consul`, so each gets its own virtual environment under `target/consul-venvs`, kept
between runs), it starts `target/debug/shoal` on a fresh data directory with the API on
127.0.0.1:8500, where the seed's code expects it, runs the seed's registration unchanged
(`seed_register.py`), then `scenarios.py`; then it starts a node requiring a token and runs
the token scenario. Then, with py-consul, three nodes sharing a three-member etcd cluster
(Debian's `etcd-server`, on free loopback ports, killed at the end): `cluster_scenarios.py`.
Run by `scripts/test` after `cargo build --bin shoal`.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402  (tests/harness.py)
ROOT = os.path.dirname(os.path.dirname(HERE))
SHOAL = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target", "debug", "shoal"))
CLIENTS = {"py-consul": "py-consul==1.8.0", "python-consul": "python-consul==1.1.0"}
SEED_PORT = 8500


def environment(name, requirement):
    """A virtual environment with one client installed, created once and reused."""
    return harness.environment("consul-venvs", name, requirement)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(directory):
    """Three etcd members on free loopback ports; returns the processes and the endpoints."""
    ports = [(free_port(), free_port()) for _ in range(3)]
    cluster = ",".join(f"e{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    members = []
    for i, (client, peer) in enumerate(ports):
        members.append(subprocess.Popen(
            ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(directory, f"e{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", cluster, "--pre-vote"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    endpoints = [f"127.0.0.1:{client}" for client, _ in ports]
    deadline = time.monotonic() + 30
    for endpoint in endpoints:
        while True:
            try:
                with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1) as response:
                    if b'"true"' in response.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"etcd at {endpoint} did not become healthy")
            # Polled: etcd says nothing when it is ready.
            time.sleep(0.1)
    return members, ",".join(endpoints)


def cluster(python):
    """Three nodes on one etcd, and the cluster scenarios."""
    with tempfile.TemporaryDirectory() as directory:
        members, endpoints = start_etcd(directory)
        nodes = []
        try:
            for i in (1, 2, 3):
                nodes.append(start_node(os.path.join(directory, f"n{i}"), "127.0.0.1:0",
                                        extra=["--etcd", endpoints, "--node-name", f"n{i}", "--node-ttl", "2s"]))
            (_, api1, _), (node2, api2, _), (_, api3, gateway3) = nodes
            subprocess.run([python, os.path.join(HERE, "cluster_scenarios.py"), str(api1), str(api2), str(api3),
                            gateway3, str(node2.pid)], check=True)
        finally:
            for node, _, _ in nodes:
                node.kill()
                node.wait()
            for member in members:
                member.kill()
                member.wait()


def start_node(data_dir, api, token=None, extra=()):
    """`shoal up` on loopback; returns the process, its API port and its gateway URL."""
    env = dict(os.environ)
    env.pop("SHOAL_TOKEN", None)
    args = [SHOAL, "up", "--data-dir", data_dir, "--api-listen", api, "--gateway-listen", "127.0.0.1:0",
            "--fuel-per-cpu-second", "1000000000"]
    if token:
        args += ["--token", token]
    args += list(extra)
    # Its log goes to a file, shown if it fails to start.
    log = tempfile.TemporaryFile("w+")
    node = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line = node.stdout.readline()
    match = re.search(r"api (\S+) gateway (\S+)", line)
    if not match:
        node.kill()
        node.wait()
        log.seek(0)
        sys.exit(f"shoal did not start on {api}: {line!r}\n{log.read()[-4000:]}")
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
    print("py-consul==1.8.0 on a cluster of three nodes:")
    cluster(environment("py-consul", CLIENTS["py-consul"]))
    print("consul clients: all passed")


if __name__ == "__main__":
    main()
