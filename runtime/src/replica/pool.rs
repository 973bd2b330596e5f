//! Replica pools: a service's units of capacity, the queue in front of them, and the
//! loop that scales them.
//!
//! A replica reserves its service's resource requests from the node's [`Capacity`]
//! and serves up to `concurrency` requests at once. A request goes to the least
//! loaded replica with room; when none has room the pool starts a replica if the
//! service may grow and the node has capacity, otherwise the request waits in a
//! bounded queue, and a full queue or a wait past the queue timeout is refused with
//! a clear error. Nothing is dropped silently and nothing waits forever.
//!
//! In `reuse` isolation a replica keeps its instances between requests, like a
//! container process; an instance that faulted is dropped, never reused, and one that
//! served `max_requests` is recycled. In `per-request` isolation every request gets a
//! fresh instance.
//!
//! A tick task per pool samples demand and applies the [`Autoscaler`]'s decisions;
//! scale changes are reported through the pool's [`EventSink`], coalesced per tick.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::autoscale::{Autoscaler, Decision, ScaleSettings};
use super::capacity::{Capacity, ReplicaResources, Reservation, Shortfall};
use super::lease::{Grant, Lease};
use crate::cpu::{CpuScheduler, CpuShare, CpuUsage, DEFAULT_WEIGHT_MILLIS, GuestCpu};
use crate::exec::HttpInstance;
use crate::exec::RequestContext;
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::sandbox::{BoxError, CpuThrottle, ResponseBody};
use crate::service::Service;
use crate::{Error, GuestKind, Result};

/// What each replica of a service is.
#[derive(Debug, Clone, Default)]
pub struct ReplicaSpec {
    /// Whether a replica keeps its instance across requests, like a container process
    /// (wasi:http components only), rather than running each request in a fresh one.
    pub reuse_instances: bool,
    /// Requests a kept instance serves before it is recycled.
    pub max_requests: u64,
    /// What a replica reserves from the node.
    pub requests: ReplicaResources,
    /// The CPU cap of a replica, in millicores, enforced through fuel.
    pub cpu_limit_millis: Option<u64>,
}

/// A change in a service's replica count, or a refusal to change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleEvent {
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
    /// Why.
    pub reason: ScaleReason,
}

/// Why a service's replica count changed, or did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleReason {
    /// Started to reach the minimum.
    MinReplicas,
    /// A request found no replica and started the first.
    ColdStart,
    /// Demand over the stable window.
    Load,
    /// A burst over the panic window.
    Burst,
    /// Demand fell.
    LoadFell,
    /// Idle past the idle timeout, down to zero.
    Idle,
    /// The service was replaced or deleted.
    Retired,
    /// A replica was wanted but does not fit in the node.
    AtCapacity(Shortfall),
}

/// Where a pool reports its scale events.
pub type EventSink = Arc<dyn Fn(ScaleEvent) + Send + Sync>;

/// A request counted as waiting for a pool's service ([`ReplicaPool::hold_demand`]).
pub struct HeldDemand(Arc<ReplicaPool>);

impl Drop for HeldDemand {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.held = state.held.saturating_sub(1);
    }
}

/// How full a pool is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Replicas serving or ready to serve.
    pub replicas: u32,
    /// Requests being served.
    pub in_flight: u32,
    /// Requests waiting for a replica.
    pub queued: u32,
}

/// The numbers a pool acts on, for the status API.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    /// Replicas serving or ready to serve.
    pub replicas: u32,
    /// Replicas the autoscaler wants.
    pub desired: u32,
    /// Replicas with a request in flight.
    pub busy: u32,
    /// Replicas with nothing in flight.
    pub idle: u32,
    /// Requests being served.
    pub in_flight: u32,
    /// Requests waiting for a replica.
    pub queued: u32,
    /// The autoscaler's view of demand, averaged over the stable window.
    pub stable_demand: f64,
    /// ...and over the panic window.
    pub panic_demand: f64,
    /// Whether a burst put the autoscaler in panic mode.
    pub panicking: bool,
    /// Requests answered since the pool started.
    pub requests: u64,
    /// Requests that found no replica and started the first one.
    pub cold_starts: u64,
    /// Requests refused because the queue was full or the wait too long.
    pub rejected: u64,
    /// Requests completed per second over the last ten seconds.
    pub request_rate: f64,
    /// Median latency over the last minute, queueing included.
    pub latency_p50: Option<Duration>,
    /// 99th percentile latency over the last minute.
    pub latency_p99: Option<Duration>,
    /// What the replicas reserve from the node.
    pub reserved: ReplicaResources,
    /// The CPU time its guests used, in all and recently.
    pub cpu: CpuUsage,
    /// Its weight in the CPU scheduler, in millicores.
    pub cpu_weight_millis: u64,
    /// The settings in force.
    pub settings: ScaleSettings,
    /// Each replica, oldest first.
    pub members: Vec<ReplicaState>,
    /// What it measured since it started.
    pub metrics: PoolMetrics,
}

/// What a pool measured since it started, as Prometheus scrapes it.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// From a request's arrival at the gateway to its response, queueing included.
    pub request_seconds: HistogramSnapshot,
    /// Waiting for a replica.
    pub queue_seconds: HistogramSnapshot,
    /// From a replica's grant to the guest's end, streaming included.
    pub guest_seconds: HistogramSnapshot,
    /// Answered requests: `(outcome, status class, count)`, the outcome `ok` or the error's
    /// [kind](Error::kind), the class 2 for 2xx.
    pub outcomes: Vec<(&'static str, u16, u64)>,
    /// Scale events reported.
    pub scale_events: u64,
    /// Fuel its guests burnt.
    pub fuel: u64,
}

/// One replica of a pool, as the status API shows it.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    /// Its number in the pool: 1 for the first replica the pool started, never reused.
    pub id: u64,
    /// When it started.
    pub started: std::time::SystemTime,
    /// Requests it is serving.
    pub in_flight: u32,
    /// Requests whose guest faulted on it (trapped, ran out of fuel or time, hit its memory
    /// limit): its instance died as a crashed container does.
    pub restarts: u32,
    /// The newest such fault.
    pub last_fault: Option<Fault>,
}

/// A guest fault on a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What kind.
    pub reason: FaultReason,
    /// The error, in words.
    pub message: String,
    /// When.
    pub at: std::time::SystemTime,
}

/// What kind of fault: Kubernetes tells a memory-limit kill (`OOMKilled`) from the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultReason {
    /// The guest hit its memory limit.
    MemoryLimit,
    /// It trapped, ran out of fuel or time, or exited with an error.
    Error,
}

/// A service's replicas, queue and autoscaler.
pub struct ReplicaPool {
    service: Service,
    replica: ReplicaSpec,
    capacity: Arc<Capacity>,
    scheduler: Arc<CpuScheduler>,
    /// The service's share of the node's CPU, weighted by what its replicas request.
    share: Arc<CpuShare>,
    events: EventSink,
    state: Mutex<State>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Replica {
    id: u64,
    /// When it started, on the wall clock (what the Kubernetes API shows as a pod's start).
    started: std::time::SystemTime,
    /// Guest faults in its requests, which the Kubernetes API counts as restarts.
    restarts: u32,
    last_fault: Option<Fault>,
    in_flight: u32,
    idle_instances: Vec<HttpInstance>,
    throttle: Option<Arc<CpuThrottle>>,
    _reservation: Reservation,
}

struct State {
    settings: ScaleSettings,
    retired: bool,
    replicas: Vec<Replica>,
    next_replica_id: u64,
    queue: VecDeque<oneshot::Sender<Grant>>,
    /// Requests waiting for a replica of this service anywhere, outside the queue: in a
    /// cluster, where no node has one yet (see [`ReplicaPool::hold_demand`]).
    held: u32,
    /// Demand (in flight plus queued) integrated over time since the last sample.
    demand_area: f64,
    demand_since: Instant,
    last_sample: Instant,
    last_activity: Instant,
    autoscaler: Autoscaler,
    decision: Decision,
    /// Replica count last reported as an event, and why it changed since.
    reported: u32,
    change_reason: Option<ScaleReason>,
    at_capacity: Option<Shortfall>,
    at_capacity_reported: bool,
    requests: u64,
    cold_starts: u64,
    rejected: u64,
    /// Scale events reported.
    scale_events: u64,
    /// From a request's arrival at the gateway to its response (queueing included).
    request_seconds: Histogram,
    /// Waiting for a replica.
    queue_seconds: Histogram,
    /// From a replica's grant to the guest's end (streaming included).
    guest_seconds: Histogram,
    /// Answered requests by outcome (`ok` or the error's kind) and status class.
    outcomes: BTreeMap<(&'static str, u16), u64>,
}

/// The CPU weight of one replica: its cpu request in millicores, or the default for a
/// service that requests none.
fn replica_weight(replica: &ReplicaSpec) -> u64 {
    match replica.requests.cpu_millis {
        0 => DEFAULT_WEIGHT_MILLIS,
        millis => millis,
    }
}

/// The window of the latency percentiles in the status.
const LATENCY_WINDOW: Duration = Duration::from_secs(60);
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl State {
    fn in_flight(&self) -> u32 {
        self.replicas.iter().map(|r| r.in_flight).sum()
    }

    /// Brings the demand integral up to `now`; call before changing in-flight or queue.
    fn account(&mut self, now: Instant) {
        let demand = f64::from(self.in_flight()) + self.queue.len() as f64;
        self.demand_area += demand
            * now
                .saturating_duration_since(self.demand_since)
                .as_secs_f64();
        self.demand_since = now;
    }

    fn note_change(&mut self, reason: ScaleReason) {
        if self.change_reason.is_none() {
            self.change_reason = Some(reason);
        }
    }
}

/// What a pool did with a request, besides answering it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    /// The request found no replica and started the first.
    pub cold_start: bool,
    /// How long it waited in the queue.
    pub queued: Duration,
}

impl ReplicaPool {
    /// A pool for `service`, starting its minimum replicas (as many as fit; the tick
    /// retries the rest) and its tick task. Must be called inside a tokio runtime.
    pub fn new(
        service: Service,
        replica: ReplicaSpec,
        settings: ScaleSettings,
        capacity: Arc<Capacity>,
        scheduler: Arc<CpuScheduler>,
        events: EventSink,
    ) -> Arc<ReplicaPool> {
        let now = Instant::now();
        // A CGI command runs to completion per request: there is no instance to keep.
        let replica = ReplicaSpec {
            reuse_instances: replica.reuse_instances && service.kind() == GuestKind::Http,
            ..replica
        };
        let tick = settings.tick();
        let share = CpuShare::new(replica_weight(&replica));
        let pool = Arc::new(ReplicaPool {
            service,
            replica,
            capacity,
            scheduler,
            share,
            events,
            state: Mutex::new(State {
                decision: Decision {
                    desired: settings.min,
                    stable_demand: 0.0,
                    panic_demand: 0.0,
                    panicking: false,
                },
                settings,
                retired: false,
                replicas: Vec::new(),
                next_replica_id: 0,
                queue: VecDeque::new(),
                held: 0,
                demand_area: 0.0,
                demand_since: now,
                last_sample: now,
                last_activity: now,
                autoscaler: Autoscaler::default(),
                reported: 0,
                change_reason: None,
                at_capacity: None,
                at_capacity_reported: false,
                requests: 0,
                cold_starts: 0,
                rejected: 0,
                scale_events: 0,
                request_seconds: Histogram::new(now),
                queue_seconds: Histogram::new(now),
                guest_seconds: Histogram::new(now),
                outcomes: BTreeMap::new(),
            }),
            ticker: Mutex::new(None),
        });
        {
            let mut state = pool.lock();
            let min = state.settings.min;
            pool.grow(&mut state, min, ScaleReason::MinReplicas);
        }
        pool.flush_events();
        let weak = Arc::downgrade(&pool);
        let handle = tokio::spawn(tick_loop(weak, tick));
        *pool.ticker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        pool
    }

    /// The service the pool runs.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// What each replica is.
    pub fn replica_spec(&self) -> &ReplicaSpec {
        &self.replica
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new execution's view of the node's CPU: the scheduler and this service's share.
    pub(crate) fn guest_cpu(&self) -> Arc<GuestCpu> {
        GuestCpu::new(self.scheduler.clone(), self.share.clone())
    }

    /// The service's share of the node's CPU.
    pub fn cpu_share(&self) -> &Arc<CpuShare> {
        &self.share
    }

    /// Sets the share's weight to what `n_replicas` request, as CFS weighs a cgroup by its
    /// shares: a service gets at least the CPU its replicas reserve.
    fn reweigh(&self, n_replicas: usize) {
        let weight = replica_weight(&self.replica).saturating_mul(n_replicas.max(1) as u64);
        self.share.set_weight(weight);
    }

    /// Replicas running, without the rest of [`ReplicaPool::status`].
    pub fn replicas(&self) -> u32 {
        self.lock().replicas.len() as u32
    }

    /// Replicas, requests in flight and requests waiting, without the rest of
    /// [`ReplicaPool::status`]: what a node reports to the others of a cluster every second.
    pub fn occupancy(&self) -> Occupancy {
        let state = self.lock();
        Occupancy {
            replicas: state.replicas.len() as u32,
            in_flight: state.in_flight(),
            queued: state.queue.len() as u32 + state.held,
        }
    }

    /// Counts a request as waiting for this service until the guard drops, without queueing
    /// it here: in a cluster, a request no node can serve yet waits for the routes to change
    /// (a replica placed here or on a peer), and what this node reports as waiting is how the
    /// leader learns that a replica is wanted, and where.
    pub fn hold_demand(self: &Arc<Self>) -> HeldDemand {
        self.lock().held += 1;
        HeldDemand(self.clone())
    }

    /// How long a request may wait for a replica.
    pub fn queue_timeout(&self) -> Duration {
        self.lock().settings.queue_timeout
    }

    /// The most replicas the pool may run now.
    pub fn max_replicas(&self) -> u32 {
        self.lock().settings.max
    }

    /// What the replicas hold of the node's capacity.
    pub fn reserved(&self) -> ReplicaResources {
        let state = self.lock();
        self.replica.requests.times(state.replicas.len() as u64)
    }

    /// Replaces the scale settings in place: replicas and their instances are kept,
    /// and the new bounds apply at once.
    pub fn retune(&self, settings: ScaleSettings) {
        {
            let mut state = self.lock();
            let min = settings.min;
            state.decision.desired = state
                .decision
                .desired
                .clamp(settings.min, settings.max.max(settings.min));
            state.settings = settings;
            if state.replicas.len() < min as usize {
                self.grow(&mut state, min, ScaleReason::MinReplicas);
            }
            // Requests may be waiting for the replicas these bounds allow.
            self.serve_queue(&mut state);
        }
        self.flush_events();
    }

    /// Whether a request arriving now would be served without waiting: a replica has a free
    /// slot, or another may start. (Capacity may still refuse a new one.)
    pub fn has_room(&self) -> bool {
        let state = self.lock();
        let concurrency = state.settings.concurrency;
        state.queue.is_empty()
            && (state.replicas.len() < state.settings.max as usize
                || state
                    .replicas
                    .iter()
                    .any(|replica| replica.in_flight < concurrency))
    }

    /// Stops taking part: the pool serves what it has queued, then scales to zero and
    /// gives its capacity back. Idle replicas go at once.
    pub fn retire(&self) {
        let mut state = self.lock();
        state.retired = true;
        state.settings.min = 0;
        let before = state.replicas.len();
        state.replicas.retain(|replica| replica.in_flight > 0);
        self.reweigh(state.replicas.len());
        if state.replicas.len() != before {
            state.note_change(ScaleReason::Retired);
        }
    }

    /// Serves one request: waits for a replica (or starts one), runs the guest.
    pub async fn handle<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
        context: RequestContext,
    ) -> Result<(http::Response<ResponseBody>, Served)>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let arrived = Instant::now();
        let (lease, cold_start) = self.acquire(arrived).await?;
        let served = Served {
            cold_start,
            queued: arrived.elapsed(),
        };
        let replica_id = lease.replica_id();
        let response = self
            .service
            .handle_checked_out(request, context, lease)
            .await;
        if let Err(error) = &response {
            self.note_fault(replica_id, error);
        }
        Ok((response?, served))
    }

    /// Counts a request the gateway answered: its outcome (`ok`, or the error's kind), its
    /// status, how long it took from its arrival, and how long it waited for a replica.
    pub fn record_request(
        &self,
        outcome: &'static str,
        status: u16,
        elapsed: Duration,
        queued: Option<Duration>,
    ) {
        let now = Instant::now();
        let mut state = self.lock();
        state.request_seconds.observe(elapsed, now);
        if let Some(queued) = queued {
            state.queue_seconds.observe(queued, now);
        }
        *state.outcomes.entry((outcome, status / 100)).or_default() += 1;
    }

    async fn acquire(self: &Arc<Self>, arrived: Instant) -> Result<(Lease, bool)> {
        let waiter = {
            let mut state = self.lock();
            state.account(arrived);
            state.last_activity = arrived;
            if let Some(grant) = self.take_free(&mut state) {
                return Ok((self.lease(grant), false));
            }
            // A retired pool still serves what reaches it (requests that looked up the
            // route just before it was replaced), so it may grow too.
            let can_grow = state.replicas.len() < state.settings.max as usize;
            if can_grow {
                let from = state.replicas.len();
                let reason = if from == 0 {
                    ScaleReason::ColdStart
                } else {
                    ScaleReason::Load
                };
                if self.grow(&mut state, from as u32 + 1, reason) {
                    if from == 0 {
                        state.cold_starts += 1;
                    }
                    let grant = self
                        .take_free(&mut state)
                        .expect("the replica just started has room");
                    return Ok((self.lease(grant), from == 0));
                }
            }
            if state.queue.len() >= state.settings.queue_limit as usize {
                state.rejected += 1;
                return Err(Error::Overloaded(format!(
                    "all {} replicas are busy and the queue is full ({} waiting)",
                    state.replicas.len(),
                    state.queue.len()
                )));
            }
            let (sender, receiver) = oneshot::channel();
            state.queue.push_back(sender);
            (receiver, state.settings.queue_timeout)
        };
        let (mut receiver, queue_timeout) = waiter;
        let grant = match tokio::time::timeout(queue_timeout, &mut receiver).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(_)) => {
                return Err(Error::Overloaded(
                    "the service was removed while the request waited".into(),
                ));
            }
            Err(_) => {
                // A grant may have been sent just as the wait ended: take it rather
                // than leak the replica slot it holds.
                receiver.close();
                match receiver.try_recv() {
                    Ok(grant) => grant,
                    Err(_) => {
                        let mut state = self.lock();
                        state.account(Instant::now());
                        state.queue.retain(|sender| !sender.is_closed());
                        state.rejected += 1;
                        return Err(Error::Overloaded(format!(
                            "no replica became free within the queue timeout of {}",
                            humantime::format_duration(queue_timeout)
                        )));
                    }
                }
            }
        };
        Ok((self.lease(grant), false))
    }

    /// Lends `grant` to a request; its guest's time counts from now.
    fn lease(self: &Arc<Self>, grant: Grant) -> Lease {
        Lease::new(self.clone(), grant, Instant::now())
    }

    /// Counts a guest fault against the replica it ran on, as a restart of its container: the
    /// instance it ran in is gone, as a crashed container is.
    fn note_fault(&self, replica_id: u64, error: &Error) {
        let reason = match error {
            Error::MemoryLimit { .. } => FaultReason::MemoryLimit,
            Error::Trap(_) | Error::OutOfFuel { .. } | Error::Timeout { .. } | Error::Exit(_) => {
                FaultReason::Error
            }
            _ => return,
        };
        let mut state = self.lock();
        if let Some(replica) = state.replicas.iter_mut().find(|r| r.id == replica_id) {
            replica.restarts += 1;
            replica.last_fault = Some(Fault {
                reason,
                message: error.to_string(),
                at: std::time::SystemTime::now(),
            });
        }
    }

    /// Takes a slot on the least loaded replica with room.
    fn take_free(&self, state: &mut State) -> Option<Grant> {
        let concurrency = state.settings.concurrency;
        let replica = state
            .replicas
            .iter_mut()
            .filter(|replica| replica.in_flight < concurrency)
            .min_by_key(|replica| replica.in_flight)?;
        replica.in_flight += 1;
        Some(Grant {
            replica_id: replica.id,
            instance: replica.idle_instances.pop(),
            throttle: replica.throttle.clone(),
        })
    }

    /// Starts replicas until there are `target`, as capacity allows; returns whether
    /// the target was reached.
    fn grow(&self, state: &mut State, target: u32, reason: ScaleReason) -> bool {
        while state.replicas.len() < target as usize {
            match self.capacity.reserve(self.replica.requests) {
                Ok(reservation) => {
                    state.next_replica_id += 1;
                    state.replicas.push(Replica {
                        id: state.next_replica_id,
                        started: std::time::SystemTime::now(),
                        restarts: 0,
                        last_fault: None,
                        in_flight: 0,
                        idle_instances: Vec::new(),
                        throttle: self
                            .replica
                            .cpu_limit_millis
                            .map(|millis| Arc::new(CpuThrottle::new(millis))),
                        _reservation: reservation,
                    });
                    self.reweigh(state.replicas.len());
                    state.note_change(reason);
                    state.at_capacity = None;
                    state.at_capacity_reported = false;
                }
                Err(shortfall) => {
                    if state.at_capacity.is_none() {
                        tracing::warn!(
                            service = %self.service.name(),
                            memory = shortfall.asked.memory,
                            cpu_millis = shortfall.asked.cpu_millis,
                            free_memory = shortfall.free.memory,
                            free_cpu_millis = shortfall.free.cpu_millis,
                            "at capacity: a replica does not fit"
                        );
                        state.at_capacity = Some(shortfall);
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Gives a request's slot back: to the longest waiter if there is one, else to the
    /// replica, with the instance it kept.
    pub(super) fn release(
        &self,
        replica_id: u64,
        instance: Option<HttpInstance>,
        started: Instant,
    ) {
        let now = Instant::now();
        let mut state = self.lock();
        state.account(now);
        state.last_activity = now;
        state.requests += 1;
        state
            .guest_seconds
            .observe(now.duration_since(started), now);
        let Some(idx) = state.replicas.iter().position(|r| r.id == replica_id) else {
            return; // the replica was removed while retired; its instance goes with it
        };
        // Hand the slot straight to the longest waiter, if one is still waiting.
        let mut instance = instance;
        while let Some(waiter) = state.queue.pop_front() {
            let grant = Grant {
                replica_id,
                instance: instance.take(),
                throttle: state.replicas[idx].throttle.clone(),
            };
            match waiter.send(grant) {
                Ok(()) => return,
                Err(returned) => instance = returned.instance,
            }
        }
        let replica = &mut state.replicas[idx];
        replica.in_flight -= 1;
        if let Some(instance) = instance {
            replica.idle_instances.push(instance);
        }
        if state.retired && state.replicas[idx].in_flight == 0 {
            state.replicas.remove(idx);
            self.reweigh(state.replicas.len());
            state.note_change(ScaleReason::Retired);
        }
    }

    /// One autoscaler tick: sample demand, decide, grow or shrink.
    fn tick(&self) {
        let now = Instant::now();
        self.share.sample(now.into_std());
        {
            let mut state = self.lock();
            state.account(now);
            let span = now
                .saturating_duration_since(state.last_sample)
                .as_secs_f64();
            let demand = if span > 0.0 {
                state.demand_area / span
            } else {
                0.0
            };
            state.demand_area = 0.0;
            state.last_sample = now;
            state.autoscaler.observe(now, demand);
            let current = state.replicas.len() as u32;
            let idle_for = if state.in_flight() == 0 && state.queue.is_empty() {
                now.saturating_duration_since(state.last_activity)
            } else {
                Duration::ZERO
            };
            let settings = state.settings.clone();
            let decision = state.autoscaler.decide(now, &settings, current, idle_for);
            state.decision = decision;
            if decision.desired > current && !state.retired {
                self.grow(
                    &mut state,
                    decision.desired,
                    if decision.panicking {
                        ScaleReason::Burst
                    } else {
                        ScaleReason::Load
                    },
                );
            } else if decision.desired < current {
                let reason = if decision.desired == 0 {
                    ScaleReason::Idle
                } else {
                    ScaleReason::LoadFell
                };
                let mut excess = (current - decision.desired) as usize;
                // Remove idle replicas only, newest first; busy ones wait for a later tick.
                let mut idx = state.replicas.len();
                while excess > 0 && idx > 0 {
                    idx -= 1;
                    if state.replicas[idx].in_flight == 0 {
                        state.replicas.remove(idx);
                        self.reweigh(state.replicas.len());
                        excess -= 1;
                        state.note_change(reason);
                    }
                }
            }
            // Requests may be waiting behind capacity freed elsewhere: serve them.
            self.serve_queue(&mut state);
        }
        self.flush_events();
    }

    /// Hands waiting requests the free slots there are, starting replicas as the bounds and
    /// capacity allow.
    fn serve_queue(&self, state: &mut State) {
        while !state.queue.is_empty() {
            let Some(grant) = self.take_free(state).or_else(|| {
                let n = state.replicas.len() as u32;
                (!state.retired
                    && n < state.settings.max
                    && self.grow(state, n + 1, ScaleReason::Load))
                .then(|| self.take_free(state))
                .flatten()
            }) else {
                break;
            };
            let waiter = state.queue.pop_front().expect("the queue is not empty");
            if let Err(grant) = waiter.send(grant) {
                // The waiter gave up; give the slot back.
                if let Some(replica) = state.replicas.iter_mut().find(|r| r.id == grant.replica_id)
                {
                    replica.in_flight -= 1;
                    replica.idle_instances.extend(grant.instance);
                }
            }
        }
    }

    /// Reports the replica count as one event if it changed since the last report, and
    /// a stop at capacity once per episode.
    fn flush_events(&self) {
        let mut events = Vec::new();
        {
            let mut state = self.lock();
            let current = state.replicas.len() as u32;
            if current != state.reported {
                let reason = state.change_reason.take().unwrap_or(ScaleReason::Load);
                events.push(ScaleEvent {
                    from: state.reported,
                    to: current,
                    reason,
                });
                state.reported = current;
            }
            state.change_reason = None;
            if let Some(shortfall) = state.at_capacity
                && !state.at_capacity_reported
            {
                events.push(ScaleEvent {
                    from: current,
                    to: current,
                    reason: ScaleReason::AtCapacity(shortfall),
                });
                state.at_capacity_reported = true;
            }
        }
        self.lock().scale_events += events.len() as u64;
        for event in events {
            tracing::info!(service = %self.service.name(), from = event.from, to = event.to, reason = ?event.reason, "scaled");
            (self.events)(event);
        }
    }

    /// The numbers the pool acts on.
    pub fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let state = self.lock();
        let busy = state.replicas.iter().filter(|r| r.in_flight > 0).count() as u32;
        let latency = state.request_seconds.recent(LATENCY_WINDOW, now);
        let recent = state.request_seconds.recent(RATE_WINDOW, now).count;
        PoolStatus {
            replicas: state.replicas.len() as u32,
            desired: state.decision.desired,
            busy,
            idle: state.replicas.len() as u32 - busy,
            in_flight: state.in_flight(),
            queued: state.queue.len() as u32,
            stable_demand: state.decision.stable_demand,
            panic_demand: state.decision.panic_demand,
            panicking: state.decision.panicking,
            requests: state.requests,
            cold_starts: state.cold_starts,
            rejected: state.rejected,
            request_rate: recent as f64 / RATE_WINDOW.as_secs_f64(),
            latency_p50: latency.p50,
            latency_p99: latency.p99,
            reserved: self.replica.requests.times(state.replicas.len() as u64),
            cpu: self.share.usage(now.into_std()),
            cpu_weight_millis: self.share.weight(),
            settings: state.settings.clone(),
            metrics: PoolMetrics {
                request_seconds: state.request_seconds.snapshot(),
                queue_seconds: state.queue_seconds.snapshot(),
                guest_seconds: state.guest_seconds.snapshot(),
                outcomes: state
                    .outcomes
                    .iter()
                    .map(|((outcome, class), count)| (*outcome, *class, *count))
                    .collect(),
                scale_events: state.scale_events,
                fuel: self.share.fuel(),
            },
            members: state
                .replicas
                .iter()
                .map(|replica| ReplicaState {
                    id: replica.id,
                    started: replica.started,
                    in_flight: replica.in_flight,
                    restarts: replica.restarts,
                    last_fault: replica.last_fault.clone(),
                })
                .collect(),
        }
    }
}

impl Drop for ReplicaPool {
    fn drop(&mut self) {
        if let Some(handle) = self
            .ticker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            handle.abort();
        }
    }
}

async fn tick_loop(pool: Weak<ReplicaPool>, mut tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.tick();
        tick = pool.lock().settings.tick();
        let retired_and_empty = {
            let state = pool.lock();
            state.retired && state.replicas.is_empty() && state.queue.is_empty()
        };
        if retired_and_empty {
            return;
        }
    }
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    //! The pool's logic under tokio's paused clock: waits, timeouts and scaling happen in
    //! virtual time, so these tests neither sleep nor depend on the machine's speed.

    use super::*;
    use crate::{Runtime, RuntimeConfig, ServiceConfig};

    /// A pool of a command that is never run: these tests take and give back slots.
    fn pool(settings: ScaleSettings) -> (Arc<ReplicaPool>, Arc<Mutex<Vec<ScaleEvent>>>) {
        let runtime = Runtime::new(RuntimeConfig {
            pooling: false,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let command = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let compiled = runtime.compile("command", &command).unwrap();
        let service = Service::new(
            compiled,
            ServiceConfig {
                name: "test".into(),
                ..ServiceConfig::default()
            },
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = Arc::new({
            let events = events.clone();
            move |event| events.lock().unwrap().push(event)
        });
        let replica = ReplicaSpec {
            requests: ReplicaResources {
                memory: 1 << 20,
                cpu_millis: 0,
            },
            ..ReplicaSpec::default()
        };
        let capacity = Capacity::new(ReplicaResources {
            memory: 4 << 20,
            cpu_millis: 1000,
        });
        let scheduler = runtime.scheduler().clone();
        let pool = ReplicaPool::new(service, replica, settings, capacity, scheduler, sink);
        (pool, events)
    }

    fn one_at_a_time(queue_limit: u32) -> ScaleSettings {
        ScaleSettings {
            min: 1,
            max: 1,
            queue_limit,
            queue_timeout: Duration::from_secs(2),
            ..ScaleSettings::default()
        }
    }

    /// Yields until the pool has `n` requests waiting.
    async fn until_queued(pool: &ReplicaPool, n: u32) {
        while pool.status().queued != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_queues_then_refuses_past_the_limit_and_the_timeout() {
        let (pool, _) = pool(one_at_a_time(1));
        let (held, cold) = pool.acquire(Instant::now()).await.unwrap();
        assert!(!cold, "the minimum replica was already running");
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire(Instant::now()).await.map(|_| ()) }
        });
        until_queued(&pool, 1).await;
        let full = pool.acquire(Instant::now()).await.map(|_| ()).unwrap_err();
        assert_eq!(
            full.to_string(),
            "the node is at capacity: all 1 replicas are busy and the queue is full (1 waiting)"
        );
        // Virtual time runs to the queue timeout: the waiter is refused, not left hanging.
        let timed_out = waiting.await.unwrap().unwrap_err();
        assert_eq!(
            timed_out.to_string(),
            "the node is at capacity: no replica became free within the queue timeout of 2s"
        );
        let status = pool.status();
        assert_eq!(
            (status.queued, status.rejected, status.in_flight),
            (0, 2, 1)
        );
        drop(held);
        assert_eq!(pool.status().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_longest_waiter() {
        let (pool, _) = pool(one_at_a_time(10));
        let (held, _) = pool.acquire(Instant::now()).await.unwrap();
        let (first_sender, mut first_got) = tokio::sync::mpsc::unbounded_channel();
        let (second_sender, mut second_got) = tokio::sync::mpsc::unbounded_channel();
        for (sender, n_queued) in [(first_sender, 1), (second_sender, 2)] {
            let waiter = pool.clone();
            tokio::spawn(async move {
                let lease = waiter.acquire(Instant::now()).await;
                let _ = sender.send(lease.map(|(lease, _)| lease));
            });
            until_queued(&pool, n_queued).await;
        }
        drop(held);
        let first = first_got.recv().await.unwrap().unwrap();
        assert!(
            second_got.try_recv().is_err(),
            "the second waiter came later"
        );
        assert_eq!(pool.status().queued, 1);
        drop(first);
        let second = second_got.recv().await.unwrap().unwrap();
        drop(second);
        let status = pool.status();
        assert_eq!(
            (status.replicas, status.in_flight, status.requests),
            (1, 0, 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_service_goes_to_zero_and_its_next_request_starts_cold() {
        let (pool, events) = pool(ScaleSettings {
            min: 0,
            max: 3,
            idle_timeout: Duration::from_secs(10),
            scale_down_delay: Duration::from_secs(1),
            ..ScaleSettings::default()
        });
        assert_eq!(pool.status().replicas, 0);
        let (lease, cold) = pool.acquire(Instant::now()).await.unwrap();
        assert!(cold);
        drop(lease);
        assert_eq!(pool.status().replicas, 1);
        // The tick task runs in virtual time: past the idle timeout, the replica is gone.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(pool.status().replicas, 0);
        let (_, cold) = pool.acquire(Instant::now()).await.unwrap();
        assert!(cold);
        // Events are reported once per tick.
        tokio::time::sleep(ScaleSettings::default().tick()).await;
        let reasons: Vec<(u32, u32, ScaleReason)> = events
            .lock()
            .unwrap()
            .iter()
            .map(|event| (event.from, event.to, event.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                (0, 1, ScaleReason::ColdStart),
                (1, 0, ScaleReason::Idle),
                (0, 1, ScaleReason::ColdStart),
            ]
        );
        assert_eq!(pool.status().cold_starts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_does_not_fit_is_reported_once() {
        let (pool, events) = pool(ScaleSettings {
            min: 0,
            max: 10,
            queue_limit: 0,
            ..ScaleSettings::default()
        });
        // Four replicas of 1 MiB fill the node's 4 MiB.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.acquire(Instant::now()).await.unwrap().0);
        }
        for _ in 0..3 {
            assert!(pool.acquire(Instant::now()).await.is_err());
        }
        pool.tick();
        let at_capacity: Vec<ScaleEvent> = events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| matches!(event.reason, ScaleReason::AtCapacity(_)))
            .cloned()
            .collect();
        assert_eq!(at_capacity.len(), 1);
        let ScaleReason::AtCapacity(shortfall) = at_capacity[0].reason else {
            unreachable!()
        };
        assert_eq!(shortfall.asked.memory, 1 << 20);
        assert_eq!(shortfall.free.memory, 0);
        assert_eq!((at_capacity[0].from, at_capacity[0].to), (4, 4));
    }
}
