//! Sharing the CPU between services the way the kernel's CFS shares it between cgroups,
//! inside one process, measured in real CPU time.
//!
//! Guests run on the same tokio worker threads as everything else (accepting connections,
//! routing, the APIs), so a guest that computes must not keep a thread: it yields to tokio at
//! every epoch tick (`sandbox::prepare_store`), and the worker then runs its other tasks and
//! polls the I/O driver. And so that guests share the cores fairly, a guest runs wasm only
//! while it holds a **slot** of the [`CpuScheduler`]: one slot per worker thread.
//!
//! - Each service is a [`CpuShare`] with a weight: its replicas' cpu requests, in millicores.
//!   Its CPU time, weighted (`ns × 1000 / weight`), is its *virtual runtime*.
//! - When every slot is taken, a guest waits. A freed slot goes to the waiting service with
//!   the lowest virtual runtime, and within a service to its waiting requests in arrival order.
//! - A guest that reaches a tick while others wait gives its slot up (after its yield, so the
//!   worker polls the driver first) and queues again behind them: the slice is one tick.
//! - A computing guest (one past its first tick) handed a slot lets its worker run its other
//!   tasks and poll the driver before it computes; if that brought a request of another
//!   service owed the CPU as much, the slot passes on. Light requests are then served in
//!   batches, as they arrive, rather than one per slice.
//! - A service that starts waiting cuts the running slices short (the runtime advances the
//!   epoch, at most every [`PREEMPT_GRANULARITY`]), as the kernel preempts the running task
//!   for one that wakes with less virtual runtime: a light request arriving while every slot
//!   computes waits for a slice to end, not for the next tick.
//! - Nobody waiting, nobody yields a slot: a service alone on the node has every core
//!   (work-conserving).
//! - No service can bank CPU it did not use: a virtual runtime never trails the most advanced
//!   one by more than [`MAX_LAG`], so a service that idled, or ran alone, enters the
//!   competition level with the others.
//!
//! While a worker thread runs a computing guest it asks the kernel for a short slice
//! ([`crate::kernel::computing`]), so the box's other threads and processes, a client among
//! them, wait at most that long for a core behind it.
//!
//! CPU time is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) around each poll of a guest's
//! execution, host calls included. A guest's first slice is timed with the wall clock, which is
//! cheaper (a system call against a vDSO read) and, for a request that answers within it, the
//! same; from its first tick on, the thread clock is read.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How far a service's virtual runtime may trail the most advanced one: the most CPU (at the
/// weight of one core) a service can be owed after idling or running alone.
pub(crate) const MAX_LAG: Duration = Duration::from_millis(20);

/// How recently a guest must have run through a tick with every slot taken for the CPU to
/// count as contended: the ticker ticks fast, and a guest that starts waiting preempts.
pub const SATURATED_WINDOW: Duration = Duration::from_millis(50);

/// The least time between two preemptions.
pub(crate) const PREEMPT_GRANULARITY: Duration = Duration::from_micros(100);

/// How far back the recent CPU figures ([`CpuUsage::cores`]) look.
pub const CPU_WINDOW: Duration = Duration::from_secs(10);

/// How often a running total is sampled for them.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The weight of a service that requests no cpu, in millicores: it competes like a service
/// that requested a tenth of a core.
pub const DEFAULT_WEIGHT_MILLIS: u64 = 100;

/// The CPU time of the calling thread.
pub(crate) fn thread_cpu_time() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(time.tv_sec).unwrap_or(0),
        u32::try_from(time.tv_nsec).unwrap_or(0),
    )
}

/// The node's CPU, in slots, and the services that share it.
pub struct CpuScheduler {
    state: Mutex<State>,
    slots: usize,
    /// Guests waiting for a slot; a guest at a tick gives its slot up only when some do.
    n_waiting: AtomicU64,
    /// Slots free. Taken without the lock while nobody waits.
    n_free: AtomicUsize,
    /// The most advanced virtual runtime, in weighted nanoseconds.
    frontier: AtomicU64,
    /// CPU time of every guest.
    meter: CpuMeter,
    /// When a guest last ran through a tick with every slot taken, in nanoseconds since
    /// `started` (0: never): the ticker ticks fast, and waiters preempt, while the CPU is
    /// contended.
    saturated_at: AtomicU64,
    /// Cuts the running slices short (see [`CpuScheduler::preempt`]).
    preempt: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// When a guest last finished within its first tick, in nanoseconds since `started` (0:
    /// never): light requests are arriving, and if guests compute meanwhile the ticker ticks
    /// faster still.
    light_at: AtomicU64,
    started: Instant,
    /// When it last did, in nanoseconds since `started`.
    last_preempt: AtomicU64,
}

struct State {
    /// The services with guests waiting, each with its waiters in arrival order.
    waiting: Vec<(Arc<CpuShare>, VecDeque<Arc<Waiter>>)>,
}

/// One guest waiting for a slot.
struct Waiter {
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Waiter {
    fn grant(&self) {
        self.granted.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A service's share of the CPU: its weight, its virtual runtime and the CPU it has used.
pub struct CpuShare {
    /// Millicores; at least 1.
    weight: AtomicU64,
    vruntime: AtomicU64,
    meter: CpuMeter,
    /// Fuel its guests burnt, in wasmtime's units (about one per instruction).
    fuel: AtomicU64,
}

impl CpuShare {
    /// A share of `weight_millis` millicores (a service that requests none gets
    /// [`DEFAULT_WEIGHT_MILLIS`]).
    pub fn new(weight_millis: u64) -> Arc<CpuShare> {
        Arc::new(CpuShare {
            weight: AtomicU64::new(weight_millis.max(1)),
            vruntime: AtomicU64::new(0),
            meter: CpuMeter::default(),
            fuel: AtomicU64::new(0),
        })
    }

    /// Sets the weight, as replicas come and go.
    pub fn set_weight(&self, weight_millis: u64) {
        self.weight.store(weight_millis.max(1), Ordering::Relaxed);
    }

    /// The weight, in millicores.
    pub fn weight(&self) -> u64 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The CPU time its guests have used.
    pub fn used(&self) -> Duration {
        self.meter.used()
    }

    /// Counts fuel a guest burnt.
    pub(crate) fn burn_fuel(&self, fuel: u64) {
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
    }

    /// The fuel its guests have burnt (a request of a wasi:http guest stopped by its timeout
    /// leaves none counted: its store goes with it).
    pub fn fuel(&self) -> u64 {
        self.fuel.load(Ordering::Relaxed)
    }

    /// Notes the CPU used so far, for the recent figures; the service's pool calls it at
    /// every autoscaler tick.
    pub fn sample(&self, now: Instant) {
        self.meter.sample(now);
    }

    /// What the service has used, and recently.
    pub fn usage(&self, now: Instant) -> CpuUsage {
        self.meter.usage(now)
    }

    fn vruntime(&self) -> u64 {
        self.vruntime.load(Ordering::Relaxed)
    }
}

/// CPU used: in all, and over the last [`CPU_WINDOW`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUsage {
    /// CPU time since the count started.
    pub used: Duration,
    /// Cores used on average over the last [`CPU_WINDOW`] (less while there is less history).
    pub cores: f64,
}

/// A running total of CPU time, sampled about once a second for its rate over the last
/// [`CPU_WINDOW`].
#[derive(Default)]
struct CpuMeter {
    used_ns: AtomicU64,
    /// Oldest first: the last sample at or before the window's start, then those within it.
    samples: Mutex<VecDeque<(Instant, Duration)>>,
}

impl CpuMeter {
    fn add(&self, ns: u64) {
        self.used_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn used(&self) -> Duration {
        Duration::from_nanos(self.used_ns.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Duration)>> {
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sample(&self, now: Instant) {
        let used = self.used();
        let mut samples = self.lock();
        if samples
            .back()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < SAMPLE_EVERY)
        {
            return;
        }
        samples.push_back((now, used));
        while samples.len() > 2 && now.saturating_duration_since(samples[1].0) >= CPU_WINDOW {
            samples.pop_front();
        }
    }

    fn usage(&self, now: Instant) -> CpuUsage {
        let used = self.used();
        CpuUsage {
            used,
            cores: self.cores(now, used),
        }
    }

    /// The cores `used` means since the oldest sample: 0 until one is at least a sampling
    /// interval old.
    fn cores(&self, now: Instant, used: Duration) -> f64 {
        let samples = self.lock();
        let Some(&(at, then)) = samples.front() else {
            return 0.0;
        };
        let span = now.saturating_duration_since(at);
        if span < SAMPLE_EVERY {
            return 0.0;
        }
        used.saturating_sub(then).as_secs_f64() / span.as_secs_f64()
    }
}

impl CpuScheduler {
    /// A scheduler with `slots` slots: the number of threads that run guests.
    pub fn new(slots: usize) -> Arc<CpuScheduler> {
        let slots = slots.max(1);
        Arc::new(CpuScheduler {
            state: Mutex::new(State {
                waiting: Vec::new(),
            }),
            slots,
            n_waiting: AtomicU64::new(0),
            n_free: AtomicUsize::new(slots),
            frontier: AtomicU64::new(0),
            meter: CpuMeter::default(),
            saturated_at: AtomicU64::new(0),
            preempt: OnceLock::new(),
            light_at: AtomicU64::new(0),
            started: Instant::now(),
            last_preempt: AtomicU64::new(0),
        })
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The CPU time every guest has used.
    pub fn used(&self) -> Duration {
        self.meter.used()
    }

    /// Notes the CPU every guest has used so far, for the recent figures; the runtime's
    /// epoch ticker calls it.
    pub(crate) fn sample(&self, now: Instant) {
        self.meter.sample(now);
    }

    /// What every guest has used, and recently.
    pub fn usage(&self, now: Instant) -> CpuUsage {
        self.meter.usage(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether guests wait for a slot.
    pub(crate) fn contended(&self) -> bool {
        self.n_waiting.load(Ordering::Relaxed) > 0
    }

    /// Notes that a guest computing for longer than a tick ran through another. If every slot
    /// is taken (every worker thread may be running a guest) or guests wait, the ticker should
    /// tick fast: a tick is then how long a waiting guest, or a worker's other tasks, wait.
    pub(crate) fn note_tick(&self) {
        if self.n_free.load(Ordering::Relaxed) == 0 || self.contended() {
            self.saturated_at
                .store(self.nanos_since_start().max(1), Ordering::Relaxed);
        }
    }

    /// Whether a guest ran through a tick with every slot taken within `recently`.
    pub(crate) fn saturated_within(&self, recently: Duration) -> bool {
        let at = self.saturated_at.load(Ordering::Relaxed);
        let recently = u64::try_from(recently.as_nanos()).unwrap_or(u64::MAX);
        at != 0 && self.nanos_since_start().saturating_sub(at) < recently
    }

    fn nanos_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Notes that a guest finished within its first tick.
    fn note_light_request(&self, now: Instant) {
        let now = u64::try_from(now.saturating_duration_since(self.started).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        // Read first: at thousands of requests a second most notes change nothing that a
        // 50 ms window can tell, and a read keeps the line shared between the workers.
        const RESOLUTION_NS: u64 = 1_000_000;
        let last = self.light_at.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= RESOLUTION_NS {
            self.light_at.store(now, Ordering::Relaxed);
        }
    }

    /// Whether a guest finished within its first tick within `recently`.
    pub(crate) fn light_within(&self, recently: Duration) -> bool {
        let at = self.light_at.load(Ordering::Relaxed);
        let recently = u64::try_from(recently.as_nanos()).unwrap_or(u64::MAX);
        at != 0 && self.nanos_since_start().saturating_sub(at) < recently
    }

    /// Charges `used` CPU time to `share`.
    pub(crate) fn charge(&self, share: &CpuShare, used: Duration) {
        let ns = u64::try_from(used.as_nanos()).unwrap_or(u64::MAX);
        share.meter.add(ns);
        self.meter.add(ns);
        let weighted = ns.saturating_mul(1000) / share.weight();
        let vruntime = share.vruntime.fetch_add(weighted, Ordering::Relaxed) + weighted;
        // Read first: most charges do not move the frontier, and a read keeps the line shared.
        if vruntime > self.frontier.load(Ordering::Relaxed) {
            self.frontier.fetch_max(vruntime, Ordering::Relaxed);
        }
    }

    /// Lifts `share` to within [`MAX_LAG`] of the most advanced service, so CPU it did not
    /// use while idle or alone is not owed to it.
    fn place(&self, share: &CpuShare) {
        let lag = u64::try_from(MAX_LAG.as_nanos()).unwrap_or(u64::MAX);
        let floor = self.frontier.load(Ordering::Relaxed).saturating_sub(lag);
        share.vruntime.fetch_max(floor, Ordering::Relaxed);
    }

    /// A slot for a guest of `share`: at once if one is free and nobody waits, else when its
    /// turn comes.
    pub(crate) fn acquire(self: &Arc<Self>, share: &Arc<CpuShare>) -> Acquire {
        // Without a lock while nobody waits: a request that finds a free core takes it with
        // one atomic operation.
        if self.n_waiting.load(Ordering::SeqCst) == 0 && self.take_free() {
            return Acquire {
                scheduler: Some(self.clone()),
                waiter: None,
                done: true,
            };
        }
        let mut state = self.lock();
        let (waiter, newly_waiting) = self.enqueue(&mut state, share);
        self.dispatch(&mut state);
        drop(state);
        if newly_waiting && !waiter.granted.load(Ordering::Acquire) {
            self.preempt();
        }
        Acquire {
            scheduler: Some(self.clone()),
            waiter: Some(waiter),
            done: false,
        }
    }

    /// Takes a free slot, if there is one.
    fn take_free(&self) -> bool {
        self.n_free
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |free| {
                free.checked_sub(1)
            })
            .is_ok()
    }

    /// Sets how to cut the running guests' slices short: the runtime advances the epoch, so
    /// each runs into its tick at once.
    pub(crate) fn preempt_with(&self, preempt: impl Fn() + Send + Sync + 'static) {
        let _ = self.preempt.set(Box::new(preempt));
    }

    /// Ends the running slices now, as the kernel preempts the running task when one with
    /// less virtual runtime wakes: a service that starts waiting (a light request arriving
    /// while every slot computes) need not wait for the next tick. At most once every
    /// [`PREEMPT_GRANULARITY`], which bounds what it costs the running guests, and only while
    /// guests compute through ticks ([`SATURATED_WINDOW`]): slots held by light requests come
    /// back within microseconds, and a preemption would only make each of them run into a
    /// tick (and be taken for a computing guest).
    fn preempt(&self) {
        let Some(preempt) = self.preempt.get() else {
            return;
        };
        if !self.saturated_within(SATURATED_WINDOW) {
            return;
        }
        let now = self.nanos_since_start();
        let last = self.last_preempt.load(Ordering::Relaxed);
        let granularity = u64::try_from(PREEMPT_GRANULARITY.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) >= granularity
            && self
                .last_preempt
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            preempt();
        }
    }

    /// Queues a waiter of `share`; `true` if its service was not waiting already.
    fn enqueue(&self, state: &mut State, share: &Arc<CpuShare>) -> (Arc<Waiter>, bool) {
        let waiter = Arc::new(Waiter {
            granted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let newly_waiting = match state
            .waiting
            .iter_mut()
            .find(|(waiting, _)| Arc::ptr_eq(waiting, share))
        {
            Some((_, queue)) => {
                queue.push_back(waiter.clone());
                false
            }
            None => {
                self.place(share);
                state
                    .waiting
                    .push((share.clone(), VecDeque::from([waiter.clone()])));
                true
            }
        };
        self.n_waiting.fetch_add(1, Ordering::SeqCst);
        (waiter, newly_waiting)
    }

    /// Gives a slot back: to the first waiter of the waiting service with the lowest virtual
    /// runtime, or to the free slots.
    fn release(&self) {
        // A waiter counts itself before it looks for a free slot, and a release frees its slot
        // before it looks for waiters (both sequentially consistent): one of the two sees the
        // other, so no waiter is left behind a free slot.
        self.n_free.fetch_add(1, Ordering::SeqCst);
        if self.n_waiting.load(Ordering::SeqCst) > 0 {
            let mut state = self.lock();
            self.dispatch(&mut state);
        }
    }

    /// Hands free slots to waiters, the waiting service with the lowest virtual runtime first.
    fn dispatch(&self, state: &mut State) {
        while !state.waiting.is_empty() && self.take_free() {
            let idx = state
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(_, (share, _))| share.vruntime())
                .map(|(idx, _)| idx)
                .expect("someone waits");
            let (_, queue) = &mut state.waiting[idx];
            let waiter = queue.pop_front().expect("a waiting service has a waiter");
            if queue.is_empty() {
                state.waiting.swap_remove(idx);
            }
            self.n_waiting.fetch_sub(1, Ordering::SeqCst);
            waiter.grant();
        }
    }

    /// Gives up a slot held by a guest of `share` and queues it again behind whoever is owed
    /// the CPU more; if that is the guest itself, it keeps the slot.
    pub(crate) fn yield_slot(self: &Arc<Self>, share: &Arc<CpuShare>) -> Acquire {
        let mut state = self.lock();
        let (waiter, _) = self.enqueue(&mut state, share);
        self.n_free.fetch_add(1, Ordering::SeqCst);
        self.dispatch(&mut state);
        drop(state);
        let done = waiter.granted.load(Ordering::Acquire);
        Acquire {
            scheduler: Some(self.clone()),
            waiter: (!done).then_some(waiter),
            done,
        }
    }

    /// Whether another service waits with no more virtual runtime than `share`.
    fn owed_to_another(&self, share: &Arc<CpuShare>) -> bool {
        if !self.contended() {
            return false;
        }
        let own = share.vruntime();
        self.lock()
            .waiting
            .iter()
            .any(|(other, _)| !Arc::ptr_eq(other, share) && other.vruntime() <= own)
    }

    /// Takes a waiter out of the queue it is in; `false` if it was granted meanwhile.
    fn cancel(&self, waiter: &Arc<Waiter>) -> bool {
        let mut state = self.lock();
        if waiter.granted.load(Ordering::Acquire) {
            return false;
        }
        for idx in 0..state.waiting.len() {
            let queue = &mut state.waiting[idx].1;
            if let Some(position) = queue.iter().position(|w| Arc::ptr_eq(w, waiter)) {
                queue.remove(position);
                if queue.is_empty() {
                    state.waiting.swap_remove(idx);
                }
                self.n_waiting.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
        }
        false
    }
}

/// Waiting for a slot; resolves to the slot.
pub(crate) struct Acquire {
    /// Moved into the slot once granted.
    scheduler: Option<Arc<CpuScheduler>>,
    waiter: Option<Arc<Waiter>>,
    done: bool,
}

impl Future for Acquire {
    type Output = Slot;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Slot> {
        if !self.done {
            let waiter = self
                .waiter
                .as_ref()
                .expect("a pending acquire has a waiter");
            if !waiter.granted.load(Ordering::Acquire) {
                *waiter
                    .waker
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cx.waker().clone());
                // Granted between the check and the registration: do not wait for a wake.
                if !waiter.granted.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
            }
            self.done = true;
            self.waiter = None;
        }
        self.done = false;
        let scheduler = self.scheduler.take().expect("an acquire resolves once");
        Poll::Ready(Slot { scheduler })
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        // A waiter that goes away leaves the queue; a slot granted to it (or taken for it at
        // once) that it never took passes on.
        let Some(scheduler) = &self.scheduler else {
            return;
        };
        if let Some(waiter) = self.waiter.take() {
            if !scheduler.cancel(&waiter) {
                scheduler.release();
            }
        } else if self.done {
            scheduler.release();
        }
    }
}

/// A slot held by a running guest; given back when dropped.
pub(crate) struct Slot {
    scheduler: Arc<CpuScheduler>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.scheduler.release();
    }
}

/// What one guest execution shares between the future that runs it ([`Scheduled`]) and its
/// store's epoch callback.
pub(crate) struct GuestCpu {
    pub(crate) scheduler: Arc<CpuScheduler>,
    pub(crate) share: Arc<CpuShare>,
    /// Set by the epoch callback when the guest yields at a tick (rather than waiting on the
    /// host): it keeps its slot through the yield, unless others wait.
    pub(crate) at_tick: AtomicBool,
    /// Set once the guest has run through a tick: from then on its polls read the thread
    /// clock.
    pub(crate) long: AtomicBool,
}

impl GuestCpu {
    pub(crate) fn new(scheduler: Arc<CpuScheduler>, share: Arc<CpuShare>) -> Arc<GuestCpu> {
        Arc::new(GuestCpu {
            scheduler,
            share,
            at_tick: AtomicBool::new(false),
            long: AtomicBool::new(false),
        })
    }
}

pin_project_lite::pin_project! {
    /// Runs a guest's execution only while it holds a slot, and charges the CPU time of each of
    /// its polls to its service (and, with `on_charge`, to a quota).
    pub(crate) struct Scheduled<F, C> {
        #[pin]
        inner: F,
        cpu: Arc<GuestCpu>,
        on_charge: C,
        slot: Option<Slot>,
        acquire: Option<Acquire>,
        // The last poll ended at a tick, holding the slot.
        yielded: bool,
        // A computing guest handed a slot lets the worker run its other tasks first.
        settle: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    }
}

impl<F: Future, C: FnMut(Duration)> Scheduled<F, C> {
    pub(crate) fn new(inner: F, cpu: Arc<GuestCpu>, on_charge: C) -> Scheduled<F, C> {
        Scheduled {
            inner,
            cpu,
            on_charge,
            slot: None,
            acquire: None,
            yielded: false,
            settle: None,
        }
    }
}

impl<F: Future, C: FnMut(Duration)> Future for Scheduled<F, C> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let cpu: &GuestCpu = this.cpu;
        let scheduler = &cpu.scheduler;
        loop {
            // tokio runs a task woken by the running one next, on the same worker: a computing
            // guest handed a slot by a light request that just finished would compute a whole
            // slice before the worker looked at its connections again (one light request per
            // slice per worker). So it first lets the worker run its other tasks and poll the
            // driver, and if that brought a request of another service owed the CPU as much,
            // the slot passes on.
            if let Some(settle) = this.settle.as_mut() {
                std::task::ready!(settle.as_mut().poll(cx));
                *this.settle = None;
                if scheduler.owed_to_another(&cpu.share)
                    && let Some(slot) = this.slot.take()
                {
                    std::mem::forget(slot);
                    *this.acquire = Some(scheduler.yield_slot(&cpu.share));
                }
            }
            // After a tick's yield (the worker has run its other tasks and polled the driver),
            // the slot goes to whoever is owed it more, if anyone waits.
            if std::mem::take(this.yielded)
                && scheduler.contended()
                && let Some(slot) = this.slot.take()
            {
                std::mem::forget(slot);
                *this.acquire = Some(scheduler.yield_slot(&cpu.share));
            }
            if this.slot.is_none() {
                let acquire = this
                    .acquire
                    .get_or_insert_with(|| scheduler.acquire(&cpu.share));
                let waited = acquire.waiter.is_some();
                match Pin::new(acquire).poll(cx) {
                    Poll::Ready(slot) => {
                        *this.acquire = None;
                        *this.slot = Some(slot);
                        if waited && cpu.long.load(Ordering::Relaxed) {
                            *this.settle = Some(Box::pin(tokio::task::yield_now()));
                            continue;
                        }
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            break;
        }
        let long = cpu.long.load(Ordering::Relaxed);
        crate::kernel::computing(long);
        let wall_start = Instant::now();
        let cpu_start = long.then(thread_cpu_time);
        cpu.at_tick.store(false, Ordering::Relaxed);
        let result = this.inner.poll(cx);
        let wall_end = Instant::now();
        let used = match cpu_start {
            Some(start) => thread_cpu_time().saturating_sub(start),
            None => wall_end.saturating_duration_since(wall_start),
        };
        scheduler.charge(&cpu.share, used);
        (this.on_charge)(used);
        match result {
            Poll::Ready(output) => {
                *this.slot = None;
                if !long {
                    scheduler.note_light_request(wall_end);
                }
                Poll::Ready(output)
            }
            Poll::Pending => {
                if cpu.at_tick.load(Ordering::Relaxed) {
                    *this.yielded = true;
                } else {
                    // Waiting on the host (a timer, a body): the slot is of no use meanwhile.
                    *this.slot = None;
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(acquire: &mut Acquire) -> Option<Slot> {
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(acquire).poll(&mut cx) {
            Poll::Ready(slot) => Some(slot),
            Poll::Pending => None,
        }
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }

    #[test]
    fn a_free_slot_is_taken_at_once_and_given_back() {
        let scheduler = CpuScheduler::new(2);
        let share = CpuShare::new(1000);
        let first = granted(&mut scheduler.acquire(&share)).unwrap();
        let second = granted(&mut scheduler.acquire(&share)).unwrap();
        let mut third = scheduler.acquire(&share);
        assert!(granted(&mut third).is_none());
        assert!(scheduler.contended());
        drop(first);
        let third = granted(&mut third).expect("the freed slot went to the waiter");
        assert!(!scheduler.contended());
        drop((second, third));
        assert_eq!(scheduler.n_free.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_freed_slot_goes_to_the_service_owed_the_most() {
        let scheduler = CpuScheduler::new(1);
        let heavy = CpuShare::new(1000);
        let light = CpuShare::new(1000);
        let running = granted(&mut scheduler.acquire(&heavy)).unwrap();
        scheduler.charge(&heavy, Duration::from_millis(5));
        // The heavy service's next request arrives first, the light one's second.
        let mut heavy_next = scheduler.acquire(&heavy);
        let mut light_next = scheduler.acquire(&light);
        drop(running);
        assert!(granted(&mut heavy_next).is_none());
        let light_slot = granted(&mut light_next).expect("the light service has used less");
        drop(light_slot);
        assert!(granted(&mut heavy_next).is_some());
    }

    #[test]
    fn a_waiter_preempts_only_guests_that_compute_through_ticks() {
        let scheduler = CpuScheduler::new(1);
        let preempted = Arc::new(AtomicU64::new(0));
        scheduler.preempt_with({
            let preempted = preempted.clone();
            move || {
                preempted.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Preemptions are rate-limited from the scheduler's start.
        std::thread::sleep(PREEMPT_GRANULARITY);
        let (busy, other) = (CpuShare::new(1000), CpuShare::new(1000));
        let running = granted(&mut scheduler.acquire(&busy)).unwrap();
        // A slot held by a light request comes back within microseconds: no preemption, which
        // would make the running guest take a tick.
        let light_waiter = scheduler.acquire(&other);
        assert_eq!(preempted.load(Ordering::Relaxed), 0);
        drop(light_waiter);
        // The running guest computes through a tick with every slot taken: now a guest that
        // starts waiting cuts its slice short.
        scheduler.note_tick();
        assert!(scheduler.saturated_within(SATURATED_WINDOW));
        let _waiter = scheduler.acquire(&other);
        assert_eq!(preempted.load(Ordering::Relaxed), 1);
        drop(running);
    }
    #[test]
    fn weights_set_how_fast_virtual_runtime_grows() {
        let scheduler = CpuScheduler::new(1);
        let one = CpuShare::new(1000);
        let three = CpuShare::new(3000);
        scheduler.charge(&one, Duration::from_millis(3));
        scheduler.charge(&three, Duration::from_millis(9));
        assert_eq!(one.vruntime(), three.vruntime());
        assert_eq!(three.used(), Duration::from_millis(9));
        assert_eq!(scheduler.used(), Duration::from_millis(12));
    }

    #[test]
    fn an_idle_service_is_not_owed_what_it_did_not_use() {
        let scheduler = CpuScheduler::new(1);
        let busy = CpuShare::new(1000);
        let idle = CpuShare::new(1000);
        scheduler.charge(&busy, Duration::from_secs(10));
        let running = granted(&mut scheduler.acquire(&busy)).unwrap();
        let _waiting = scheduler.acquire(&idle);
        let lag = busy.vruntime() - idle.vruntime();
        assert_eq!(lag, u64::try_from(MAX_LAG.as_nanos()).unwrap());
        drop(running);
    }

    #[test]
    fn within_a_service_requests_run_in_arrival_order() {
        let scheduler = CpuScheduler::new(1);
        let share = CpuShare::new(1000);
        let running = granted(&mut scheduler.acquire(&share)).unwrap();
        let mut first = scheduler.acquire(&share);
        let mut second = scheduler.acquire(&share);
        drop(running);
        assert!(granted(&mut second).is_none());
        let slot = granted(&mut first).unwrap();
        drop(slot);
        assert!(granted(&mut second).is_some());
    }

    #[test]
    fn a_waiter_that_goes_away_leaves_no_slot_behind() {
        let scheduler = CpuScheduler::new(1);
        let share = CpuShare::new(1000);
        let running = granted(&mut scheduler.acquire(&share)).unwrap();
        let gone = scheduler.acquire(&share);
        let mut next = scheduler.acquire(&share);
        drop(gone);
        drop(running);
        assert!(
            granted(&mut next).is_some(),
            "the slot skipped the waiter that left"
        );
        // Granted but never taken: the slot passes on.
        let scheduler = CpuScheduler::new(1);
        let running = granted(&mut scheduler.acquire(&share)).unwrap();
        let never_polled = scheduler.acquire(&share);
        drop(running);
        drop(never_polled);
        assert_eq!(scheduler.n_free.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn slots_are_never_over_given_nor_lost_under_contention() {
        let scheduler = CpuScheduler::new(2);
        let held = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for task_idx in 0..8 {
            let (scheduler, held) = (scheduler.clone(), held.clone());
            // Two services, so hand-overs pick between them.
            let share = CpuShare::new(if task_idx % 2 == 0 { 100 } else { 300 });
            tasks.spawn(async move {
                for round in 0..2000 {
                    let slot = if round % 3 == 0 {
                        // A yield at a tick: give the slot up and queue again.
                        let slot = scheduler.acquire(&share).await;
                        std::mem::forget(slot);
                        scheduler.yield_slot(&share).await
                    } else {
                        scheduler.acquire(&share).await
                    };
                    assert!(
                        held.fetch_add(1, Ordering::SeqCst) < 2,
                        "more slots than cores"
                    );
                    scheduler.charge(&share, Duration::from_micros(10));
                    tokio::task::yield_now().await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    drop(slot);
                }
            });
        }
        let all = async {
            while let Some(task) = tasks.join_next().await {
                task.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("a waiter was left behind a free slot");
        assert_eq!(scheduler.n_free.load(Ordering::SeqCst), 2);
        assert!(!scheduler.contended());
    }

    #[test]
    fn recent_usage_is_the_rate_over_the_window() {
        let share = CpuShare::new(1000);
        let start = Instant::now();
        assert_eq!(share.usage(start).cores, 0.0, "no history yet");
        let scheduler = CpuScheduler::new(1);
        share.sample(start);
        for second in 1..=30 {
            // Half a core for the first 15 s, then a whole core.
            let rate = if second <= 15 { 500 } else { 1000 };
            scheduler.charge(&share, Duration::from_millis(rate));
            share.sample(start + Duration::from_secs(second));
        }
        let now = start + Duration::from_secs(30);
        let usage = share.usage(now);
        assert_eq!(usage.used, Duration::from_millis(15 * 500 + 15 * 1000));
        assert!((usage.cores - 1.0).abs() < 1e-9, "{usage:?}");
        // A sample taken too soon after the last is not kept.
        share.sample(now + Duration::from_millis(10));
        assert_eq!(share.meter.lock().len(), 11);
    }

    #[test]
    fn yielding_keeps_the_slot_when_nobody_is_owed_more() {
        let scheduler = CpuScheduler::new(1);
        let spinning = CpuShare::new(1000);
        let light = CpuShare::new(1000);
        let slot = granted(&mut scheduler.acquire(&spinning)).unwrap();
        std::mem::forget(slot);
        scheduler.charge(&spinning, Duration::from_millis(1));
        let mut again = scheduler.yield_slot(&spinning);
        let slot = granted(&mut again).expect("alone, it goes on");
        // Now a light request waits: at the next tick the slot goes to it.
        let mut light_next = scheduler.acquire(&light);
        std::mem::forget(slot);
        scheduler.charge(&spinning, Duration::from_millis(1));
        let mut spinning_next = scheduler.yield_slot(&spinning);
        assert!(granted(&mut spinning_next).is_none());
        assert!(granted(&mut light_next).is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_computing_guest_handed_a_slot_lets_a_light_request_that_arrived_go_first() {
        let scheduler = CpuScheduler::new(1);
        let (spinning, light) = (CpuShare::new(1000), CpuShare::new(1000));
        scheduler.charge(&spinning, Duration::from_millis(5));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let guest = |share: &Arc<CpuShare>, long: bool, name: &'static str| {
            let cpu = GuestCpu::new(scheduler.clone(), share.clone());
            cpu.long.store(long, Ordering::Relaxed);
            let ran = ran.clone();
            Scheduled::new(async move { ran.lock().unwrap().push(name) }, cpu, |_| {})
        };
        // A light request runs; a computing guest waits for its slot.
        let running = scheduler.acquire(&light).await;
        let computing = tokio::spawn(guest(&spinning, true, "computing"));
        tokio::task::yield_now().await;
        assert!(scheduler.contended());
        // The light request finishes, handing the slot over, and another arrives before the
        // computing guest's task has run.
        drop(running);
        let next_light = tokio::spawn(guest(&light, false, "light"));
        computing.await.unwrap();
        next_light.await.unwrap();
        assert_eq!(*ran.lock().unwrap(), ["light", "computing"]);
        assert_eq!(scheduler.n_free.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_a_guest_that_finishes_within_its_first_tick_counts_as_light() {
        let scheduler = CpuScheduler::new(1);
        let share = CpuShare::new(1000);
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        let computing = GuestCpu::new(scheduler.clone(), share.clone());
        computing.long.store(true, Ordering::Relaxed);
        let mut run = std::pin::pin!(Scheduled::new(std::future::ready(()), computing, |_| {}));
        assert!(run.as_mut().poll(&mut cx).is_ready());
        assert!(!scheduler.light_within(Duration::from_secs(60)));
        let light = GuestCpu::new(scheduler.clone(), share);
        let mut run = std::pin::pin!(Scheduled::new(std::future::ready(()), light, |_| {}));
        assert!(run.as_mut().poll(&mut cx).is_ready());
        assert!(scheduler.light_within(Duration::from_secs(60)));
        assert_eq!(scheduler.n_free.load(Ordering::SeqCst), 1);
    }
}
