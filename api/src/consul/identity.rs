//! Who this node is, in Consul's terms: a node ID, a name, an address, and the raft address
//! `/v1/status/leader` answers with.

use shoal_node::Node;

/// This node, as Consul clients see it.
#[derive(Debug, Clone)]
pub(crate) struct ConsulNode {
    /// A UUID, stable for a node name and data directory.
    pub(crate) id: String,
    /// The node's name.
    pub(crate) name: String,
    /// The node's address.
    pub(crate) address: String,
    /// What `/v1/status/leader` answers: this node, at Consul's server port.
    pub(crate) raft_address: String,
    /// The datacenter it reports.
    pub(crate) datacenter: String,
    /// For a node registered through the catalog, its record: it has no `serfHealth`, and its
    /// meta and tagged addresses are what was registered.
    pub(crate) catalog: Option<shoal_registry::ExternalNode>,
}

impl ConsulNode {
    /// Another node of this node's cluster, named `name`, at the host it advertised.
    pub(crate) fn peer(node: &Node, this: &ConsulNode, name: &str) -> ConsulNode {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{name}\n").as_bytes());
        let address = node.node_host(name).unwrap_or_else(|| this.address.clone());
        ConsulNode {
            id: id.to_string(),
            name: name.to_owned(),
            raft_address: format!("{address}:8300"),
            address,
            datacenter: this.datacenter.clone(),
            catalog: None,
        }
    }

    /// The node a registration with this owner is on.
    pub(crate) fn owner(node: &Node, this: &ConsulNode, owner: &str) -> ConsulNode {
        if node.owns(owner) {
            this.clone()
        } else if let Some(external) = node.external_node(owner) {
            ConsulNode::registered(this, external)
        } else {
            ConsulNode::peer(node, this, owner)
        }
    }

    /// A node registered through the catalog.
    pub(crate) fn registered(
        this: &ConsulNode,
        external: shoal_registry::ExternalNode,
    ) -> ConsulNode {
        let id = if external.id.is_empty() {
            let seed = format!("{}\n", external.name);
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string()
        } else {
            external.id.clone()
        };
        ConsulNode {
            id,
            name: external.name.clone(),
            address: external.address.clone(),
            raft_address: String::new(),
            datacenter: this.datacenter.clone(),
            catalog: Some(external),
        }
    }

    /// Whether it is a node registered through the catalog, which has no `serfHealth`.
    pub(crate) fn is_registered(&self) -> bool {
        self.catalog.is_some()
    }

    /// The identity of `node`.
    pub(crate) fn of(node: &Node) -> ConsulNode {
        let config = node.config();
        // A name-based UUID: the same name and data directory give the same ID across
        // restarts, as Consul keeps its node ID in its data directory.
        let seed = format!("{}\n{}", config.node_name, config.data_dir.display());
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes());
        ConsulNode {
            id: id.to_string(),
            name: config.node_name.clone(),
            address: config.node_address.clone(),
            raft_address: format!("{}:8300", config.node_address),
            datacenter: config.datacenter.clone(),
            catalog: None,
        }
    }
}
