#!/usr/bin/env python
from consul import Consul

# 初始化 consul 客户端
client = Consul(host="localhost", port=8500)

# 注册服务
client.agent.service.register(
    "my-service",
    address="127.0.0.1",
    port=8080,
    tags=["my-tag"]
)
