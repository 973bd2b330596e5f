//! Services waiting for their module: written (by the Kubernetes API) with an image that names
//! no stored module yet, as Kubernetes keeps such a Pod Pending in `ErrImagePull`. Nothing is
//! pulled from a network; the service starts when a module is uploaded with the name or the
//! digest its image gives.
//!
//! A waiting service holds its name: a create of that name is refused, an update replaces it.
//! It becomes a service when a module that its image names is stored or named on any node:
//! the node storing it resolves every waiting service against the modules (and so does a
//! write of a waiting service, in case the module arrived meanwhile, and a node starting).

use shoal_registry::{Expect, WaitingRecord};
use shoal_spec::{ImageRef, ServiceName, ServiceSpec};

use crate::{Error, Node, Result, WriteOptions};

impl Node {
    /// Every service waiting for its module, by name.
    pub async fn waiting(&self) -> Result<Vec<WaitingRecord>> {
        self.check_running()?;
        Ok(self.inner.store.waiting().await?)
    }

    pub(crate) async fn waiting_named(&self, name: &ServiceName) -> Result<Option<WaitingRecord>> {
        let waiting = self.inner.store.waiting().await?;
        Ok(waiting.into_iter().find(|waiting| waiting.name == *name))
    }

    /// Creates or updates the service `name` waiting for the module `image` names, with the
    /// conditions of a service write ([`WriteOptions`], checked against the waiting service;
    /// `admit_pending` does not apply: nothing runs). A service of that name is not turned
    /// back into a waiting one: it keeps running its module, and the write is refused.
    pub async fn write_waiting(
        &self,
        name: ServiceName,
        image: &str,
        mut spec: ServiceSpec,
        options: WriteOptions,
    ) -> Result<WaitingRecord> {
        self.check_running()?;
        ImageRef::parse(image)?;
        spec.normalize();
        spec.validate()?;
        let store = &self.inner.store;
        if store.service(&name).await?.is_some() {
            if options.create_only {
                return Err(Error::Conflict(crate::Conflict::Exists {
                    name: name.to_string(),
                }));
            }
            return Err(Error::invalid(
                "module",
                format!(
                    "image {image:?} names no uploaded module, and service {name} runs one: \
                     upload the module first (POST /v1/modules?name=...)"
                ),
            ));
        }
        let current = self.waiting_named(&name).await?;
        let holder = current.as_ref().map(|current| current.change_index);
        options.check(&name, holder, || Error::NotFound {
            what: "service",
            key: name.to_string(),
        })?;
        let expect = holder.map_or(Expect::Absent, Expect::Revision);
        let committed = store.put_waiting(&name, image, spec, expect).await?;
        self.wait_applied(committed.index).await?;
        // The module may have been stored between the caller's look and this write.
        self.resolve_waiting().await;
        Ok(committed.value.0)
    }

    /// Deletes the service `name` waiting for its module.
    pub async fn delete_waiting(&self, name: &ServiceName) -> Result<WaitingRecord> {
        self.check_running()?;
        let committed = self.inner.store.delete_waiting(name, Expect::Any).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Deletes `waiting` unless it changed since it was read; a waiting service gone already
    /// is no error.
    pub(crate) async fn forget_waiting(&self, waiting: &WaitingRecord) -> Result<()> {
        let expect = Expect::Revision(waiting.change_index);
        match self.inner.store.delete_waiting(&waiting.name, expect).await {
            Ok(committed) => self.wait_applied(committed.index).await,
            Err(
                shoal_registry::Error::NotFound { .. } | shoal_registry::Error::Conflict { .. },
            ) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Makes every waiting service whose image now names a stored module a service. Failures
    /// are logged and the service keeps waiting: the next module stored tries again.
    pub(crate) async fn resolve_waiting(&self) {
        if let Err(error) = self.try_resolve_waiting().await {
            tracing::warn!(%error, "resolving services waiting for their module");
        }
    }

    async fn try_resolve_waiting(&self) -> Result<()> {
        let store = &self.inner.store;
        let waiting = store.waiting().await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let modules = store.modules().await?;
        for record in waiting {
            let Ok(image) = ImageRef::parse(&record.image) else {
                continue;
            };
            let Some(module) = shoal_registry::module_of_image(&modules, &image) else {
                continue;
            };
            let mut spec = record.spec.clone();
            spec.module = module.digest.clone();
            // Written only over this waiting service as it was read: a service written or a
            // waiting one changed meanwhile wins.
            let options = WriteOptions {
                unchanged_since: Some(record.change_index),
                admit_pending: true,
                ..WriteOptions::default()
            };
            match self.write_service(record.name.clone(), spec, options).await {
                Ok(_) => tracing::info!(
                    service = %record.name,
                    module = %module.digest,
                    "a service waiting for its module starts"
                ),
                Err(Error::Conflict(_)) => self.forget_waiting(&record).await?,
                Err(error) => tracing::warn!(
                    service = %record.name,
                    image = %record.image,
                    %error,
                    "a service waiting for its module cannot start"
                ),
            }
        }
        Ok(())
    }
}
