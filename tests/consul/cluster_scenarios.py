"""py-consul against a cluster of three shoal nodes sharing one etcd, as `run.py` starts it:

    python cluster_scenarios.py API1 API2 API3 GATEWAY3 PID2

Register on node 2, discover on node 1, route from node 3; a key written on node 1 wakes a
blocking read on node 3; each node's agent lists its own registrations; once node 2 is
killed (PID2), its instance shows a critical serfHealth check and gets no traffic. Exits
non-zero on the first failure. Talks to 127.0.0.1 only.
"""

import http.server
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import consul


def check(condition, what):
    if not condition:
        raise AssertionError(what)


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"external {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def wait_until(what, condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        check(time.monotonic() < deadline, f"never: {what}")
        # Polled: the state changes in other processes.
        time.sleep(0.1)


def main():
    api1, api2, api3 = (int(port) for port in sys.argv[1:4])
    gateway3, pid2 = sys.argv[4], int(sys.argv[5])
    n1, n2, n3 = (consul.Consul(host="127.0.0.1", port=port) for port in (api1, api2, api3))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    check(
        n2.agent.service.register(
            "py-web", address="127.0.0.1", port=port,
            check=consul.Check.http(f"http://127.0.0.1:{port}/health", "100ms"),
        ),
        "register on node 2",
    )
    # Node 1 discovers it once node 2's check passes, with blocking queries.
    index, healthy = n1.health.service("py-web", passing=True)
    deadline = time.monotonic() + 20
    while not healthy:
        check(time.monotonic() < deadline, "the check run by node 2 never passed on node 1")
        index, healthy = n1.health.service("py-web", passing=True, index=index, wait="2s")
    check(healthy[0]["Node"]["Node"] == "n2", healthy[0]["Node"])
    check(healthy[0]["Service"]["Port"] == port, healthy[0]["Service"])
    print("  ok: registered on node 2, discovered on node 1")
    check("py-web" in n2.agent.services(), "node 2's agent lists its own registration")
    check("py-web" not in n1.agent.services(), "node 1's agent lists another node's registration")
    print("  ok: each agent lists the registrations made through it")
    with urllib.request.urlopen(f"{gateway3}/py-web/hello") as response:
        body = response.read().decode()
    check(body == "external /hello", body)
    print("  ok: routed from node 3's gateway")

    check(sorted(m["Name"] for m in n1.agent.members()) == ["n1", "n2", "n3"], "agent.members")
    _, on_n2 = n1.catalog.node("n2")
    check(list(on_n2["Services"]) == ["py-web"], f"catalog.node n2 read on node 1: {on_n2}")
    _, on_n3 = n1.catalog.node("n3")
    check(on_n3["Services"] == {}, f"catalog.node n3: {on_n3}")
    # Node 3 in maintenance fails nothing of node 2's; node 2 in maintenance does.
    check(n3.agent.maintenance(True, "n3 down for repair"), "node 3 maintenance")
    _, checks = n1.health.node("n3")
    check([c["CheckID"] for c in checks] == ["serfHealth", "_node_maintenance"], checks)
    _, healthy = n1.health.service("py-web", passing=True)
    check(len(healthy) == 1, f"node 3's maintenance failed node 2's instance: {healthy}")
    check(n2.agent.maintenance(True, "n2 too"), "node 2 maintenance")
    _, healthy = n1.health.service("py-web", passing=True)
    check(healthy == [], f"node 2 in maintenance: {healthy}")
    for client in (n2, n3):
        check(client.agent.maintenance(False), "maintenance off")
    _, healthy = n1.health.service("py-web", passing=True)
    check(len(healthy) == 1, f"after maintenance: {healthy}")
    print("  ok: members, each node's view, and maintenance mode per node")

    n1.kv.put("cluster/watched", "before")
    index, _ = n3.kv.get("cluster/watched")

    def put_later():
        # The get below cannot announce that it is blocked; give it a moment to be.
        time.sleep(0.3)
        n1.kv.put("cluster/watched", "after")

    writer = threading.Thread(target=put_later)
    writer.start()
    started = time.monotonic()
    new_index, item = n3.kv.get("cluster/watched", index=index, wait="30s")
    writer.join()
    check(item["Value"] == b"after", item)
    check(int(new_index) > int(index), (index, new_index))
    check(time.monotonic() - started < 20, "the blocking get on node 3 was not woken")
    print("  ok: a key written on node 1 wakes a blocking read on node 3")

    # A node that runs no agent, registered through node 1, is healthy on node 3 (it has no
    # serfHealth to fail, though it is no member) and routed to from node 3's gateway.
    check(n1.catalog.register("ext-web", "127.0.0.1",
                              service={"service": "ext-web", "port": port},
                              check={"name": "ext-web ok", "status": "passing", "serviceid": "ext-web"}),
          "catalog.register on node 1")
    _, healthy = n3.health.service("ext-web", passing=True)
    check([e["Node"]["Node"] for e in healthy] == ["ext-web"], healthy)
    with urllib.request.urlopen(f"{gateway3}/ext-web/hello") as response:
        check(response.read().decode() == "external /hello", "routed to a catalog node")
    check(n2.catalog.deregister("ext-web"), "catalog.deregister on node 2")
    _, gone = n3.catalog.node("ext-web")
    check(gone is None, gone)
    print("  ok: a node registered through the catalog, on every node")

    # A lock means the same on every node: taken through node 2, refused through node 3,
    # released when node 2 dies (its sessions end with its serfHealth).
    on_n2 = n2.session.create(name="n2's", lock_delay=0)
    on_n3 = n3.session.create(name="n3's", lock_delay=0)
    check(n2.kv.put("cluster/leader", "n2", acquire=on_n2), "node 2 takes the lock")
    check(not n3.kv.put("cluster/leader", "n3", acquire=on_n3), "node 3 is refused it")
    _, entry = n1.kv.get("cluster/leader")
    check(entry["Session"] == on_n2, entry)
    _, sessions = n1.session.node("n2")
    check([s["ID"] for s in sessions] == [on_n2], sessions)
    print("  ok: a lock taken through node 2 is held on every node")

    os.kill(pid2, signal.SIGKILL)

    def lock_released():
        _, entry = n1.kv.get("cluster/leader")
        return entry is not None and not entry.get("Session")

    wait_until("node 2's session ends with node 2", lock_released)
    check(n3.kv.put("cluster/leader", "n3", acquire=on_n3), "node 3 takes the lock")
    print("  ok: a dead node's session ends, and its lock goes to another")

    def node2_critical():
        _, entries = n1.health.service("py-web")
        serf = [c for c in entries[0]["Checks"] if c["CheckID"] == "serfHealth"]
        return serf and serf[0]["Status"] == "critical"

    wait_until("node 2's serfHealth critical on node 1", node2_critical)
    _, passing = n1.health.service("py-web", passing=True)
    check(passing == [], passing)

    def refused():
        try:
            urllib.request.urlopen(f"{gateway3}/py-web/hello")
        except urllib.error.HTTPError as error:
            return error.code == 503
        return False

    wait_until("no traffic to a dead node's instance", refused)
    print("  ok: a dead node's instance is critical and gets no traffic")
    server.shutdown()


if __name__ == "__main__":
    main()
