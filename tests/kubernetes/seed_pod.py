#!/usr/bin/env python
# The document's Kubernetes snippet, with the two changes it needs (marked): the client rejects
# `name=` before sending anything, and the pod needs the label its Service selects.
from kubernetes import client, config

# 加载 kubernetes 配置
config.load_kube_config()

# 创建 API 客户端
api_client = client.CoreV1Api()

# 创建容器
container = client.V1Container(
    name="my-container",
    image="my-image",
    resources=client.V1ResourceRequirements(
        requests={"cpu": "0.5", "memory": "512Mi"},
        limits={"cpu": "1", "memory": "1Gi"}
    )
)

# 创建 pod
pod = client.V1Pod(
    api_version="v1",
    kind="Pod",
    metadata=client.V1ObjectMeta(
        name="my-pod",
        labels={"app": "my-app"},  # changed: the Service below selects app=my-app
    ),
    spec=client.V1PodSpec(
        containers=[container]
    )
)

# 创建服务
service = client.V1Service(
    api_version="v1",
    kind="Service",
    metadata=client.V1ObjectMeta(
        name="my-service"
    ),
    spec=client.V1ServiceSpec(
        selector={"app": "my-app"},
        ports=[client.V1ServicePort(
            protocol="TCP",
            port=80,
            target_port=8080
        )]
    )
)

# 创建资源
api_client.create_namespaced_pod(
    namespace="default",  # changed: `name=` is not a parameter of the client
    body=pod
)
api_client.create_namespaced_service(
    namespace="default",  # changed: as above
    body=service
)
