#!/usr/bin/env python3
"""shoal's benchmarks, side by side in one run: `python3 tests/bench/run.py`.

Builds shoal and the hello guest in release mode, starts a node on loopback, and
measures, interleaving scenarios (A B A B ...) so drift on a shared machine hits all
of them alike:
- requests per second and latency of the hello wasi:http component through the
  gateway, with limits on, in `per-request` and `reuse` isolation (wrk, 32
  connections);
- the time from the first request to a service scaled to zero until its response
  (median of 20).
Prints a markdown table to paste into BENCHMARKS.md. Talks to 127.0.0.1 only.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONNECTIONS = 32
DURATION = os.environ.get("BENCH_DURATION", "5s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
COLD_STARTS = 20


def run(*args, **kwargs):
    return subprocess.run(args, check=True, cwd=ROOT, **kwargs)


def build():
    run("cargo", "build", "--release", "--locked", "--bin", "shoal")
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target", "bench-guests"))
    run("cargo", "build", "--release", "--locked", "--manifest-path", "guests/Cargo.toml",
        "--target", "wasm32-wasip2", "-p", "hello-http", env=env)
    return (os.path.join(ROOT, "target", "release", "shoal"),
            os.path.join(ROOT, "target", "bench-guests", "wasm32-wasip2", "release", "hello_http.wasm"))


def api(base, method, path, body=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(base + path, data=data, method=method)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def start_node(shoal, data_dir):
    node = subprocess.Popen(
        [shoal, "up", "--data-dir", data_dir, "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = node.stdout.readline()
    match = re.search(r"api (\S+) gateway (\S+)", line)
    if not match:
        node.kill()
        sys.exit(f"shoal did not start: {line!r}")
    return node, match.group(1), match.group(2)


def wrk(url):
    out = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def latency(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"{url}: {errors.group(1)} failed responses\n{out}")
    return rps, latency(50), latency(99)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) / 1024


def main():
    shoal, hello = build()
    with tempfile.TemporaryDirectory() as data_dir:
        node, api_url, gateway = start_node(shoal, data_dir)
        try:
            with open(hello, "rb") as f:
                digest = api(api_url, "POST", "/v1/modules", f.read())["digest"]
            limits = {"memory": "64Mi", "fuel": 100_000_000, "timeout": "10s"}
            scale = {"min": CONNECTIONS, "max": CONNECTIONS, "queue_limit": 1000}
            for name, isolation in [("per-request", "per-request"), ("reuse", "reuse")]:
                api(api_url, "PUT", f"/v1/services/{name}",
                    {"module": digest, "limits": limits, "isolation": isolation, "scale": scale})
            cold_scale = {"min": 0, "max": 1, "idle_timeout": "50ms", "stable_window": "100ms",
                          "panic_window": "50ms", "scale_down_delay": "50ms"}
            api(api_url, "PUT", "/v1/services/cold", {"module": digest, "limits": limits, "scale": cold_scale})

            results = {"per-request": [], "reuse": []}
            for _ in range(ROUNDS):
                for name in results:
                    results[name].append(wrk(f"{gateway}/{name}/"))
            rss = rss_mib(node.pid)

            cold = []
            for _ in range(COLD_STARTS):
                while api(api_url, "GET", "/v1/services/cold/status")["replicas"]["current"] != 0:
                    time.sleep(0.01)
                started = time.perf_counter()
                with urllib.request.urlopen(f"{gateway}/cold/") as response:
                    response.read()
                    assert response.headers["x-shoal-cold-start"] == "true"
                cold.append((time.perf_counter() - started) * 1000)
        finally:
            node.terminate()
            node.wait()

    cores = os.cpu_count()
    with open("/proc/meminfo") as meminfo:
        mem_gib = int(re.search(r"MemTotal:\s+(\d+)", meminfo.read()).group(1)) / 1024 / 1024
    print(f"Machine: {cores} cores, {mem_gib:.0f} GiB; wrk -c{CONNECTIONS} -d{DURATION}, {ROUNDS} interleaved rounds, medians.\n")
    print("| scenario | requests/s | p50 | p99 |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        rps = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        print(f"| hello, `{name}` | {rps:,.0f} | {p50:.2f} ms | {p99:.2f} ms |")
    ratio = statistics.median(r[0] for r in results["reuse"]) / statistics.median(r[0] for r in results["per-request"])
    print(f"\n`reuse` / `per-request` throughput: {ratio:.2f}x. Node RSS after the load: {rss:.0f} MiB.")
    print(f"\nCold start from zero replicas to response, median of {COLD_STARTS}: "
          f"{statistics.median(cold):.2f} ms (min {min(cold):.2f}, max {max(cold):.2f}).")


if __name__ == "__main__":
    main()
