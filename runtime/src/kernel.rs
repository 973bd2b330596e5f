//! What shoal asks of the kernel's scheduler for its own threads: the only place the runtime
//! talks to it (four system calls, with plain structs).
//!
//! shoal shares the CPU between guests itself ([`crate::cpu`]), in slices of its epoch ticks.
//! Two things it cannot do without the kernel: tick on time while every core computes (the
//! ticker asks to run first), and keep a computing guest's worker from holding a core for a
//! whole kernel slice (several ms) while other threads, shoal's or another process's, wait
//! (the worker asks for a short slice while it computes).

use std::cell::Cell;

/// How the epoch ticker's thread got ahead of the guests it interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickerPriority {
    /// The kernel's real-time class (`SCHED_FIFO`): it runs as soon as it wakes.
    RealTime,
    /// A short slice in the fair class: honoured by Linux 6.12 and later (EEVDF), where it
    /// preempts sooner; older kernels take the request and ignore it.
    ShortSlice,
    /// Neither was allowed.
    Fair,
}

/// The slice a thread asks for to be preempted early, in ns: EEVDF's least.
const SHORT_SLICE_NS: u64 = 100_000;

/// Asks the kernel to run the calling thread (the ticker) as soon as it wakes: a tick that
/// waits behind the guests it is to interrupt comes late. `SCHED_FIFO` needs `CAP_SYS_NICE`;
/// without it, a short slice (EEVDF's `sched_runtime` for fair tasks, allowed to anyone).
pub(crate) fn ask_to_run_first() -> TickerPriority {
    if run_first() {
        TickerPriority::RealTime
    } else if set_slice(SHORT_SLICE_NS) {
        TickerPriority::ShortSlice
    } else {
        TickerPriority::Fair
    }
}

thread_local! {
    /// Whether this thread asked for a short slice.
    static SHORT_SLICE: Cell<bool> = const { Cell::new(false) };
}

/// Says whether the calling thread (a worker) is about to run a computing guest: while it is,
/// the thread asks for a short slice, so that anything waking on its core (a client, the I/O
/// another worker is to read, a co-located process) waits at most 0.1 ms behind it; the kernel
/// would otherwise let it run out a default slice of a few ms, fair as its own share. It asks
/// only when the answer changes: a worker serving light requests never makes the call.
pub(crate) fn computing(computing: bool) {
    SHORT_SLICE.with(|short| {
        if short.get() != computing {
            // A kernel that refuses (or ignores) it changes nothing but the latency.
            set_slice(if computing { SHORT_SLICE_NS } else { 0 });
            short.set(computing);
        }
    });
}

/// Gives the calling thread (the background compiler) a low priority in the fair class, nice
/// 10: against a busy thread at the default priority it has about a tenth of a core (CFS
/// weights 110 against 1024), so it never keeps a guest or a connection waiting for long, yet
/// optimized code still arrives on a node that computes all the time; an idle core is all its.
/// (At nice 19, 1.5%, a loaded node would wait many minutes for the code that would help it.)
#[cfg(feature = "compiler")]
#[allow(unsafe_code)]
pub(crate) fn run_in_background() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system call; on Linux, `who` 0 with PRIO_PROCESS is the calling thread.
        // Failure leaves the thread at the default priority.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
    }
}

/// The background compiler's nice value.
#[cfg(feature = "compiler")]
const BACKGROUND_NICE: libc::c_int = 10;

/// Puts the calling thread in the real-time class at the lowest priority.
#[allow(unsafe_code)]
fn run_first() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: `param` is a valid `sched_param`; pid 0 is the calling thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// `struct sched_attr`, version 0 (48 bytes), as `sched_setattr(2)` has it.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Sets the calling thread's slice (0: the kernel's default), keeping its class and nice
/// value.
#[allow(unsafe_code)]
fn set_slice(runtime_ns: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        const SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;
        let mut attr = SchedAttr::default();
        // SAFETY: `attr` is a writable `sched_attr` of `SIZE` bytes; pid 0 is the calling
        // thread.
        let read = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                &mut attr as *mut SchedAttr,
                SIZE,
                0,
            )
        };
        if read != 0 || attr.policy != libc::SCHED_OTHER as u32 {
            return false;
        }
        attr.size = SIZE;
        attr.flags = 0;
        attr.runtime = runtime_ns;
        // SAFETY: `attr` is a valid `sched_attr` of `SIZE` bytes; pid 0 is the calling thread.
        unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = runtime_ns;
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The slice this thread runs with, from `/proc/thread-self/sched`'s `se.slice` (ns).
    fn slice_ns() -> u64 {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap();
        let line = sched
            .lines()
            .find(|line| line.starts_with("se.slice"))
            .unwrap_or_else(|| panic!("no se.slice in {sched}"));
        let value = line.split(':').nth(1).unwrap().trim();
        value
            .parse()
            .unwrap_or_else(|_| panic!("se.slice is not in ns: {value}"))
    }

    #[test]
    fn a_computing_worker_runs_with_a_short_slice_and_goes_back_to_the_default() {
        std::thread::spawn(|| {
            let default = slice_ns();
            computing(true);
            assert_eq!(slice_ns(), SHORT_SLICE_NS, "default was {default} ns");
            computing(false);
            assert_eq!(slice_ns(), default);
        })
        .join()
        .unwrap();
    }
}
