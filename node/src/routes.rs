//! Routes: names the gateway answers for by selecting services by their labels, which is what
//! a Kubernetes Service is to shoal. The write path only writes; the reconcile loop keeps the
//! routes it applied and publishes each as the route of the service its selector picks.
//!
//! A route never shadows: a name that is a wasm service's or a registered service's routes
//! there, as it did before the route was written. When a selector picks several services,
//! the first by name is served (a split across them is not implemented).

use std::collections::BTreeMap;

use shoal_registry::{Expect, RouteRecord};
use shoal_spec::{RouteSpec, ServiceName};

use crate::{Error, Node, Result, WriteOptions};

impl Node {
    /// Creates or updates the route `name`, answering once the gateway serves it; the same
    /// conditions as a service write ([`WriteOptions`]; `admit_pending` does not apply).
    pub async fn write_route(
        &self,
        name: ServiceName,
        spec: RouteSpec,
        options: WriteOptions,
    ) -> Result<(RouteRecord, bool)> {
        self.check_running()?;
        spec.validate()?;
        let store = &self.inner.store;
        let current = store.route(&name).await?;
        options.check(
            &name,
            current.as_ref().map(|current| current.change_index),
            || route_not_found(&name),
        )?;
        let expect = current.as_ref().map_or(Expect::Absent, |current| {
            Expect::Revision(current.change_index)
        });
        let committed = store.put_route(&name, spec, expect).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Deletes the route `name`; answers once the gateway no longer serves it.
    pub async fn delete_route(&self, name: &ServiceName) -> Result<RouteRecord> {
        self.check_running()?;
        let committed = self.inner.store.delete_route(name, Expect::Any).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Every route, by name, as this node applied them.
    pub fn routes(&self) -> Vec<RouteRecord> {
        self.inner.routes.load().values().cloned().collect()
    }

    /// The services the route `spec` picks, by name.
    pub fn selected_services(&self, spec: &RouteSpec) -> Vec<ServiceName> {
        let deployed = self.inner.deployed.load();
        let mut names: Vec<ServiceName> = deployed
            .iter()
            .filter(|(name, deployed)| {
                shoal_spec::selects(&spec.selector, name.as_str(), &deployed.record.spec.labels)
            })
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Reads every route from the store again, for the reconcile loop.
    pub(crate) async fn reload_routes(&self) -> Result<()> {
        let routes: BTreeMap<ServiceName, RouteRecord> = self
            .inner
            .store
            .routes()
            .await?
            .into_iter()
            .map(|route| (route.name.clone(), route))
            .collect();
        self.inner.routes.store(std::sync::Arc::new(routes));
        Ok(())
    }
}

fn route_not_found(name: &ServiceName) -> Error {
    Error::NotFound {
        what: "route",
        key: name.to_string(),
    }
}
