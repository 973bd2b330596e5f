#!/usr/bin/env python3
"""`GET /metrics` read by the Prometheus Python client's OpenMetrics parser, against a real
shoal node: `python3 tests/metrics/run.py`.

It installs the pinned `prometheus_client` in a virtual environment under
`target/metrics-venvs` (kept between runs) and runs itself there; starts the shoal binary
with a token; deploys echo-http and trap-http; and checks that the scrape parses, that every
sample names its node, that counters move by exactly the requests and faults sent, that each
histogram's buckets add up, and that the p50 `GET /v1/services/{name}/status` reports is the
quantile of the histogram Prometheus reads. Run by `scripts/test` after the end-to-end suite,
which builds the guests.
"""

import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402  (tests/harness.py)
from harness import check  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT = "prometheus_client==0.26.0"
TOKEN = "metrics-test-token"


def request(method, url, body=None, token=TOKEN):
    return harness.request(method, url, body, token)


def deploy(api, name, guest):
    with open(harness.guest(guest), "rb") as f:
        status, _, body = request("POST", f"{api}/v1/modules", f.read())
    check(status in (200, 201), f"upload of {guest}: {status} {body!r}")
    spec = json.dumps({"module": json.loads(body)["digest"]}).encode()
    status, _, body = request("PUT", f"{api}/v1/services/{name}", spec)
    check(status in (200, 201), f"deploying {name}: {status} {body!r}")


def scrape(api):
    """The families of one scrape, by name, each sample as (labels, value)."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    status, headers, body = request("GET", f"{api}/metrics")
    check(status == 200, f"GET /metrics answered {status}: {body!r}")
    check(headers["Content-Type"].startswith("application/openmetrics-text"), headers["Content-Type"])
    families = {}
    for family in text_string_to_metric_families(body.decode()):
        families[family.name] = family
        for sample in family.samples:
            check(sample.labels.get("node"), f"{sample.name} has no node label: {sample.labels}")
    return families


def value(families, family, sample_name, **labels):
    """The value of the sample of `family` named `sample_name` whose labels include `labels`;
    None when there is none."""
    found = [s.value for s in families[family].samples
             if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
    check(len(found) <= 1, f"{sample_name} {labels}: {found}")
    return found[0] if found else None


def histogram(families, family, service):
    """A service's histogram: [(upper bound, cumulative count)], count and sum."""
    samples = [s for s in families[family].samples if s.labels.get("service") == service]
    buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")]
    count = next(s.value for s in samples if s.name.endswith("_count"))
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    return buckets, count, total


def quantile(q, buckets):
    """Prometheus' histogram_quantile, over cumulative buckets."""
    total = buckets[-1][1]
    rank = q * total
    below, lower = 0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        below, lower = cumulative, bound
    return lower


def main():
    print(f"{CLIENT} reads GET /metrics:")
    with tempfile.TemporaryDirectory() as data_dir:
        node, api, gateway = harness.start_node(data_dir, TOKEN)
        try:
            status, _, _ = request("GET", f"{api}/metrics", token=None)
            check(status == 401, f"a scrape without the token answered {status}")
            print("  ok: the token rule applies to /metrics")

            deploy(api, "echo", "echo_http")
            deploy(api, "trap", "trap_http")
            before = scrape(api)
            check(value(before, "shoal_requests", "shoal_requests_total", service="echo") is None,
                  "echo has answered nothing yet")
            check(value(before, "shoal_replicas", "shoal_replicas", service="echo") == 1, "echo runs one replica")
            check(value(before, "shoal_node_memory_capacity_bytes", "shoal_node_memory_capacity_bytes") > 0,
                  "the node's capacity")
            print("  ok: the scrape parses; every sample names its node")

            for _ in range(20):
                status, _, _ = request("GET", f"{gateway}/echo/", token=None)
                check(status == 200, f"echo answered {status}")
            for _ in range(3):
                status, _, _ = request("GET", f"{gateway}/trap/", token=None)
                check(status == 502, f"trap answered {status}")
            after = scrape(api)
            ok = value(after, "shoal_requests", "shoal_requests_total", service="echo", outcome="ok", code="2xx")
            check(ok == 20, f"echo's ok requests: {ok}")
            trapped = value(after, "shoal_requests", "shoal_requests_total", service="trap", outcome="trap",
                            code="5xx")
            check(trapped == 3, f"trap's trapped requests: {trapped}")
            fuel = value(after, "shoal_guest_fuel", "shoal_guest_fuel_total", service="echo")
            check(fuel and fuel > 0, f"echo burnt fuel: {fuel}")
            print("  ok: counters move by the requests and faults sent")

            for family in ("shoal_request_duration_seconds", "shoal_guest_duration_seconds",
                           "shoal_queue_wait_seconds"):
                buckets, count, total = histogram(after, family, "echo")
                check(buckets[-1][0] == float("inf") and buckets[-1][1] == count, f"{family}: +Inf is the count")
                check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{family}: buckets grow")
                check(all(a[0] < b[0] for a, b in zip(buckets, buckets[1:])), f"{family}: bounds grow")
                check(count == 20 and total >= 0, f"{family}: {count} observations, sum {total}")
            print("  ok: histograms are consistent")

            buckets, _, _ = histogram(after, "shoal_request_duration_seconds", "echo")
            status, _, body = request("GET", f"{api}/v1/services/echo/status")
            latency = json.loads(body)["latency_ms"]
            for q, key in ((0.5, "p50"), (0.99, "p99")):
                expected = quantile(q, buckets) * 1000
                check(abs(latency[key] - expected) < 1e-5 * max(1.0, expected),
                      f"status {key} {latency[key]} ms is the histogram's {expected} ms")
            print("  ok: the status's latency is the quantile of the scraped histogram")
        finally:
            node.terminate()
            node.wait()
    print("metrics: all passed")


if __name__ == "__main__":
    harness.in_environment("metrics-venvs", "prometheus", CLIENT, __file__, "SHOAL_METRICS_VENV")
    main()
