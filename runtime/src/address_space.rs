//! Whether the pooling allocator's reservation fits this process's address space, asked in a
//! way that cannot hang the node.
//!
//! Pooling reserves address space for every instance up front: about 4 GiB of linear memory
//! and its guard per slot, four terabytes for a thousand. A 39-bit aarch64 kernel has 512 GiB
//! in all, `ulimit -v` can cap it lower, and an emulator (qemu-user) maps a reservation page by
//! page, at about 10 ms per GiB: wasmtime's own attempt then takes minutes, and while it runs
//! it holds the emulator's mapping lock, so a thread with a timeout would not help. So the
//! limit is read first (`RLIMIT_AS`), and the reservation is then tried in a forked child that
//! only maps, and is killed if it has not answered by a deadline. The child calls `prctl`,
//! `mmap` and `_exit` and nothing else, all safe after a fork in a threaded process.

use std::time::{Duration, Instant};

/// Why the reservation does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Misfit {
    /// `RLIMIT_AS` (`ulimit -v`) is below it, in bytes.
    Limited(u64),
    /// The kernel refused the mapping.
    Refused(String),
    /// The child had not mapped it by the deadline.
    TooSlow(Duration),
}

/// How long the child may take to reserve: natively it takes microseconds.
pub(crate) const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Checks that `bytes` of address space can be reserved, within `deadline`.
pub(crate) fn check(bytes: u64, deadline: Duration) -> Result<(), Misfit> {
    if let Some(limit) = address_space_limit()
        && limit < bytes
    {
        return Err(Misfit::Limited(limit));
    }
    reserve_in_child(bytes, deadline)
}

/// The soft `RLIMIT_AS`, if there is one.
#[allow(unsafe_code)]
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is handed and nothing else.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    (read && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Exit status of a child that could map the reservation; a refusal exits with its errno.
const MAPPED: i32 = 0;

#[allow(unsafe_code)]
fn reserve_in_child(bytes: u64, deadline: Duration) -> Result<(), Misfit> {
    let Ok(len) = usize::try_from(bytes) else {
        return Err(Misfit::Refused("larger than the address space".into()));
    };
    // SAFETY: the child runs only async-signal-safe calls (mmap, _exit) before exiting, so
    // no lock another thread held at the fork can stop it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: a fresh anonymous mapping, never touched; _exit ends the child at once. The
        // child dies with the thread that forked it, so it never outlives the node holding its
        // inherited listeners and store lock, even under an emulator that maps for minutes.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
            let mapped = libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0);
            let status = if mapped == libc::MAP_FAILED {
                *libc::__errno_location()
            } else {
                MAPPED
            };
            libc::_exit(status)
        }
    }
    if pid < 0 {
        // Without a child, wasmtime's own attempt is the probe.
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot fork the address-space probe");
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child, writing the status we hand it.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if waited == pid {
            return match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
                Some(MAPPED) => Ok(()),
                Some(errno) => Err(Misfit::Refused(
                    std::io::Error::from_raw_os_error(errno).to_string(),
                )),
                None => Err(Misfit::Refused(format!(
                    "the probe ended without exiting (status {status})"
                ))),
            };
        }
        if waited < 0 {
            return Ok(());
        }
        if started.elapsed() >= deadline {
            // SAFETY: signals and reaps our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(Misfit::TooSlow(deadline));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_reservation_fits_and_an_impossible_one_is_refused() {
        assert_eq!(check(1 << 30, PROBE_DEADLINE), Ok(()));
        // More than any 64-bit kernel's user address space (128 TiB on x86-64 with 4 levels,
        // 256 TiB on aarch64 with 48 bits).
        match check(1 << 60, PROBE_DEADLINE) {
            Err(Misfit::Refused(message)) => assert!(!message.is_empty()),
            Err(Misfit::Limited(_)) => {}
            other => panic!("a 1 EiB reservation fitted: {other:?}"),
        }
    }
}
