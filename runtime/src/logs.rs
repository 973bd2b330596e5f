//! [`GuestLog`]: what a service's guests wrote to stdout and stderr, kept in a bounded buffer
//! with the time and the replica of each line, so `kubectl logs`, `shoal logs` and the
//! management API can read it back (and follow it) after the request is long gone.
//!
//! The buffer belongs to the service, not to a replica or a pool: it outlives a pool rebuilt
//! for a new revision and replicas scaled away, as Kubernetes keeps a pod's previous logs.
//! It is bounded in bytes; the oldest lines go first. Lines also still go to the node's own log
//! (target `shoal::guest`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Which stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line a guest wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the request that wrote it finished with it.
    pub time: SystemTime,
    /// The replica that ran the request (its id in the pool), 0 outside a pool.
    pub replica: u64,
    /// Where it was written.
    pub stream: Stream,
    /// The line, without its newline; invalid UTF-8 replaced.
    pub text: String,
}

/// The lines a service's guests wrote, newest last, bounded in bytes.
pub struct GuestLog {
    state: Mutex<Buffer>,
    capacity_bytes: usize,
    /// Every line as it is appended, for followers; a slow follower misses lines rather than
    /// holding the guest up.
    live: broadcast::Sender<LogLine>,
}

struct Buffer {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

impl GuestLog {
    /// The bytes kept per service unless configured otherwise.
    pub const DEFAULT_CAPACITY: usize = 1 << 20;

    /// An empty log keeping about `capacity_bytes` of text.
    pub fn new(capacity_bytes: usize) -> GuestLog {
        GuestLog {
            state: Mutex::new(Buffer {
                lines: VecDeque::new(),
                bytes: 0,
            }),
            capacity_bytes,
            live: broadcast::channel(1024).0,
        }
    }

    /// Appends what a request wrote to `stream`, a line per newline.
    pub fn append(&self, replica: u64, stream: Stream, bytes: &[u8], truncated: bool) {
        if bytes.is_empty() && !truncated {
            return;
        }
        let time = SystemTime::now();
        let text = String::from_utf8_lossy(bytes);
        let lines = text
            .lines()
            .map(str::to_owned)
            .chain(truncated.then(|| "(output truncated)".to_owned()));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for text in lines {
            let line = LogLine {
                time,
                replica,
                stream,
                text,
            };
            state.bytes += line.text.len();
            // No receivers is not an error: nobody follows.
            let _ = self.live.send(line.clone());
            state.lines.push_back(line);
        }
        while state.bytes > self.capacity_bytes {
            let Some(oldest) = state.lines.pop_front() else {
                break;
            };
            state.bytes -= oldest.text.len();
        }
    }

    /// The kept lines that `select` keeps, the newest `tail` of them (all with `None`), oldest
    /// first.
    pub fn lines(&self, select: impl Fn(&LogLine) -> bool, tail: Option<usize>) -> Vec<LogLine> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.tail(select, tail)
    }

    /// The kept lines (as [`GuestLog::lines`]) and every line appended after them, for
    /// following: subscribed under the same lock, so none is missed or seen twice.
    pub fn follow(
        &self,
        select: impl Fn(&LogLine) -> bool,
        tail: Option<usize>,
    ) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.tail(select, tail), self.live.subscribe())
    }
}

impl Buffer {
    fn tail(&self, select: impl Fn(&LogLine) -> bool, tail: Option<usize>) -> Vec<LogLine> {
        let mut lines: Vec<LogLine> = self
            .lines
            .iter()
            .rev()
            .filter(|line| select(line))
            .take(tail.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        lines.reverse();
        lines
    }
}

impl std::fmt::Debug for GuestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestLog")
            .field("capacity_bytes", &self.capacity_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for GuestLog {
    fn default() -> GuestLog {
        GuestLog::new(GuestLog::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lines_with_their_replica_and_drops_the_oldest_past_capacity() {
        let log = GuestLog::new(20);
        log.append(1, Stream::Stdout, b"one\ntwo\n", false);
        log.append(2, Stream::Stderr, b"three", true);
        let texts = |lines: Vec<LogLine>| lines.into_iter().map(|l| l.text).collect::<Vec<_>>();
        // 3 + 3 + 5 + 18 bytes: only the newest fits in 20.
        assert_eq!(texts(log.lines(|_| true, None)), ["(output truncated)"]);
        let log = GuestLog::new(100);
        log.append(1, Stream::Stdout, b"one\ntwo\n", false);
        log.append(2, Stream::Stderr, b"three", false);
        assert_eq!(texts(log.lines(|_| true, None)), ["one", "two", "three"]);
        assert_eq!(texts(log.lines(|l| l.replica == 1, Some(1))), ["two"]);
        assert_eq!(
            texts(log.lines(|l| l.stream == Stream::Stderr, None)),
            ["three"]
        );
    }

    #[tokio::test]
    async fn a_follower_gets_the_tail_then_every_new_line() {
        let log = GuestLog::new(100);
        log.append(1, Stream::Stdout, b"old\n", false);
        let (kept, mut live) = log.follow(|_| true, Some(5));
        assert_eq!(kept.len(), 1);
        log.append(1, Stream::Stdout, b"new\n", false);
        assert_eq!(live.recv().await.expect("a live line").text, "new");
    }
}
