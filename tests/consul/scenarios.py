"""What a Consul client does against shoal, run with whichever client is installed.

Run by `run.py` inside a virtual environment holding one pinned client (`py-consul` 1.8.0
or `python-consul` 1.1.0; both are imported as `consul`), after `seed_register.py` has
registered the seed's service on the same node:

    python scenarios.py API_PORT GATEWAY_URL [TOKEN]

With a TOKEN it runs only what both clients send the token with (registration, catalog and
health reads, KV), against a node that requires it. Exits non-zero on the first failure.
Talks to 127.0.0.1 only.
"""

import base64
import http.server
import inspect
import json
import sys
import threading
import time
import urllib.request

import consul


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def discovery(client):
    """The seed's registration, found through the catalog and health."""
    index, entries = client.catalog.service("my-service")
    check(int(index) > 0, f"X-Consul-Index {index!r}")
    check(len(entries) == 1, f"catalog.service: {entries}")
    entry = entries[0]
    check(entry["ServiceAddress"] == "127.0.0.1", entry)
    check(entry["ServicePort"] == 8080, entry)
    check(entry["ServiceTags"] == ["my-tag"], entry)
    _, healthy = client.health.service("my-service", passing=True)
    check([e["Service"]["ID"] for e in healthy] == ["my-service"], f"health.service: {healthy}")
    _, names = client.catalog.services()
    check(names.get("my-service") == ["my-tag"], f"catalog.services: {names}")


def ttl_heartbeat(client):
    """A TTL check starts critical, and a heartbeat makes it pass."""
    check(
        client.agent.service.register("worker", service_id="worker-1", check=consul.Check.ttl("30s")),
        "register with a TTL check",
    )
    _, healthy = client.health.service("worker", passing=True)
    check(healthy == [], f"a TTL check starts critical: {healthy}")
    check(client.agent.check.ttl_pass("service:worker-1", "all good"), "ttl_pass")
    _, healthy = client.health.service("worker", passing=True)
    check([e["Service"]["ID"] for e in healthy] == ["worker-1"], f"after ttl_pass: {healthy}")
    checks = {c["CheckID"]: c for c in healthy[0]["Checks"]}
    check(checks["service:worker-1"]["Output"] == "all good", checks)
    # Go's UpdateTTL, which neither Python client wraps, sent through the client's own
    # connection: the status and output in the body.
    try:
        from consul.callback import CB
    except ImportError:
        from consul.base import CB
    body = json.dumps({"Status": "warning", "Output": "slow disk"})
    boolean = CB.boolean() if hasattr(CB, "boolean") else CB.bool()
    check(client.http.put(boolean, "/v1/agent/check/update/service:worker-1", data=body), "check update")
    check_state = client.agent.checks()["service:worker-1"]
    check((check_state["Status"], check_state["Output"]) == ("warning", "slow disk"), check_state)
    check(client.agent.service.deregister("worker-1"), "deregister")
    _, entries = client.catalog.service("worker")
    check(entries == [], f"after deregister: {entries}")


def agent_and_nodes(client):
    """The agent's own description, its members, datacenters and node, and maintenance mode."""
    me = client.agent.self()
    name = me["Config"]["NodeName"]
    check(isinstance(name, str) and name, f"agent.self: {me['Config']}")
    check(me["Config"]["Datacenter"] == "dc1", me["Config"])
    check(all(isinstance(value, dict) for value in me.values()), f"agent.self values: {me}")
    check([m["Name"] for m in client.agent.members()] == [name], "agent.members")
    check(client.catalog.datacenters() == ["dc1"], "catalog.datacenters")
    _, listed = client.catalog.node(name)
    check(listed["Node"]["Node"] == name, f"catalog.node: {listed}")
    check("my-service" in listed["Services"], f"catalog.node: {listed}")
    _, checks = client.health.node(name)
    check(checks[0]["CheckID"] == "serfHealth", f"health.node: {checks}")

    check(client.agent.service.maintenance("my-service", True, "patching"), "service maintenance on")
    _, healthy = client.health.service("my-service", passing=True)
    check(healthy == [], f"an instance in maintenance is not passing: {healthy}")
    _, entries = client.health.service("my-service")
    by_id = {c["CheckID"]: c for c in entries[0]["Checks"]}
    check(by_id["_service_maintenance:my-service"]["Notes"] == "patching", by_id)
    check(client.agent.service.maintenance("my-service", False), "service maintenance off")
    check(client.agent.maintenance(True, "rack move"), "node maintenance on")
    _, healthy = client.health.service("my-service", passing=True)
    check(healthy == [], f"a node in maintenance fails its instances: {healthy}")
    check(client.agent.maintenance(False), "node maintenance off")
    _, healthy = client.health.service("my-service", passing=True)
    check(len(healthy) == 1, f"after maintenance: {healthy}")
    # py-consul 1.8 passes filters (python-consul 1.1 has no such argument).
    if "filter_expr" in inspect.signature(client.agent.services).parameters:
        kept = client.agent.services(filter_expr='"my-tag" in Tags and Port == 8080')
        check(list(kept) == ["my-service"], f"agent.services(filter_expr=): {kept}")
        check(client.agent.services(filter_expr="Port == 1") == {}, "a filter that keeps nothing")


def catalog_nodes(client):
    """A node that runs no agent, registered through the catalog, discovered, then deregistered."""
    check(client.catalog.register(
        "py-ext", "127.0.0.1",
        service={"service": "py-ext-db", "port": 5432, "tags": ["ext"]},
        check={"name": "py-ext-db alive", "status": "passing", "serviceid": "py-ext-db"},
    ), "catalog.register")
    _, healthy = client.health.service("py-ext-db", passing=True)
    check([e["Node"]["Node"] for e in healthy] == ["py-ext"], f"health.service: {healthy}")
    check([c["CheckID"] for c in healthy[0]["Checks"]] == ["py-ext-db alive"], healthy[0]["Checks"])
    _, on_node = client.catalog.node("py-ext")
    check(list(on_node["Services"]) == ["py-ext-db"], on_node)
    check(client.catalog.deregister("py-ext"), "catalog.deregister")
    _, gone = client.catalog.node("py-ext")
    check(gone is None, f"after deregister: {gone}")


def sessions_and_locks(client):
    """Sessions with a TTL, a lock held by one and refused to another, lock-delay, expiry, transactions."""
    a = client.session.create(name="a", ttl=10, lock_delay=0)
    b = client.session.create(name="b", lock_delay=0)
    check(client.kv.put("py/lock", "a", acquire=a), "a acquires")
    check(not client.kv.put("py/lock", "b", acquire=b), "b is refused while a holds the lock")
    _, entry = client.kv.get("py/lock")
    check(entry["Session"] == a and entry["LockIndex"] == 1, entry)
    check(client.session.renew(a)["ID"] == a, "renew")
    check(client.kv.put("py/lock", "a, done", release=a), "a releases")
    check(client.kv.put("py/lock", "b", acquire=b), "b acquires once a released")
    _, entry = client.kv.get("py/lock")
    check(entry["Session"] == b and entry["LockIndex"] == 2, entry)

    # Consul's default lock-delay of 15 s: once the holder is invalidated, nobody takes its
    # key at once.
    c = client.session.create(name="c")
    check(client.kv.put("py/delayed", "c", acquire=c), "c acquires")
    check(client.session.destroy(c), "destroy")
    check(not client.kv.put("py/delayed", "b", acquire=b), "the lock-delay holds")

    # Nobody renews a: within twice its TTL it lapses, and the key it holds is released.
    check(client.kv.put("py/expiring", "a", acquire=a), "a acquires again")
    index, entry = client.kv.get("py/expiring")
    deadline = time.monotonic() + 40
    while entry.get("Session"):
        check(time.monotonic() < deadline, "the session never lapsed")
        index, entry = client.kv.get("py/expiring", index=index, wait="5s")
    _, info = client.session.info(a)
    check(info is None, f"a lapsed session is gone: {info}")

    def b64(text):
        return base64.b64encode(text.encode()).decode()

    done = client.txn.put([
        {"KV": {"Verb": "set", "Key": "py/t1", "Value": b64("one")}},
        {"KV": {"Verb": "cas", "Key": "py/t2", "Value": b64("two"), "Index": 0}},
        {"KV": {"Verb": "get", "Key": "py/t1"}},
    ])
    check(done["Errors"] is None and len(done["Results"]) == 3, done)
    check(done["Results"][2]["KV"]["Value"] == b64("one"), done)
    try:
        client.txn.put([
            {"KV": {"Verb": "set", "Key": "py/t3", "Value": b64("three")}},
            {"KV": {"Verb": "check-not-exists", "Key": "py/t1"}},
        ])
    except consul.ConsulException as error:
        check("409" in str(error) and '"OpIndex":1' in str(error), str(error))
    else:
        raise AssertionError("a failing transaction was committed")
    _, t3 = client.kv.get("py/t3")
    check(t3 is None, f"a rolled back transaction wrote: {t3}")
    check(client.session.destroy(b), "destroy b")


def key_value(client):
    """Put, get, list and delete, with values as bytes."""
    check(client.kv.put("scenario/greeting", "hello") is True, "kv.put")
    check(client.kv.put("scenario/other", b"\x00\xffbytes") is True, "kv.put bytes")
    index, item = client.kv.get("scenario/greeting")
    check(item["Value"] == b"hello", item)
    check(int(index) >= int(item["ModifyIndex"]), (index, item))
    _, items = client.kv.get("scenario/", recurse=True)
    check([i["Key"] for i in items] == ["scenario/greeting", "scenario/other"], items)
    check(items[1]["Value"] == b"\x00\xffbytes", items)
    _, keys = client.kv.get("scenario/", keys=True)
    check(keys == ["scenario/greeting", "scenario/other"], keys)
    check(client.kv.delete("scenario/", recurse=True) is True, "kv.delete recurse")
    _, item = client.kv.get("scenario/greeting")
    check(item is None, f"after delete: {item}")


def blocking_get(client):
    """A blocking kv.get, woken by a put from another thread."""
    client.kv.put("scenario/watched", "before")
    index, _ = client.kv.get("scenario/watched")
    entering = threading.Event()

    def put_later():
        entering.wait()
        # The get below cannot announce that it is blocked; give it a moment to be.
        time.sleep(0.3)
        client.kv.put("scenario/watched", "after")

    writer = threading.Thread(target=put_later)
    writer.start()
    started = time.monotonic()
    entering.set()
    new_index, item = client.kv.get("scenario/watched", index=index, wait="30s")
    elapsed = time.monotonic() - started
    writer.join()
    check(item["Value"] == b"after", item)
    check(int(new_index) > int(index), (index, new_index))
    check(elapsed < 20, f"the blocking get took {elapsed:.1f}s")
    client.kv.delete("scenario/watched")


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"external {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def gateway(client, gateway_url):
    """An HTTP server registered through the client is reached through the gateway by name."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        url = f"http://127.0.0.1:{port}/health"
        check(
            client.agent.service.register(
                "py-web", address="127.0.0.1", port=port, check=consul.Check.http(url, "100ms")
            ),
            "register with an HTTP check",
        )
        # Wait for the first probe with blocking queries, as a Consul client would.
        index, healthy = client.health.service("py-web", passing=True)
        deadline = time.monotonic() + 20
        while not healthy:
            check(time.monotonic() < deadline, "the HTTP check never passed")
            index, healthy = client.health.service("py-web", passing=True, index=index, wait="2s")
        with urllib.request.urlopen(f"{gateway_url}/py-web/hello?x=1") as response:
            body = response.read().decode()
        check(body == "external /hello?x=1", body)
        client.agent.service.deregister("py-web")
    finally:
        server.shutdown()


def with_token(client, api_port):
    """What both clients send the token with: registration, reads and KV."""
    check(client.agent.service.register("secured", address="127.0.0.1", port=9000), "register")
    _, entries = client.catalog.service("secured")
    check([e["ServiceID"] for e in entries] == ["secured"], entries)
    check(client.kv.put("secured/key", "v") is True, "kv.put")
    _, item = client.kv.get("secured/key")
    check(item["Value"] == b"v", item)
    anonymous = consul.Consul(host="127.0.0.1", port=api_port)
    try:
        anonymous.kv.get("secured/key")
    except consul.ACLPermissionDenied:
        pass
    else:
        raise AssertionError("a read without the token was allowed")


def main():
    api_port, gateway_url = int(sys.argv[1]), sys.argv[2]
    token = sys.argv[3] if len(sys.argv) > 3 else None
    client = consul.Consul(host="127.0.0.1", port=api_port, token=token)
    if token:
        steps = [(with_token, (client, api_port))]
    else:
        steps = [
            (discovery, (client,)),
            (ttl_heartbeat, (client,)),
            (agent_and_nodes, (client,)),
            (catalog_nodes, (client,)),
            (sessions_and_locks, (client,)),
            (key_value, (client,)),
            (blocking_get, (client,)),
            (gateway, (client, gateway_url)),
        ]
    for step, args in steps:
        step(*args)
        print(f"  ok: {step.__doc__.splitlines()[0]}")


if __name__ == "__main__":
    main()
