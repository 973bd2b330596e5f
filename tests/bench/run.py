#!/usr/bin/env python3
"""shoal's benchmarks, side by side in one run: `python3 tests/bench/run.py`.

Builds shoal, a native axum server and the guests in release mode, obtains the peer
(`wasmtime serve` from the wasmtime-cli crate of the version shoal uses, installed with
cargo into target/bench-cache and reused from there), runs every scenario and prints a
markdown table (also written to target/bench/report.md). Everything talks to 127.0.0.1
only; every load is bounded in time.

Scenarios, each repeated and interleaved (A B A B ...) so drift on a shared machine hits
all alike, medians reported:
- throughput and latency of the same hello wasi:http component (wrk, 32 connections):
  native axum; wasmtime serve with defaults, tuned (pooling allocator, keep-resident,
  pagemap scan) and reusing instances; shoal per-request and reuse, with fuel, memory limit
  and timeout on, through the gateway by name;
- latency of the same servers at fixed rates below saturation (oha, 32 connections,
  corrected for coordinated omission), where it measures the server and not the queue;
- fuel's cost on a compute-bound guest;
- cold paths: upload to first response for the hello component and a large one, and the
  first response from a service scaled to zero;
- density: 1,000 services (one module, and 100 distinct modules): idle RSS, p99 over
  requests spread at random, and the time from restart to all 1,000 answering.

- contention: the hello service (4 keep-alive clients) alone, then beside 1x, 2x, 4x and 8x
  cores concurrent requests spinning the CPU in another service with the same weight:
  hello's p50, p99 and requests per second, per-request and reuse (and of the baseline build
  too, with BENCH_BASELINE). With BENCH_CLIENT_RT=1, hello's client (wrk) runs in the
  kernel's real-time class (`chrt -f 1`, as root): on a box whose cores the guests keep busy,
  the client itself otherwise waits for a core, and its p99 is partly the kernel's;
- the slice's cost: CPU per compute-bound request (20M rounds) with 1, cores and 4x cores
  of them at a time: alone a guest runs in 10 ms slices, with every core busy in 1 ms ones,
  and beyond that it hands its slot on at every slice (and the baseline build, if set);
- cluster: three nodes on a three-member etcd (Debian's etcd-server): a request forwarded one
  hop against one served where the replica is (p50, p99, CPU per request of every node
  involved), deploy to answerable on every node, 1,000 services with min 1 placed and
  answering, and failover after SIGKILL of the node running a service;
- before and after (with BENCH_BASELINE=<git revision>): CPU per request at fixed rates of
  shoal built from that revision and of this tree, side by side, per-request and reuse;
- footprint (edge devices): the `edge` profile's binaries, full and runtime-only, for x86-64
  and aarch64 (cross-compiled); idle RSS of a node with no services and with 10, and its data
  directory; hello's requests per second on the runtime-only build natively and on the aarch64
  one under qemu-user (emulation: a rough guide, not a performance figure).
- tiers: upload to first response with tiered compilation (Winch first) and with
  `--compile optimized` (Cranelift first), for hello, large-http and a 10+ MB JavaScript
  component built with componentize-js (tests/bench/js/build.sh), beside `wasmtime compile`
  of the same module with Cranelift, with Cranelift configured as shoal configures it (fuel and
  epochs) and with Winch as shoal's baseline tier; and requests per second on each tier
  (`--compile baseline` against optimized) for hello and a compute-bound guest.

Environment: BENCH_DURATION (wrk duration, default 5s), BENCH_ROUNDS (default 5),
BENCH_ONLY (comma-separated sections: throughput, latency, fuel, cold, density, contention,
slice, baseline, cluster, footprint, tiers),
BENCH_BASELINE (a git revision to compare with; the baseline section runs only when set),
BENCH_CLIENT_RT (contention: hello's client in the real-time class).
"""

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(ROOT, "target")
WASMTIME_VERSION = "48.0.8"
CONNECTIONS = 32
DURATION = os.environ.get("BENCH_DURATION", "5s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
RATES = [10_000, 20_000]
SPIN_LEVELS = [0, 1, 2, 4, 8]  # concurrent spinning requests, in multiples of the cores
HELLO_CLIENTS = 4
OHA_VERSION = "1.16.0"
N_DENSITY = 1000
N_MODULES = 100
HOP_RATE = 2_000
BASELINE = os.environ.get("BENCH_BASELINE")
CLIENT_RT = ["chrt", "-f", "1"] if os.environ.get("BENCH_CLIENT_RT") == "1" else []


# Servers run as in production: without RUST_BACKTRACE, which makes every error capture a
# backtrace (wasmtime creates some on its request path), whatever this shell has set.
SERVER_ENV = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}


def log(message):
    print(message, file=sys.stderr, flush=True)


def run(*args, **kwargs):
    return subprocess.run(args, check=True, cwd=ROOT, **kwargs)


# ---------------------------------------------------------------- building and the peer

def build(servers=True):
    if servers:
        run("cargo", "build", "--release", "--locked", "--bin", "shoal", "--bin", "native-hello")
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(TARGET, "bench-guests"))
    env.pop("CARGO_ENCODED_RUSTFLAGS", None)
    run("cargo", "build", "--release", "--locked", "--manifest-path", "guests/Cargo.toml",
        "--target", "wasm32-wasip2", "-p", "hello-http", "-p", "busy-http", "-p", "large-http", env=env)
    guests = os.path.join(TARGET, "bench-guests", "wasm32-wasip2", "release")
    return {
        "shoal": os.path.join(TARGET, "release", "shoal"),
        "native": os.path.join(TARGET, "release", "native-hello"),
        "hello": os.path.join(guests, "hello_http.wasm"),
        "busy": os.path.join(guests, "busy_http.wasm"),
        "large": os.path.join(guests, "large_http.wasm"),
    }


def build_baseline(revision):
    """shoal as of `revision`, built in release from a worktree under target/bench-baseline
    with its own target directory (so this tree's build is untouched)."""
    root = os.path.join(TARGET, "bench-baseline")
    tree = os.path.join(root, revision)
    if not os.path.exists(tree):
        run("git", "worktree", "add", "--detach", tree, revision)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(root, "target"))
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "shoal"], cwd=tree, check=True, env=env)
    return os.path.join(root, "target", "release", "shoal")


def cached_install(crate, version, binary, *flags):
    """A crates.io binary, installed once into target/bench-cache and reused from there."""
    suffix = "".join(f"-{flag.lstrip('-')}" for flag in flags)
    root = os.path.join(TARGET, "bench-cache", f"{crate}-{version}{suffix}")
    path = os.path.join(root, "bin", binary)
    if not os.path.exists(path):
        log(f"installing {crate} {version} into {root} (once)")
        run("cargo", "install", "--locked", crate, "--version", version, *flags, "--root", root)
    return path


def wasmtime():
    """`wasmtime` of shoal's wasmtime version, built with wasmtime's own `fastest-runtime`
    profile (fat LTO, one codegen unit): the optimisation shoal's release profile uses, so
    neither side wins on compiler settings."""
    return cached_install("wasmtime-cli", WASMTIME_VERSION, "wasmtime", "--profile", "fastest-runtime")


def oha():
    return cached_install("oha", OHA_VERSION, "oha")


# ---------------------------------------------------------------- servers

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, process, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{process.args[0]} exited with {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{url} did not answer within {limit}s")


class Shoal:
    """`shoal up` on loopback, with its API and gateway addresses."""

    def __init__(self, binary, data_dir, extra=(), prefix=(), env=None):
        self.binary, self.data_dir, self.extra = binary, data_dir, list(extra)
        self.prefix, self.env = list(prefix), dict(SERVER_ENV, **(env or {}))
        self.start()

    def start(self):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.prefix + [self.binary, "up", "--data-dir", self.data_dir, "--api-listen", "127.0.0.1:0",
             "--gateway-listen", "127.0.0.1:0"] + self.extra,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
        line = self.process.stdout.readline()
        match = re.search(r"api (\S+) gateway (\S+)", line)
        if not match:
            self.process.kill()
            sys.exit(f"shoal did not start: {line!r}")
        self.api, self.gateway = match.group(1), match.group(2)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        request = urllib.request.Request(self.api + path, data=data, method=method)
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) / 1024


# ---------------------------------------------------------------- measuring

def wrk(url, script=None):
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        sys.exit(f"{url}: failed requests\n{out}")
    return rps, latency(50), latency(99)


def cpu_seconds(pid):
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def oha_at_rate(oha_path, url, rate, pid):
    """At a fixed offered rate: requests per second achieved, p50 and p99 in ms (counted
    from when each request was due: coordinated omission corrected), and the server's CPU
    time per answered request in microseconds, the figure noise on a shared machine moves
    least."""
    cpu_before = cpu_seconds(pid)
    out = subprocess.run([oha_path, "-z", DURATION, "-c", str(CONNECTIONS), "-q", str(rate),
                          "--latency-correction", "--no-tui", "--output-format", "json", url],
                         check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    codes = report["statusCodeDistribution"]
    if set(codes) != {"200"}:
        sys.exit(f"{url}: failed requests: {codes}")
    cpu_per_request = (cpu_seconds(pid) - cpu_before) / codes["200"] * 1e6
    percentiles = report["latencyPercentiles"]
    return (report["summary"]["requestsPerSec"], percentiles["p50"] * 1000, percentiles["p99"] * 1000,
            cpu_per_request)


def timed_get(url):
    started = time.perf_counter()
    with urllib.request.urlopen(url) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def with_custom_section(wasm, tag):
    """The same component under a new digest: a custom section appended at the end."""
    def leb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    name = b"shoal-bench"
    payload = leb(len(name)) + name + tag.encode()
    return wasm + b"\x00" + leb(len(payload)) + payload


def med(values):
    return statistics.median(values)


# ---------------------------------------------------------------- scenarios

def hello_servers(paths, shoal, peer):
    """Every contender serving the hello component, started and answering: (name, process,
    url) each. The caller kills the processes that are not shoal's."""
    hello = paths["hello"]
    servers = []
    try:
        port = free_port()
        native = subprocess.Popen([paths["native"], f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, env=SERVER_ENV)
        servers.append(("native axum", native, f"http://127.0.0.1:{port}/"))
        tuned = ["-O", "pooling-allocator=y", "-O", "pooling-memory-keep-resident=10485760",
                 "-O", "pooling-table-keep-resident=1048576", "-O", "pooling-async-stack-keep-resident=1048576",
                 "-O", "pooling-pagemap-scan=y"]
        for name, flags in [
            ("wasmtime serve, defaults", []),
            ("wasmtime serve, tuned", tuned),
            ("wasmtime serve, reusing instances", tuned + ["--max-instance-reuse-count", "1000000"]),
        ]:
            port = free_port()
            process = subprocess.Popen([peer, "serve", "-Scli", "--addr", f"127.0.0.1:{port}", *flags, hello],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SERVER_ENV)
            servers.append((name, process, f"http://127.0.0.1:{port}/"))
        servers += shoal_services(paths, shoal, "shoal")
        for _, process, url in servers:
            wait_http(url, process)
        return servers
    except BaseException:
        stop_peers(servers, shoal)
        raise


def shoal_services(paths, shoal, label):
    """The hello component as a per-request and a reuse service on `shoal`: (name, process,
    url) each, named with `label`."""
    with open(paths["hello"], "rb") as f:
        digest = shoal.call("POST", "/v1/modules", f.read())["digest"]
    limits = {"memory": "64Mi", "fuel": 100_000_000, "timeout": "10s"}
    scale = {"min": CONNECTIONS, "max": CONNECTIONS, "queue_limit": 1000}
    servers = []
    for isolation in ["per-request", "reuse"]:
        shoal.call("PUT", f"/v1/services/{isolation}",
                   {"module": digest, "limits": limits, "isolation": isolation, "scale": scale})
        servers.append((f"{label}, {isolation}", shoal.process, f"{shoal.gateway}/{isolation}/"))
    for _, process, url in servers:
        wait_http(url, process)
    return servers


def contention_services(paths, shoal):
    """On `shoal`: the hello component per-request and reuse, and the busy guest spinning
    until its 1 s timeout or 2e9 fuel, each with one replica taking every request it is sent,
    so the three weigh the same in the CPU scheduler."""
    digests = {}
    for guest in ["hello", "busy"]:
        with open(paths[guest], "rb") as f:
            digests[guest] = shoal.call("POST", "/v1/modules", f.read())["digest"]
    one_replica = {"min": 1, "max": 1, "queue_limit": 1000}
    for isolation in ["per-request", "reuse"]:
        shoal.call("PUT", f"/v1/services/{isolation}",
                   {"module": digests["hello"], "isolation": isolation, "concurrency": 64,
                    "limits": {"memory": "64Mi", "fuel": 100_000_000, "timeout": "10s"}, "scale": one_replica})
    shoal.call("PUT", "/v1/services/spin",
               {"module": digests["busy"], "concurrency": 1000,
                "limits": {"fuel": 2_000_000_000, "timeout": "1s"}, "scale": one_replica})
    for service in ["per-request", "reuse"]:
        wait_http(f"{shoal.gateway}/{service}/", shoal.process)


def hello_beside_spinning(shoal, isolation, spinning):
    """hello's requests/s, p50 and p99 (wrk, HELLO_CLIENTS connections) while `spinning`
    requests spin in the other service; waits until those have ended before returning."""
    spinner = None
    if spinning:
        duration_s = int(DURATION.rstrip("s")) + 3
        spinner = subprocess.Popen(["wrk", "-t1", f"-c{spinning}", f"-d{duration_s}s", "--timeout", "5s",
                                    f"{shoal.gateway}/spin/"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Running: every spinning request is in flight. A build without the scheduler may not
        # even accept them all while the first ones spin: then measure beside those that did.
        deadline = time.monotonic() + 10
        while shoal.call("GET", "/v1/services/spin/status")["in_flight"] < spinning:
            if time.monotonic() > deadline:
                log(f"    only some of {spinning} spinning requests started within 10 s")
                break
            time.sleep(0.05)
    out = subprocess.run([*CLIENT_RT, "wrk", "-t2", f"-c{HELLO_CLIENTS}", f"-d{DURATION}", "--latency",
                          f"{shoal.gateway}/{isolation}/"], check=True, capture_output=True, text=True).stdout
    if spinner:
        spinner.kill()
        spinner.wait()
        while shoal.call("GET", "/v1/services/spin/status")["in_flight"] > 0:
            time.sleep(0.05)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        sys.exit(f"hello beside {spinning} spinning requests: failed requests\n{out}")

    def latency(p):
        # A starved server may answer too few requests for wrk to report percentiles.
        match = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not match:
            return float("nan")
        value, unit = match.groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, latency(50), latency(99)


def contention(shoals):
    """For each (label, shoal) and isolation: per spinning level, hello's median figures over
    the rounds, the levels and builds interleaved."""
    cores = os.cpu_count()
    results = {}
    for round_idx in range(ROUNDS):
        order = shoals if round_idx % 2 == 0 else shoals[::-1]
        for label, shoal in order:
            for isolation in ["per-request", "reuse"]:
                for level in SPIN_LEVELS:
                    log(f"  round {round_idx + 1}/{ROUNDS}: {label}, {isolation}, {level}x cores spinning")
                    results.setdefault((label, isolation, level), []).append(
                        hello_beside_spinning(shoal, isolation, level * cores))
    return {key: tuple(med(run[i] for run in runs) for i in range(3)) for key, runs in results.items()}


def slice_cost(shoals, paths):
    """The server's CPU time per compute-bound request, in ms, at each concurrency, per build:
    the same work, so what grows with the concurrency is the cost of slicing it."""
    cores = os.cpu_count()
    levels = [1, cores, 4 * cores]
    for _, shoal in shoals:
        with open(paths["busy"], "rb") as f:
            digest = shoal.call("POST", "/v1/modules", f.read())["digest"]
        shoal.call("PUT", "/v1/services/work",
                   {"module": digest, "concurrency": 1000, "scale": {"min": 1, "max": 1, "queue_limit": 1000},
                    "limits": {"fuel": 1_000_000_000_000, "timeout": "30s"}})
        wait_http(f"{shoal.gateway}/work/?iterations=1", shoal.process)
    results = {}
    url_path = "/work/?iterations=20000000"
    for round_idx in range(ROUNDS):
        order = shoals if round_idx % 2 == 0 else shoals[::-1]
        for label, shoal in order:
            for level in levels:
                log(f"  round {round_idx + 1}/{ROUNDS}: {label}, {level} at a time")
                n_requests = 10 * level
                before = cpu_seconds(shoal.process.pid)
                with concurrent.futures.ThreadPoolExecutor(level) as pool:
                    list(pool.map(lambda _: timed_get(shoal.gateway + url_path), range(n_requests)))
                results.setdefault((label, level), []).append(
                    (cpu_seconds(shoal.process.pid) - before) / n_requests * 1000)
    lines = ["| CPU per 20M-round request | " + " | ".join(f"{level} at a time" for level in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for label, _ in shoals:
        lines.append(f"| {label} | " + " | ".join(f"{med(results[(label, level)]):.1f} ms" for level in levels) + " |")
    lines.append("")
    for label, _ in shoals:
        alone = med(results[(label, 1)])
        lines.append(f"- {label}: " + ", ".join(
            f"{level} at a time {med(results[(label, level)]) / alone:.3f}x" for level in levels[1:]) + " of one at a time")
    return lines + [""]


def contention_report(figures, labels):
    cores = os.cpu_count()
    lines = ["| hello beside spinning requests | " + " | ".join(
        "alone" if level == 0 else f"{level}x cores ({level * cores})" for level in SPIN_LEVELS) + " |",
             "|---|" + "---|" * len(SPIN_LEVELS)]
    for label in labels:
        for isolation in ["per-request", "reuse"]:
            cells = [figures[(label, isolation, level)] for level in SPIN_LEVELS]
            lines.append(f"| {label}, {isolation}: p50 / p99, req/s | " + " | ".join(
                f"{p50:.2f} / {p99:.2f} ms, {rps:,.0f}" for rps, p50, p99 in cells) + " |")
    lines.append("")
    for label in labels:
        for isolation in ["per-request", "reuse"]:
            alone = figures[(label, isolation, 0)]
            worst_p99 = max(figures[(label, isolation, level)][2] / alone[2] for level in SPIN_LEVELS[1:])
            worst_rps = min(figures[(label, isolation, level)][0] / alone[0] for level in SPIN_LEVELS[1:])
            lines.append(f"- {label}, {isolation}: worst p99 {worst_p99:.2f}x alone (goal under 2x), "
                         f"worst throughput {worst_rps:.0%} of alone (goal at least 45%)")
    return lines + [""]


def stop_peers(servers, shoal):
    for _, process, _ in servers:
        if process is not shoal.process:
            process.kill()
            process.wait()


def throughput(servers):
    """Saturated: wrk as fast as the server answers."""
    results = {name: [] for name, _, _ in servers}
    for round_idx in range(ROUNDS):
        for name, _, url in servers:
            log(f"  round {round_idx + 1}/{ROUNDS}: {name}")
            results[name].append(wrk(url))
    rows = []
    for name, process, _ in servers:
        runs = results[name]
        rows.append((name, med(r[0] for r in runs), med(r[1] for r in runs), med(r[2] for r in runs),
                     rss_mib(process.pid)))
    return rows


def latency_at_rates(servers, oha_path):
    """p50, p99 and CPU per request at each of RATES, or None where the server did not keep
    up (answered under 97% of the offered rate): there the figures would measure its queue."""
    results = {(name, rate): [] for name, _, _ in servers for rate in RATES}
    for round_idx in range(ROUNDS):
        for rate in RATES:
            # Every other round in the reverse order, so no server always follows the same one.
            order = servers if round_idx % 2 == 0 else servers[::-1]
            for name, process, url in order:
                log(f"  round {round_idx + 1}/{ROUNDS}: {name} at {rate} req/s")
                results[(name, rate)].append(oha_at_rate(oha_path, url, rate, process.pid))
    rows = []
    for name, _, _ in servers:
        cells = []
        for rate in RATES:
            runs = results[(name, rate)]
            kept_up = med(r[0] for r in runs) >= 0.97 * rate
            cells.append((med(r[1] for r in runs), med(r[2] for r in runs), med(r[3] for r in runs))
                         if kept_up else None)
        rows.append((name, cells))
    return rows


def fuel_cost(paths, shoal, peer):
    """A compute-bound request with fuel on and off: the instrumentation's price."""
    iterations = 20_000_000
    path = f"/?iterations={iterations}"
    servers = []
    try:
        for name, flags in [("wasmtime serve, fuel off", []),
                            ("wasmtime serve, fuel on", ["-W", "fuel=1000000000000"]),
                            ("wasmtime serve, fuel and epoch interruption on",
                             ["-W", "fuel=1000000000000", "-W", "timeout=30s"])]:
            port = free_port()
            process = subprocess.Popen([peer, "serve", "-Scli", "--addr", f"127.0.0.1:{port}", *flags, paths["busy"]],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SERVER_ENV)
            servers.append((name, process, f"http://127.0.0.1:{port}{path}"))
        with open(paths["busy"], "rb") as f:
            digest = shoal.call("POST", "/v1/modules", f.read())["digest"]
        shoal.call("PUT", "/v1/services/busy",
                   {"module": digest, "limits": {"fuel": 1_000_000_000_000, "timeout": "30s"}})
        servers.append(("shoal (fuel and epoch interruption always on)", shoal.process, f"{shoal.gateway}/busy{path}"))
        for _, process, url in servers:
            wait_http(url, process)
        times = {name: [] for name, _, _ in servers}
        for _ in range(30):
            for name, _, url in servers:
                times[name].append(timed_get(url))
        return [(name, med(values)) for name, values in times.items()]
    finally:
        for _, process, _ in servers:
            if process is not shoal.process:
                process.kill()
                process.wait()


def cold_paths(paths, shoal):
    rows = []
    for guest, n in [("hello", 20), ("large", 5)]:
        with open(paths[guest], "rb") as f:
            wasm = f.read()
        times = []
        for i in range(n):
            unique = with_custom_section(wasm, f"{guest}-{time.time_ns()}-{i}")
            name = f"cold-{guest}-{i}"
            started = time.perf_counter()
            shoal.call("POST", f"/v1/deploy/{name}", unique)
            with urllib.request.urlopen(f"{shoal.gateway}/{name}/") as response:
                response.read()
            times.append((time.perf_counter() - started) * 1000)
            shoal.call("DELETE", f"/v1/services/{name}")
        rows.append((f"upload to first response, {guest} ({len(wasm) / 1e6:.1f} MB), median of {n}", med(times)))

    with open(paths["hello"], "rb") as f:
        digest = shoal.call("POST", "/v1/modules", f.read())["digest"]
    scale = {"min": 0, "max": 1, "idle_timeout": "50ms", "stable_window": "100ms",
             "panic_window": "50ms", "scale_down_delay": "50ms"}
    shoal.call("PUT", "/v1/services/zero", {"module": digest, "scale": scale})
    times = []
    for _ in range(20):
        while shoal.call("GET", "/v1/services/zero/status")["replicas"]["current"] != 0:
            time.sleep(0.01)
        started = time.perf_counter()
        with urllib.request.urlopen(f"{shoal.gateway}/zero/") as response:
            response.read()
            assert response.headers["x-shoal-cold-start"] == "true"
        times.append((time.perf_counter() - started) * 1000)
    rows.append(("first response from zero replicas, median of 20", med(times)))
    return rows


def upload_to_first_response(shoal, wasm, tag):
    name = f"tier-{tag}"
    started = time.perf_counter()
    shoal.call("POST", f"/v1/deploy/{name}", with_custom_section(wasm, f"{tag}-{time.time_ns()}"))
    with urllib.request.urlopen(f"{shoal.gateway}/{name}/") as response:
        response.read()
    elapsed = (time.perf_counter() - started) * 1000
    shoal.call("DELETE", f"/v1/services/{name}")
    return elapsed


def tiers(paths, peer):
    """Upload to first response per compile mode beside `wasmtime compile`, then req/s per tier."""
    js = os.path.join(TARGET, "bench", "js_http.wasm")
    run("bash", "tests/bench/js/build.sh", js)
    guests = [("hello", paths["hello"], 10), ("large-http", paths["large"], 3), ("JavaScript (componentize-js)", js, 3)]
    # The peer as it comes, and as shoal configures its engines: fuel and epochs instrument
    # every loop and call, and the baseline engine compiles its trampolines at opt-level 0.
    as_shoal = ["-W", "fuel=1", "-W", "epoch-interruption=y"]
    peers = [("cranelift", []), ("cranelift-as-shoal", as_shoal),
             ("winch-as-shoal", ["-C", "compiler=winch", "-O", "opt-level=0", *as_shoal])]
    lines = ["| module | wasmtime compile, Cranelift | the same with fuel and epochs (as shoal) "
             "| wasmtime compile, Winch (as shoal's baseline tier) | shoal, optimized: upload to first response "
             "| shoal, tiered: upload to first response | tiered / Cranelift | tiered / Cranelift as shoal |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as dirs:
        nodes = {mode: Shoal(paths["shoal"], os.path.join(dirs, mode), ["--compile", mode])
                 for mode in ["optimized", "tiered"]}
        try:
            for label, path, n in guests:
                with open(path, "rb") as f:
                    wasm = f.read()
                times = {key: [] for key in [key for key, _ in peers] + list(nodes)}
                out = os.path.join(dirs, "out.cwasm")
                for i in range(n):  # interleaved rounds
                    for key, flags in peers:
                        started = time.perf_counter()
                        run(peer, "compile", *flags, "-o", out, path)
                        times[key].append((time.perf_counter() - started) * 1000)
                    for mode, node in nodes.items():
                        times[mode].append(upload_to_first_response(node, wasm, f"{mode}-{i}"))
                        # The background compile runs alone, not under the next measurement.
                        wait_for("the background compile", lambda: node.call("GET", "/v1/node")["compile"]["optimizing"] == 0, 300)
                m = {key: med(values) for key, values in times.items()}
                lines.append(f"| {label} ({len(wasm) / 1e6:.1f} MB), median of {n} | {m['cranelift']:,.0f} ms "
                             f"| {m['cranelift-as-shoal']:,.0f} ms | {m['winch-as-shoal']:,.0f} ms "
                             f"| {m['optimized']:,.0f} ms | {m['tiered']:,.0f} ms "
                             f"| {m['tiered'] / m['cranelift']:.2f}x | {m['tiered'] / m['cranelift-as-shoal']:.2f}x |")
        finally:
            for node in nodes.values():
                node.stop()
    lines.append("")

    lines += ["| guest, wrk -t2 -c32 | baseline tier (Winch) | optimized tier (Cranelift) | baseline / optimized |",
              "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as dirs:
        nodes = {mode: Shoal(paths["shoal"], os.path.join(dirs, mode), ["--compile", mode])
                 for mode in ["baseline", "optimized"]}
        try:
            for node in nodes.values():
                for guest in ["hello", "busy"]:
                    with open(paths[guest], "rb") as f:
                        node.call("POST", f"/v1/deploy/{guest}", f.read())
                assert node.call("GET", "/v1/services/hello")["tier"] == ("baseline" if node is nodes["baseline"] else "optimized")
            for label, path in [("hello", "/hello/"), ("busy, 100,000 iterations a request", "/busy/?iterations=100000")]:
                rps = {mode: [] for mode in nodes}
                for _ in range(ROUNDS):
                    for mode, node in nodes.items():
                        rps[mode].append(wrk(node.gateway + path)[0])
                b, o = med(rps["baseline"]), med(rps["optimized"])
                lines.append(f"| {label} | {b:,.0f} req/s | {o:,.0f} req/s | {b / o:.2f}x |")
        finally:
            for node in nodes.values():
                node.stop()
    return lines + [""]


def density(paths, distinct_modules):
    """1,000 services on a fresh node: idle RSS, p99 spread at random, restart time."""
    with open(paths["hello"], "rb") as f:
        hello = f.read()
    with tempfile.TemporaryDirectory() as data_dir:
        node = Shoal(paths["shoal"], data_dir)
        try:
            digests = []
            for i in range(distinct_modules):
                module = hello if distinct_modules == 1 else with_custom_section(hello, f"module-{i}")
                digests.append(node.call("POST", "/v1/modules", module)["digest"])
            for i in range(N_DENSITY):
                node.call("PUT", f"/v1/services/s{i}", {
                    "module": digests[i % len(digests)],
                    "limits": {"memory": "16Mi"},
                    "scale": {"min": 0, "max": 4},
                })
            time.sleep(1)  # let the allocator and the autoscaler settle before reading RSS
            idle_rss = rss_mib(node.process.pid)
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
                script.write(f"math.randomseed(7)\nrequest = function()\n"
                             f"  return wrk.format('GET', '/s' .. math.random(0, {N_DENSITY - 1}) .. '/')\nend\n")
            try:
                _, _, p99 = wrk(node.gateway + "/", script.name)
            finally:
                os.unlink(script.name)
            loaded_rss = rss_mib(node.process.pid)
            node.stop()
            node.start()
            answered = answer_all(node.gateway)
            restart = answered - node.started
            compiled = node.call("GET", "/v1/node")["compile"]["compiled"]
        finally:
            node.stop()
    return idle_rss, loaded_rss, p99, restart, compiled


def answer_all(gateway):
    """Calls every service once, 32 at a time; returns when all have answered 200."""
    host, port = gateway.removeprefix("http://").rsplit(":", 1)
    pending = list(range(N_DENSITY))
    connections = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(CONNECTIONS)]
    while pending:
        batch, pending = pending[:CONNECTIONS], pending[CONNECTIONS:]
        for connection, i in zip(connections, batch):
            connection.request("GET", f"/s{i}/")
        for connection, i in zip(connections, batch):
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                pending.append(i)
    return time.monotonic()


# ---------------------------------------------------------------- a cluster

def start_etcd(directory):
    """Three etcd members (Debian's etcd-server) on free loopback ports: (processes, endpoints)."""
    ports = [(free_port(), free_port()) for _ in range(3)]
    initial = ",".join(f"e{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    members = [subprocess.Popen(
        ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(directory, f"e{i}"),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", initial, "--pre-vote"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, (client, peer) in enumerate(ports)]
    endpoints = [f"127.0.0.1:{client}" for client, _ in ports]
    for endpoint, member in zip(endpoints, members):
        wait_http(f"http://{endpoint}/health", member)
    return members, ",".join(endpoints)


def cpu_of(pids):
    return sum(cpu_seconds(pid) for pid in pids)


def oha_cpu(oha_path, url, rate, pids):
    """oha at a fixed rate (8 connections): p50 and p99 in ms, and the CPU time of `pids`
    per request in microseconds."""
    before = cpu_of(pids)
    out = subprocess.run([oha_path, "-z", DURATION, "-c", "8", "-q", str(rate), "--latency-correction",
                          "--no-tui", "--output-format", "json", url], check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    codes = report["statusCodeDistribution"]
    if set(codes) != {"200"}:
        sys.exit(f"{url}: failed requests: {codes}")
    percentiles = report["latencyPercentiles"]
    return percentiles["p50"] * 1000, percentiles["p99"] * 1000, (cpu_of(pids) - before) / codes["200"] * 1e6


def placed_on(node, service):
    """The names of the nodes `node` sees running `service`."""
    return [n["name"] for n in node.call("GET", "/v1/nodes") if n["services"].get(service)]


def wait_for(what, condition, limit=60):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"never: {what}")
        time.sleep(0.02)


def get_status(url, timeout=30):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def cluster_bench(paths, load):
    """Three nodes on a three-member etcd, with default settings: one hop against a local
    request, deploy to answerable on every node, placement of 1,000 services, and failover
    after SIGKILL of the node running a service."""
    lines = []
    with open(paths["hello"], "rb") as f:
        hello = f.read()
    with tempfile.TemporaryDirectory() as directory:
        members, endpoints = start_etcd(directory)
        nodes = []
        try:
            for i in (1, 2, 3):
                nodes.append(Shoal(paths["shoal"], os.path.join(directory, f"n{i}"),
                                   ["--etcd", endpoints, "--node-name", f"n{i}"]))
            by_name = {f"n{i}": node for i, node in zip((1, 2, 3), nodes)}
            wait_for("three live nodes", lambda: sum(n["alive"] for n in nodes[0].call("GET", "/v1/nodes")) == 3)
            digest = nodes[0].call("POST", "/v1/modules", hello)["digest"]

            def spec(min_replicas, cpu="100m", memory="16Mi", **more):
                return {"module": digest, "scale": {"min": min_replicas, "max": max(min_replicas, 1)},
                        "resources": {"requests": {"cpu": cpu, "memory": memory}}, **more}

            # One hop: the same service called on the node running its replica and on another.
            log("cluster: one hop")
            nodes[0].call("PUT", "/v1/services/hop", spec(1, concurrency=64))
            wait_for("hop placed", lambda: placed_on(nodes[0], "hop"))
            holder = by_name[placed_on(nodes[0], "hop")[0]]
            other = next(node for node in nodes if node is not holder)
            for node in (holder, other):
                wait_for("hop answering", lambda node=node: get_status(f"{node.gateway}/hop/") == 200)
            local, hop = [], []
            for _ in range(ROUNDS):
                local.append(oha_cpu(load, f"{holder.gateway}/hop/", HOP_RATE, [holder.process.pid]))
                hop.append(oha_cpu(load, f"{other.gateway}/hop/", HOP_RATE,
                                   [holder.process.pid, other.process.pid]))
            column = lambda rows, i: med([row[i] for row in rows])
            lines += [f"| hello at {HOP_RATE} req/s, 8 connections | p50 | p99 | CPU per request (every node involved) |",
                      "|---|---|---|---|",
                      f"| on the node running the replica | {column(local, 0):.3f} ms | {column(local, 1):.3f} ms | {column(local, 2):.0f} µs |",
                      f"| on another node: one hop | {column(hop, 0):.3f} ms | {column(hop, 1):.3f} ms | {column(hop, 2):.0f} µs |",
                      "", f"- one hop adds {column(hop, 0) - column(local, 0):.3f} ms at p50 (goal: under 0.3 ms) and "
                          f"{column(hop, 2) - column(local, 2):.0f} µs of CPU per request", ""]

            # Deploy to answerable on every node.
            log("cluster: deploy to answerable")
            times = []
            for i in range(max(ROUNDS, 5)):
                started = time.monotonic()
                nodes[i % 3].call("PUT", f"/v1/services/dta{i}", spec(1))
                for node in nodes:
                    wait_for(f"dta{i} on {node.gateway}", lambda node=node: get_status(f"{node.gateway}/dta{i}/") == 200)
                times.append((time.monotonic() - started) * 1000)

            # Placement of 1,000 services with min 1, written through every node, 16 at a time.
            log("cluster: placing 1,000 services")
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: nodes[i % 3].call("PUT", f"/v1/services/s{i}", spec(1, cpu="1m", memory="1Mi")),
                              range(N_DENSITY)))
            written = time.monotonic() - started
            answered = answer_all(nodes[0].gateway) - started
            per_node = {n["name"]: n["replicas"] for n in nodes[0].call("GET", "/v1/nodes")}
            lines += ["| cluster operation (3 nodes, 3 etcd members) | figure |", "|---|---|",
                      f"| deploy on one node to answering on all three, median of {len(times)} | {med(times):.0f} ms |",
                      f"| 1,000 services with min 1, 16 deploys at a time: all written | {written:.1f} s ({N_DENSITY / written:.0f}/s) |",
                      f"| ... and all answering | {answered:.1f} s ({N_DENSITY / answered:.0f}/s); replicas per node {per_node} |", ""]

            # Failover: SIGKILL the node running a service; time until a request through a
            # survivor, sent right after the kill, is answered.
            log("cluster: failover")
            nodes[0].call("PUT", "/v1/services/fo", spec(1))
            failovers = []
            for _ in range(ROUNDS):
                wait_for("fo placed", lambda: placed_on(nodes[0], "fo"), 30)
                victim = by_name[placed_on(nodes[0], "fo")[0]]
                survivor = next(node for node in nodes if node is not victim)
                wait_for("fo answering", lambda: get_status(f"{survivor.gateway}/fo/") == 200)
                killed = time.monotonic()
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait()
                status = get_status(f"{survivor.gateway}/fo/")
                if status != 200:
                    sys.exit(f"a request after the kill got {status}")
                failovers.append(time.monotonic() - killed)
                victim.start()  # rejoins with its data directory and name
                wait_for("the killed node back", lambda: sum(n["alive"] for n in survivor.call("GET", "/v1/nodes")) == 3)
            lines += [f"- failover (SIGKILL of the node running a service, to the answer of a request sent right after "
                      f"it through another node; default --node-ttl 3s), {len(failovers)} rounds: median "
                      f"{med(failovers):.2f} s, each {', '.join(f'{s:.2f}' for s in failovers)} s (goal: under 5 s)", ""]
        finally:
            for node in nodes:
                if node.process.poll() is None:
                    node.stop()
            for member in members:
                member.kill()
                member.wait()
    return lines


# ---------------------------------------------------------------- the report

# ---------------------------------------------------------------- footprint (edge devices)

EDGE_TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]
QEMU = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]
TOKEN = "footprint"
# mimalloc commits its 1 GiB arena eagerly where the kernel overcommits, and with transparent
# huge pages what it touches is then resident in 2 MiB pages.
LAZY_ARENA = {"MIMALLOC_ARENA_EAGER_COMMIT": "0"}


def edge_builds():
    """The `edge` profile's binaries: {(target, "full" | "runtime-only"): path}."""
    env = dict(os.environ, CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="aarch64-linux-gnu-gcc")
    out = os.path.join(TARGET, "footprint")
    os.makedirs(out, exist_ok=True)
    builds = {}
    for target in EDGE_TARGETS:
        for kind, flags in [("runtime-only", ["--no-default-features"]), ("full", [])]:
            run("cargo", "build", "--locked", "--profile", "edge", "-p", "shoal", "--target", target,
                *flags, env=env)
            path = os.path.join(out, f"shoal-{target}-{kind}")
            subprocess.run(["cp", os.path.join(TARGET, target, "edge", "shoal"), path], check=True)
            builds[(target, kind)] = path
    return builds


def authed(node, method, path, body=None):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    request = urllib.request.Request(node.api + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def package(compiler, wasm, target, directory):
    out = os.path.join(directory, f"hello-{target}.cwasm")
    run(compiler, "compile", wasm, "--target", target, "-o", out, stdout=subprocess.DEVNULL)
    with open(out, "rb") as f:
        return f.read()


def settled_rss(pid):
    """RSS once the node has been idle for a second: what it holds, not what it just freed."""
    time.sleep(1)
    return rss_mib(pid)


def du_mib(directory):
    total = sum(os.path.getsize(os.path.join(root, name))
                for root, _, names in os.walk(directory) for name in names)
    return total / (1 << 20)


def footprint(paths):
    builds = edge_builds()
    host = EDGE_TARGETS[0]
    compiler = builds[(host, "full")]
    lines = ["| binary (`--profile edge`, stripped) | x86-64 | aarch64 |", "|---|---|---|"]
    for kind in ["runtime-only", "full"]:
        sizes = [os.path.getsize(builds[(target, kind)]) / 1e6 for target in EDGE_TARGETS]
        lines.append(f"| {kind} | {sizes[0]:.1f} MB | {sizes[1]:.1f} MB |")
    lines += ["", "| x86-64 node | idle RSS, no services | idle RSS, 10 hello services | data directory, 10 services |",
              "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for kind, env in [("runtime-only", None), ("runtime-only", LAZY_ARENA), ("full", None)]:
            label = kind + (", MIMALLOC_ARENA_EAGER_COMMIT=0" if env else "")
            data_dir = os.path.join(scratch, label)
            node = Shoal(builds[(host, kind)], data_dir, ["--token", TOKEN], env=env)
            try:
                empty = settled_rss(node.process.pid)
                body = (package(compiler, paths["hello"], host, scratch) if kind == "runtime-only"
                        else open(paths["hello"], "rb").read())
                digest = authed(node, "POST", "/v1/modules", body)["digest"]
                for i in range(10):
                    authed(node, "PUT", f"/v1/services/hello-{i}", {"module": digest})
                    timed_get(f"{node.gateway}/hello-{i}/")
                ten = settled_rss(node.process.pid)
            finally:
                node.stop()
            lines.append(f"| {label} | {empty:.1f} MiB | {ten:.1f} MiB | {du_mib(data_dir):.1f} MiB |")
        lines += ["", "| hello, runtime-only build, wrk -t1 -c4 | requests/s (median) |", "|---|---|"]
        setups = [("x86-64, native", host, [], None),
                  ("x86-64, native, MIMALLOC_ARENA_EAGER_COMMIT=0", host, [], LAZY_ARENA),
                  ("aarch64 under qemu-user (emulated)", EDGE_TARGETS[1], QEMU, None)]
        nodes = []
        try:
            for label, target, prefix, env in setups:
                node = Shoal(builds[(target, "runtime-only")], os.path.join(scratch, f"rps-{label}"),
                             ["--token", TOKEN], prefix=prefix, env=env)
                nodes.append((label, node))
                authed(node, "POST", "/v1/deploy/hello", package(compiler, paths["hello"], target, scratch))
            rates = {label: [] for label, _ in nodes}
            for _ in range(ROUNDS):
                for label, node in nodes:
                    out = subprocess.run(["wrk", "-t1", "-c4", f"-d{DURATION}", f"{node.gateway}/hello/"],
                                         check=True, capture_output=True, text=True).stdout
                    rates[label].append(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))
        finally:
            for _, node in nodes:
                node.stop()
        for label, _ in nodes:
            lines.append(f"| {label} | {med(rates[label]):,.0f} |")
    lines.append("")
    return lines


def machine():
    with open("/proc/meminfo") as meminfo:
        mem_gib = int(re.search(r"MemTotal:\s+(\d+)", meminfo.read()).group(1)) / 1024 / 1024
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read())
        if match:
            model = match.group(1).strip()
    return f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB"


def throughput_report(rows):
    by_name = {row[0]: row for row in rows}
    lines = ["| hello component, saturated | requests/s | p50 | p99 | server RSS |", "|---|---|---|---|---|"]
    for name, rps, p50, p99, rss in rows:
        lines.append(f"| {name} | {rps:,.0f} | {p50:.2f} ms | {p99:.2f} ms | {rss:.0f} MiB |")
    ratio = lambda a, b: by_name[a][1] / by_name[b][1]
    return lines + [
        "",
        f"- shoal per-request / wasmtime serve tuned: {ratio('shoal, per-request', 'wasmtime serve, tuned'):.2f}x",
        f"- shoal reuse / wasmtime serve reusing instances: {ratio('shoal, reuse', 'wasmtime serve, reusing instances'):.2f}x",
        f"- shoal reuse / native axum: {ratio('shoal, reuse', 'native axum'):.2f}x",
        "- shoal's two rows are one process serving both services, so its RSS is the same figure.",
        ""]


def latency_report(rows):
    header = ("| hello component, fixed rate | "
              + " | ".join(f"p50 / p99, CPU per request at {rate:,} req/s" for rate in RATES) + " |")
    lines = [header, "|---|" + "---|" * len(RATES)]
    for name, cells in rows:
        shown = [f"{cell[0]:.2f} / {cell[1]:.2f} ms, {cell[2]:.0f} µs" if cell else "did not keep up"
                 for cell in cells]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return lines + [""]


def baseline_report(rows, revision):
    """CPU per request before and after, and their ratio, per isolation and rate."""
    cells = dict(rows)
    lines = [f"| CPU per request at a fixed rate | " + " | ".join(f"{rate:,} req/s" for rate in RATES) + " |",
             "|---|" + "---|" * len(RATES)]
    for name, row in rows:
        lines.append(f"| {name} | " + " | ".join(f"{cell[2]:.1f} µs" if cell else "did not keep up" for cell in row) + " |")
    lines.append("")
    for isolation in ["per-request", "reuse"]:
        before, after = cells[f"{revision}, {isolation}"], cells[f"this tree, {isolation}"]
        ratios = [f"{a[2] / b[2]:.3f}x at {rate:,} req/s" if a and b else f"n/a at {rate:,} req/s"
                  for rate, b, a in zip(RATES, before, after)]
        lines.append(f"- {isolation}, this tree / {revision}: " + ", ".join(ratios))
    return lines + [""]


def main():
    def section(name):
        if name == "baseline" and not BASELINE:
            return False
        return not ONLY or name in ONLY

    paths = build(servers=not ONLY or ONLY != {"footprint"})
    peer = wasmtime() if any(section(name) for name in ["throughput", "latency", "fuel", "tiers"]) else None
    load = oha() if any(section(name) for name in ["latency", "baseline", "cluster"]) else None
    lines = [f"Machine: {machine()}. Saturated: wrk -t2 -c{CONNECTIONS} -d{DURATION}; fixed rate: oha -c{CONNECTIONS} "
             f"-z{DURATION} -q RATE --latency-correction; {ROUNDS} interleaved rounds, medians.", ""]

    before_bin = (build_baseline(BASELINE)
                  if BASELINE and any(section(name) for name in ["baseline", "contention", "slice"]) else None)
    builds = [("this tree", paths["shoal"])] + ([(BASELINE, before_bin)] if before_bin else [])
    if section("contention") or section("slice"):
        with tempfile.TemporaryDirectory() as dirs:
            shoals = []
            try:
                for label, binary in builds:
                    shoals.append((label, Shoal(binary, os.path.join(dirs, label))))
                if section("contention"):
                    log("contention")
                    for _, shoal in shoals:
                        contention_services(paths, shoal)
                    lines += contention_report(contention(shoals), [label for label, _ in builds])
                if section("slice"):
                    log("the slice's cost")
                    lines += slice_cost(shoals, paths)
            finally:
                for _, shoal in shoals:
                    shoal.stop()

    if section("baseline"):
        log(f"before and after: {BASELINE} and this tree")
        with tempfile.TemporaryDirectory() as before_dir, tempfile.TemporaryDirectory() as after_dir:
            before, after = Shoal(before_bin, before_dir), Shoal(paths["shoal"], after_dir)
            try:
                servers = [server for pair in zip(shoal_services(paths, before, BASELINE),
                                                  shoal_services(paths, after, "this tree"))
                           for server in pair]
                lines += baseline_report(latency_at_rates(servers, load), BASELINE)
            finally:
                before.stop()
                after.stop()

    with tempfile.TemporaryDirectory() as data_dir:
        shoal = Shoal(paths["shoal"], data_dir)
        try:
            if section("throughput") or section("latency"):
                servers = hello_servers(paths, shoal, peer)
                try:
                    if section("throughput"):
                        log("throughput")
                        lines += throughput_report(throughput(servers))
                    if section("latency"):
                        log("latency at fixed rates")
                        lines += latency_report(latency_at_rates(servers, load))
                finally:
                    stop_peers(servers, shoal)
            if section("fuel"):
                log("fuel")
                rows = fuel_cost(paths, shoal, peer)
                lines += ["| 20M iterations of arithmetic, one request | median time |", "|---|---|"]
                lines += [f"| {name} | {ms:.1f} ms |" for name, ms in rows]
                times = dict(rows)
                lines += ["", f"- fuel on / fuel off (wasmtime serve): "
                              f"{times['wasmtime serve, fuel on'] / times['wasmtime serve, fuel off']:.2f}x", ""]
            if section("cold"):
                log("cold paths")
                rows = cold_paths(paths, shoal)
                lines += ["| cold path | median |", "|---|---|"]
                lines += [f"| {name} | {ms:.1f} ms |" for name, ms in rows]
                lines.append("")
        finally:
            shoal.stop()

    if section("cluster"):
        log("cluster")
        lines += cluster_bench(paths, load)

    if section("density"):
        lines += ["| 1,000 services | idle RSS | RSS after load | p99, random spread | restart to all answering | compiled after restart |",
                  "|---|---|---|---|---|---|"]
        for label, n_modules in [("one module", 1), (f"{N_MODULES} distinct modules", N_MODULES)]:
            log(f"density: {label}")
            idle, loaded, p99, restart, compiled = density(paths, n_modules)
            lines.append(f"| {label} | {idle:.0f} MiB | {loaded:.0f} MiB | {p99:.2f} ms | {restart * 1000:.0f} ms | {compiled} |")
        lines.append("")

    if section("tiers"):
        log("tiers")
        lines += tiers(paths, peer)

    if section("footprint"):
        log("footprint")
        lines += footprint(paths)

    report = "\n".join(lines)
    print(report)
    os.makedirs(os.path.join(TARGET, "bench"), exist_ok=True)
    with open(os.path.join(TARGET, "bench", "report.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
