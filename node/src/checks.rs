//! The health-check runner: one task per registered check, probing at its interval (HTTP and
//! TCP) or waiting for its reports (TTL), writing state changes to the store, and
//! deregistering a service whose check stayed critical past `DeregisterCriticalServiceAfter`.
//!
//! The set of tasks follows the store: the reconcile loop calls [`CheckRunner::reconcile`]
//! with every new catalog snapshot, which starts tasks for new or changed checks and stops
//! those of removed ones. Tasks hold the node weakly and are aborted when the
//! runner drops, so a node that is gone leaves nothing probing.
//!
//! A TTL check's clock and its state are changed under one async lock, by a report
//! ([`Node::ttl_report`]) or by expiry, so the store always ends with the later of the two.
//! State is written only when it changes, so a steady heartbeat costs no write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_registry::{CatalogSnapshot, CheckDefinition, CheckRecord, CheckStatus, Probe};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{Node, WeakNode};

/// The most of an HTTP check's response body kept as its output, as in Consul.
const MAX_OUTPUT: usize = 4096;

/// Runs every check in the store.
#[derive(Default)]
pub(crate) struct CheckRunner {
    state: Mutex<RunnerState>,
}

#[derive(Default)]
struct RunnerState {
    /// The change index of the snapshot the tasks follow; older snapshots are ignored.
    reconciled: u64,
    running: HashMap<String, Running>,
}

struct Running {
    definition: CheckDefinition,
    ttl: Option<Arc<TtlClock>>,
    _task: AbortOnDrop,
}

/// A TTL check's deadline and last reported state.
pub(crate) struct TtlClock {
    ttl: Duration,
    state: tokio::sync::Mutex<TtlState>,
    reported: Notify,
}

pub(crate) struct TtlState {
    deadline: Instant,
    status: CheckStatus,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl CheckRunner {
    /// Brings the running tasks in line with `snapshot`, unless a newer one was applied.
    pub(crate) fn reconcile(&self, node: &Node, snapshot: &CatalogSnapshot) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot.indexes.change <= state.reconciled {
            return;
        }
        state.reconciled = snapshot.indexes.change;
        let mut running = std::mem::take(&mut state.running);
        // Each node runs the checks its agent API registered, as each Consul agent does.
        // Maintenance checks and those of catalog nodes are never probed: they hold the
        // state they were given.
        for check in snapshot.checks.iter().filter(|c| {
            node.owns(&c.definition.node)
                && !matches!(c.definition.probe, Probe::Maintenance | Probe::External)
        }) {
            let id = &check.definition.id;
            match running.remove(id) {
                Some(task) if task.definition == check.definition => {
                    state.running.insert(id.clone(), task);
                }
                _ => {
                    state.running.insert(id.clone(), start(node, check));
                }
            }
        }
        // What is left in `running` was removed; dropping it aborts its tasks.
    }

    /// Stops every check and waits until their tasks are gone, so nothing holds the node.
    pub(crate) async fn shutdown(&self) {
        let running = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // Nothing may start again: a later snapshot would otherwise restart the checks.
            state.reconciled = u64::MAX;
            std::mem::take(&mut state.running)
        };
        for (_, running) in running {
            let mut task = running._task;
            task.0.abort();
            let _ = (&mut task.0).await;
        }
    }

    /// The clock of a TTL check, or `None` for an unknown ID or another kind of check.
    pub(crate) fn ttl_clock(&self, id: &str) -> Option<Arc<TtlClock>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .running
            .get(id)
            .and_then(|running| running.ttl.clone())
    }
}

impl TtlClock {
    /// Records a report: the state holds for another TTL. Returns the guard under which the
    /// caller writes the state, so that an expiry cannot overtake the write.
    pub(crate) async fn report(
        &self,
        status: CheckStatus,
    ) -> tokio::sync::MutexGuard<'_, TtlState> {
        let mut state = self.state.lock().await;
        state.deadline = Instant::now() + self.ttl;
        state.status = status;
        self.reported.notify_one();
        state
    }
}

fn start(node: &Node, check: &CheckRecord) -> Running {
    let ttl = match check.definition.probe {
        Probe::Ttl { ttl } => Some(Arc::new(TtlClock {
            ttl,
            state: tokio::sync::Mutex::new(TtlState {
                deadline: Instant::now() + ttl,
                status: check.status,
            }),
            reported: Notify::new(),
        })),
        _ => None,
    };
    let deregister_after = check
        .definition
        .deregister_critical_after
        .map(|after| after.max(node.config().min_deregister_critical_after));
    let task = CheckTask {
        node: node.downgrade(),
        definition: check.definition.clone(),
        critical_since: (check.status == CheckStatus::Critical).then(Instant::now),
        deregister_after,
        http: node.inner.http.clone(),
    };
    let handle = tokio::spawn(task.run(ttl.clone()));
    Running {
        definition: check.definition.clone(),
        ttl,
        _task: AbortOnDrop(handle),
    }
}

struct CheckTask {
    node: WeakNode,
    definition: CheckDefinition,
    critical_since: Option<Instant>,
    deregister_after: Option<Duration>,
    http: reqwest::Client,
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl CheckTask {
    async fn run(mut self, ttl: Option<Arc<TtlClock>>) {
        let mut next_probe = Instant::now();
        loop {
            let reap_at = self
                .critical_since
                .zip(self.deregister_after)
                .map(|(since, after)| since + after);
            match (&self.definition.probe, &ttl) {
                (Probe::Ttl { .. }, Some(clock)) => {
                    let deadline = clock.state.lock().await.deadline;
                    tokio::select! {
                        () = clock.reported.notified() => {
                            let status = clock.state.lock().await.status;
                            self.observe(status);
                        }
                        () = tokio::time::sleep_until(deadline) => self.expire(clock).await,
                        () = sleep_until(reap_at) => return self.reap().await,
                    }
                }
                _ => {
                    tokio::select! {
                        () = tokio::time::sleep_until(next_probe) => {
                            let (status, output) = self.probe().await;
                            self.observe(status);
                            self.write(status, output).await;
                            next_probe = Instant::now() + self.interval();
                        }
                        () = sleep_until(reap_at) => return self.reap().await,
                    }
                }
            }
        }
    }

    fn interval(&self) -> Duration {
        match &self.definition.probe {
            Probe::Http { interval, .. } | Probe::Tcp { interval, .. } => *interval,
            Probe::Ttl { ttl } => *ttl,
            Probe::Maintenance | Probe::External => Duration::MAX,
        }
    }

    /// Tracks how long the check has been critical, for deregistration.
    fn observe(&mut self, status: CheckStatus) {
        if status == CheckStatus::Critical {
            self.critical_since.get_or_insert_with(Instant::now);
        } else {
            self.critical_since = None;
        }
    }

    /// The TTL ran out without a report: critical until the next one.
    async fn expire(&mut self, clock: &TtlClock) {
        let mut state = clock.state.lock().await;
        if state.deadline > Instant::now() {
            return; // reported meanwhile
        }
        // Nothing more to expire until a report sets a new deadline.
        state.deadline = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        state.status = CheckStatus::Critical;
        self.observe(CheckStatus::Critical);
        self.write(CheckStatus::Critical, "TTL expired".to_owned())
            .await;
        drop(state);
    }

    async fn write(&self, status: CheckStatus, output: String) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        if let Err(error) = node.set_check(&self.definition.id, status, output).await {
            tracing::warn!(check = %self.definition.id, %error, "cannot record a check's state");
        }
    }

    /// Deregisters the checked service: it stayed critical too long.
    async fn reap(&self) {
        let (Some(node), Some(service_id)) =
            (self.node.upgrade(), self.definition.service_id.clone())
        else {
            return;
        };
        tracing::info!(
            check = %self.definition.id,
            service = %service_id,
            after = ?self.deregister_after,
            "deregistering a service whose check stayed critical"
        );
        // Deregistering removes this check, which aborts this task: do it from another.
        tokio::spawn(async move {
            if let Err(error) = node.deregister_service(&service_id).await {
                tracing::warn!(%error, "cannot deregister a critical service");
            }
        });
    }

    async fn probe(&self) -> (CheckStatus, String) {
        match &self.definition.probe {
            Probe::Http {
                url,
                method,
                headers,
                body,
                timeout,
                ..
            } => probe_http(&self.http, url, method, headers, body, *timeout).await,
            Probe::Tcp {
                address, timeout, ..
            } => probe_tcp(address, *timeout).await,
            Probe::Ttl { .. } | Probe::Maintenance | Probe::External => {
                unreachable!("only HTTP and TCP checks are probed")
            }
        }
    }
}

/// An HTTP check: 2xx passes, 429 warns, anything else (or no answer) is critical.
async fn probe_http(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    headers: &std::collections::BTreeMap<String, Vec<String>>,
    body: &str,
    timeout: Duration,
) -> (CheckStatus, String) {
    let method_value =
        reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut request = client
        .request(method_value, url)
        .timeout(timeout)
        .body(body.to_owned());
    for (name, values) in headers {
        for value in values {
            request = request.header(name, value);
        }
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return (
                CheckStatus::Critical,
                format!("HTTP {method} {url}: {:#}", anyhow::Error::new(error)),
            );
        }
    };
    let status = response.status();
    let mut text = Vec::new();
    while text.len() < MAX_OUTPUT {
        match response.chunk().await {
            Ok(Some(chunk)) => text.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => {
                return (
                    CheckStatus::Critical,
                    format!(
                        "HTTP {method} {url}: {status}, then {:#}",
                        anyhow::Error::new(error)
                    ),
                );
            }
        }
    }
    text.truncate(MAX_OUTPUT);
    let check_status = if status.is_success() {
        CheckStatus::Passing
    } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        CheckStatus::Warning
    } else {
        CheckStatus::Critical
    };
    (
        check_status,
        format!(
            "HTTP {method} {url}: {status} Output: {}",
            String::from_utf8_lossy(&text)
        ),
    )
}

/// A TCP check: connecting within the timeout passes.
async fn probe_tcp(address: &str, timeout: Duration) -> (CheckStatus, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => (
            CheckStatus::Passing,
            format!("TCP connect {address}: Success"),
        ),
        Ok(Err(error)) => (
            CheckStatus::Critical,
            format!("dial tcp {address}: {error}"),
        ),
        Err(_) => (
            CheckStatus::Critical,
            format!("dial tcp {address}: i/o timeout after {timeout:?}"),
        ),
    }
}
