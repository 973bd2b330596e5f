"""The Kubernetes Python client against a shoal node, after the document's snippet has run.

Arguments: the gateway's URL, the digest of the echo-http module, the path of the hello-http
module. The kubeconfig comes from $KUBECONFIG (written by `shoal kubeconfig`: TLS with the
node's self-signed certificate and its token). Checks what the snippet made, then lists,
watches, reads logs, patches the scale, waits for an image, deletes, and the error paths, each
as the client surfaces it.
"""

import json
import sys
import threading
import urllib.request

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

gateway, echo_digest, hello_path = sys.argv[1], sys.argv[2], sys.argv[3]
config.load_kube_config()
core = client.CoreV1Api()
apps = client.AppsV1Api()


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


def call(host_or_path):
    """GET through the gateway; by path unless given a Host."""
    request = urllib.request.Request(f"{gateway}/{host_or_path}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()


def status_of(error):
    body = json.loads(error.body)
    return error.status, body.get("kind"), body.get("reason"), body.get("message", "")


# What the snippet made: a running pod, and a Service whose name routes to it.
pod = core.read_namespaced_pod("my-pod", "default")
check(pod.status.phase == "Running", f"my-pod is {pod.status.phase}")
check(pod.spec.containers[0].resources.requests["cpu"] == "500m", pod.spec.containers[0].resources)
service = core.read_namespaced_service("my-service", "default")
check(service.spec.selector == {"app": "my-app"}, service.spec)
check(service.spec.ports[0].port == 80, service.spec.ports)
status, _ = call("my-service/")
check(status == 200, f"the gateway answered {status} for my-service")
print("  ok: the document's pod and service, created by the client, routed by the gateway")

pods = core.list_namespaced_pod("default", label_selector="app=my-app")
check([p.metadata.name for p in pods.items] == ["my-pod"], [p.metadata.name for p in pods.items])
print("  ok: list with a label selector")

# A Deployment, watched while it is scaled.
deployment = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "talk"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "talk"}},
        "template": {
            "metadata": {"labels": {"app": "talk"}},
            "spec": {"containers": [{"name": "main", "image": f"echo@{echo_digest}"}]},
        },
    },
}
created = apps.create_namespaced_deployment("default", deployment)
check(created.metadata.uid and created.metadata.resource_version, created.metadata)
listed = apps.list_namespaced_deployment("default")
resource_version = listed.metadata.resource_version
seen = []


def follow():
    stream = watch.Watch().stream(apps.list_namespaced_deployment, "default",
                                  resource_version=resource_version, timeout_seconds=20)
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name, event["object"].spec.replicas))
        if event["object"].spec.replicas == 2:
            return


watcher = threading.Thread(target=follow)
watcher.start()
scale = apps.patch_namespaced_deployment_scale("talk", "default", {"spec": {"replicas": 2}})
check(scale.spec.replicas == 2, scale)
watcher.join(30)
check(("MODIFIED", "talk", 2) in seen, f"the watch saw {seen}")
print("  ok: create a deployment, watch it, patch its scale")

status, _ = call("talk/?log=from-python")
check(status == 200, f"talk answered {status}")
talk_pods = core.list_namespaced_pod("default", label_selector="app=talk")
logs = "".join(core.read_namespaced_pod_log(p.metadata.name, "default") for p in talk_pods.items)
check("from-python" in logs, f"the pods' logs: {logs!r}")
print("  ok: read_namespaced_pod_log")

# Error paths, as ApiException with a Status body.
try:
    core.read_namespaced_pod("missing", "default")
    sys.exit("FAILED: reading a missing pod succeeded")
except ApiException as error:
    code, kind, reason, _ = status_of(error)
    check((code, kind, reason) == (404, "Status", "NotFound"), status_of(error))
try:
    apps.create_namespaced_deployment("default", deployment)
    sys.exit("FAILED: creating talk twice succeeded")
except ApiException as error:
    check(status_of(error)[:3] == (409, "Status", "AlreadyExists"), status_of(error))
with_volume = json.loads(json.dumps(deployment))
with_volume["metadata"]["name"] = "stored"
with_volume["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
try:
    apps.create_namespaced_deployment("default", with_volume)
    sys.exit("FAILED: a deployment with a volume was accepted")
except ApiException as error:
    code, _, reason, message = status_of(error)
    check((code, reason) == (422, "Invalid") and "spec.template.spec.volumes" in message, status_of(error))
print("  ok: 404, 409 and 422 as ApiException with a Status body")

# An image that names no module yet: the pod waits in ErrImagePull, with an event saying why,
# and starts once a module is uploaded with that name (the client's own connection uploads it).
later = json.loads(json.dumps(deployment))
later["metadata"]["name"] = "later"
later["spec"]["selector"]["matchLabels"] = {"app": "later"}
later["spec"]["template"]["metadata"]["labels"] = {"app": "later"}
later["spec"]["template"]["spec"]["containers"][0]["image"] = "later:v1"
apps.create_namespaced_deployment("default", later)
waiting = core.list_namespaced_pod("default", label_selector="app=later")
check(len(waiting.items) == 1, waiting.items)
state = waiting.items[0].status.container_statuses[0].state.waiting
check(state is not None and state.reason == "ErrImagePull" and "later:v1" in state.message, state)
events = core.list_namespaced_event("default", field_selector=f"involvedObject.name={waiting.items[0].metadata.name}")
check(any(e.reason == "Failed" and "Failed to pull image" in e.message for e in events.items),
      [(e.reason, e.message) for e in events.items])
running = []


def wait_running():
    stream = watch.Watch().stream(core.list_namespaced_pod, "default", label_selector="app=later",
                                  resource_version=waiting.metadata.resource_version, timeout_seconds=30)
    for event in stream:
        if event["object"].status.phase == "Running":
            running.append(event["object"].metadata.name)
            return


watcher = threading.Thread(target=wait_running)
watcher.start()
api = client.ApiClient()
with open(hello_path, "rb") as module:
    uploaded = api.call_api("POST", f"{api.configuration.host}/v1/modules?name=later:v1", body=module.read(),
                            header_params={"Content-Type": "application/wasm",
                                           "Authorization": api.configuration.get_api_key_with_prefix("BearerToken")})
check(uploaded.status in (200, 201), f"the upload answered {uploaded.status}")
watcher.join(40)
check(running, "the watch saw the waiting pod run once its module was uploaded")
status, _ = call("later/")
check(status == 200, f"later answered {status}")
print("  ok: an image naming no module waits in ErrImagePull, and runs once uploaded")

apps.delete_namespaced_deployment("later", "default")
apps.delete_namespaced_deployment("talk", "default")
deleted = core.delete_namespaced_pod("my-pod", "default")
check(deleted.metadata.name == "my-pod", deleted)
core.delete_namespaced_service("my-service", "default")
remaining = [p.metadata.name for p in core.list_namespaced_pod("default").items]
check(remaining == [], f"pods left: {remaining}")
print("  ok: delete")
