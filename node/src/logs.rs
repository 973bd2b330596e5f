//! What each service's guests wrote: one [`GuestLog`] per service, handed to every pool the
//! reconcile loop starts for it, so the lines of replicas scaled away and of earlier
//! revisions stay readable until the service is deleted.

use std::sync::Arc;

use shoal_runtime::GuestLog;
use shoal_spec::ServiceName;

use crate::{Error, Node, Result};

impl Node {
    /// The log of `name`'s guests, made empty on first use.
    pub(crate) fn guest_log(&self, name: &ServiceName) -> Arc<GuestLog> {
        let mut logs = self.inner.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.entry(name.clone()).or_default().clone()
    }

    pub(crate) fn forget_guest_log(&self, name: &ServiceName) {
        let mut logs = self.inner.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.remove(name);
    }

    /// What the guests of the service `name`, running on this node, wrote to stdout and
    /// stderr; [`Error::NotFound`] for a service this node does not run.
    pub fn logs(&self, name: &ServiceName) -> Result<Arc<GuestLog>> {
        if !self.inner.deployed.load().contains_key(name) {
            return Err(Error::NotFound {
                what: "service",
                key: name.to_string(),
            });
        }
        Ok(self.guest_log(name))
    }
}
