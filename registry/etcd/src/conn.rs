//! The connection to the etcd cluster: one client per member, one of them in use, and a move
//! to the next member when the one in use cannot be reached.
//!
//! `etcd-client`'s own client balances every request across all its endpoints and keeps
//! picking a member that is down: with one of three members killed, a quarter to a third of
//! requests failed for as long as it stayed down (measured; etcd-client issue 39). Go's
//! clientv3 pins one endpoint and switches on failure; so does this.
//!
//! A read is retried on the next member whatever went wrong with the transport. A write is
//! retried here only when it certainly never reached a member (the connection was refused, or
//! the member answered that it has no leader, which it says before proposing anything):
//! retrying a write that may have committed could apply it twice, or report a committed
//! compare-and-set as failed. Anything else is [`Error::Unavailable`]; the store then finds out
//! from etcd whether the write committed (`EtcdStore::commit`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, KvClient, WatchClient};
use shoal_registry::{Error, Result};
use tonic::Code;
use tonic::transport::Endpoint;

/// How long one request may take before it fails as unavailable.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to one member may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// A read: always.
    Read,
    /// A write: only if it never reached a member.
    Write,
}

pub(crate) struct Connection {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    /// The member in use, an index into `clients`.
    current: AtomicUsize,
}

impl Connection {
    /// Clients for every member of `endpoints` (`host:port` or URLs). Nothing is sent yet: a
    /// member that is down is found out at the first request.
    pub(crate) async fn new(endpoints: &[String]) -> Result<Connection> {
        if endpoints.is_empty() {
            return Err(Error::Unavailable("no etcd endpoints given".into()));
        }
        // A member cut off from the others answers with an error rather than with its stale
        // state, and ends its watches: the next member may have a leader.
        let options = ConnectOptions::new().with_require_leader(true);
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let url = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            let bad_endpoint = |error: &dyn std::fmt::Display| {
                Error::Unavailable(format!("etcd endpoint {endpoint:?}: {error}"))
            };
            // A plain channel, not etcd-client's balanced one: a request to a member that is
            // down fails at once with a connect error, where the balancer waits for a member
            // to become ready until the request times out.
            let channel = Endpoint::from_shared(url)
                .map_err(|error| bad_endpoint(&error))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                // etcd refuses pings more often than every 5 s (`--grpc-keepalive-min-time`).
                .http2_keep_alive_interval(Duration::from_secs(6))
                .keep_alive_timeout(Duration::from_secs(3))
                .connect_lazy();
            let client =
                Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options.clone()))
                    .await
                    .map_err(|error| bad_endpoint(&error))?;
            clients.push(client);
        }
        Ok(Connection {
            endpoints: endpoints.to_vec(),
            clients,
            current: AtomicUsize::new(0),
        })
    }

    /// Runs `call` on a key/value client of the member in use, moving on to the next member
    /// when the error allows a retry, once around the cluster.
    pub(crate) async fn kv<T, F, Fut>(&self, retry: Retry, call: F) -> Result<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(retry, |client| call(client.kv_client())).await
    }

    /// Runs `call` on the client of the member in use, moving on to the next member when the
    /// error allows a retry, once around the cluster.
    pub(crate) async fn call<T, F, Fut>(&self, retry: Retry, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.clients.len() {
            let member = self.current.load(Ordering::Relaxed);
            match call(self.clients[member].clone()).await {
                Ok(value) => return Ok(value),
                Err(error) if may_retry(&error, retry) => {
                    tracing::debug!(endpoint = %self.endpoints[member], %error, "etcd member unreachable, trying the next");
                    self.move_on_from(member);
                    last = Some((member, error));
                }
                Err(error) => {
                    // A write that may have reached the member is not sent again here (the
                    // store finds out whether it committed), but the next call goes elsewhere.
                    if may_retry(&error, Retry::Read) {
                        self.move_on_from(member);
                    }
                    return Err(unavailable(&self.endpoints[member], &error));
                }
            }
        }
        let (member, error) = last.expect("at least one member was tried");
        Err(unavailable(&self.endpoints[member], &error))
    }

    /// The client of the member in use, and which member that is: for streams, which the
    /// caller resumes elsewhere itself.
    pub(crate) fn client(&self) -> (usize, Client) {
        let member = self.current.load(Ordering::Relaxed);
        (member, self.clients[member].clone())
    }

    /// A watch client of the member in use, and which member that is.
    pub(crate) fn watch_client(&self) -> (usize, WatchClient) {
        let member = self.current.load(Ordering::Relaxed);
        (member, self.clients[member].watch_client())
    }

    /// Moves off `member` (if it is still the one in use), after a failure on it.
    pub(crate) fn move_on_from(&self, member: usize) {
        let next = (member + 1) % self.clients.len();
        let _ = self
            .current
            .compare_exchange(member, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The endpoint of `member`, for messages.
    pub(crate) fn endpoint(&self, member: usize) -> &str {
        &self.endpoints[member]
    }
}

/// Whether `error` allows sending the request again, to another member.
fn may_retry(error: &etcd_client::Error, retry: Retry) -> bool {
    let status = match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            return retry == Retry::Read || never_sent(error);
        }
        etcd_client::Error::GRpcStatus(status) => status,
        _ => return false,
    };
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            retry == Retry::Read || never_sent(error) || status.message().contains("no leader")
        }
        _ => false,
    }
}

/// Whether the error says the request could not have reached a member: its connection was
/// never made.
fn never_sent(error: &etcd_client::Error) -> bool {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    [
        "tcp connect error",
        "Connection refused",
        "error trying to connect",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// The store's error for a failure of `endpoint`.
pub(crate) fn unavailable(endpoint: &str, error: &etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd at {endpoint}: {error}"))
}
