#!/usr/bin/env python3
"""The Kubernetes Python client from PyPI, and kubectl, against a real shoal node over TLS:
`python3 tests/kubernetes/run.py`.

It installs the pinned client (kubernetes 37.0.2) in a virtual environment under
`target/kube-venvs` (kept between runs), starts the shoal binary with a token and a
self-signed certificate (`--tls-self-signed`), writes the kubeconfig `shoal kubeconfig`
prints, and with it runs the document's snippet (`seed_pod.py`, with the changes the client
forces) and `scenarios.py`; then kubectl with the same kubeconfig (the token travels only over
TLS) and without the token (refused). Run by `scripts/test` after the end-to-end suite, which
builds the guests it uploads.
"""

import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402  (tests/harness.py)
ROOT = os.path.dirname(os.path.dirname(HERE))
SHOAL = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target", "debug", "shoal"))
CLIENT = "kubernetes==37.0.2"
TOKEN = "k8s-test-token"


def environment():
    """A virtual environment with the client installed, created once and reused."""
    return harness.environment("kube-venvs", "kubernetes", CLIENT)


def kubectl():
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/lib/google-cloud-sdk/bin"]:
        candidate = os.path.join(directory, "kubectl.1.32")
        if os.path.exists(candidate):
            return candidate
    sys.exit("kubectl.1.32 is missing: these tests drive the real kubectl (the `kubectl` package)")


def start_node(data_dir):
    env = dict(os.environ)
    env.pop("SHOAL_TOKEN", None)
    args = [SHOAL, "up", "--data-dir", data_dir, "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0",
            "--token", TOKEN, "--tls-self-signed"]
    log = tempfile.TemporaryFile("w+")
    node = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line = node.stdout.readline()
    match = re.search(r"api (\S+) gateway (\S+)", line)
    if not match or not match.group(1).startswith("https://"):
        node.kill()
        node.wait()
        log.seek(0)
        sys.exit(f"shoal did not start with TLS: {line!r}\n{log.read()[-4000:]}")
    return node, match.group(1), match.group(2)


def upload(api, cert, path, name):
    context = ssl.create_default_context(cafile=cert)
    with open(path, "rb") as f:
        request = urllib.request.Request(f"{api}/v1/modules?name={name}", data=f.read(), method="POST",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, context=context, timeout=120) as response:
        return json.load(response)["digest"]


def main():
    if not os.path.exists(SHOAL):
        sys.exit(f"{SHOAL} is missing: run `cargo build --bin shoal` first")
    python = environment()
    print(f"{CLIENT} and kubectl over TLS with a token:")
    with tempfile.TemporaryDirectory() as data_dir:
        node, api, gateway = start_node(data_dir)
        try:
            cert = os.path.join(data_dir, "tls", "cert.pem")
            upload(api, cert, harness.guest("hello_http"), "my-image")
            echo = upload(api, cert, harness.guest("echo_http"), "echo")
            kubeconfig = os.path.join(data_dir, "kubeconfig")
            printed = subprocess.run([SHOAL, "kubeconfig", "--api", api, "--token", TOKEN, "--data-dir", data_dir],
                                     check=True, capture_output=True, text=True).stdout
            with open(kubeconfig, "w") as f:
                f.write(printed)
            env = dict(os.environ, KUBECONFIG=kubeconfig)
            subprocess.run([python, os.path.join(HERE, "seed_pod.py")], check=True, env=env)
            print("  ok: the document's snippet")
            with tempfile.TemporaryDirectory() as home:
                shown = subprocess.run([kubectl(), "get", "pods"], capture_output=True, text=True,
                                       env=dict(env, HOME=home))
                if shown.returncode != 0 or "my-pod" not in shown.stdout:
                    sys.exit(f"FAILED: kubectl get pods over TLS: {shown.stdout}{shown.stderr}")
                wrong_token = os.path.join(data_dir, "kubeconfig-wrong-token")
                with open(wrong_token, "w") as f:
                    f.write(printed.replace(TOKEN, "not-the-token"))
                refused = subprocess.run([kubectl(), "get", "pods"], capture_output=True, text=True,
                                         stdin=subprocess.DEVNULL, env=dict(env, HOME=home, KUBECONFIG=wrong_token))
                if refused.returncode == 0 or "must be logged in" not in refused.stderr:
                    sys.exit(f"FAILED: kubectl with a wrong token: {refused.stdout}{refused.stderr}")
            print("  ok: kubectl with the kubeconfig over TLS; refused with a wrong token")
            subprocess.run([python, os.path.join(HERE, "scenarios.py"), gateway, echo, harness.guest("hello_http")],
                           check=True, env=env)
        finally:
            node.terminate()
            node.wait()
    print("kubernetes client: all passed")


if __name__ == "__main__":
    main()
