//! The writer of scale events: replica pools report their scale decisions through a channel,
//! and one task writes them to the store in order, off the request path.
//!
//! It holds the node weakly: a node that is gone must let go of its store at once, so that
//! the next node can open it.

use shoal_runtime::ScaleEvent;
use shoal_spec::ServiceName;

use crate::{Error, WeakNode, convert};

/// Writes every event `receiver` gets until the node is gone.
pub(crate) async fn record(
    node: WeakNode,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<(ServiceName, ScaleEvent)>,
) {
    while let Some((name, event)) = receiver.recv().await {
        let Some(node) = node.upgrade() else {
            return;
        };
        let reason = convert::scale_reason(&event.reason);
        let result = node
            .inner
            .store
            .record_event(&name, event.from, event.to, reason)
            .await
            .map_err(Error::from);
        match result {
            Ok(_) => {}
            // The service was deleted after the event: it has no history to add to.
            Err(Error::NotFound { .. }) => {}
            Err(Error::ShuttingDown) => return,
            Err(error) => tracing::warn!(service = %name, %error, "cannot record a scale event"),
        }
    }
}
