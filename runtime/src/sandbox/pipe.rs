//! Bounded in-memory stdout and stderr for guests.
//!
//! wasmtime's `MemoryOutputPipe` traps the guest when it fills up and cannot say
//! afterwards whether it overflowed. shoal needs two behaviours instead: a CGI stdout
//! that refuses writes past the response limit and remembers that it did (so the
//! caller gets "response too large" rather than a bare trap), and a stderr that keeps
//! the first bytes for the log and silently drops the rest (so chatty guests are not
//! killed for logging).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// What to do with writes past the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Refuse them: the guest sees a closed stream.
    Refuse,
    /// Accept and drop them.
    Drop,
}

/// A shared, bounded buffer that a guest writes to and the host reads afterwards.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    overflow: Overflow,
    buffer: Mutex<BytesMut>,
    overflowed: AtomicBool,
}

impl CappedPipe {
    pub(crate) fn new(capacity: u64, overflow: Overflow) -> CappedPipe {
        CappedPipe {
            inner: Arc::new(Inner {
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
                overflow,
                buffer: Mutex::new(BytesMut::new()),
                overflowed: AtomicBool::new(false),
            }),
        }
    }

    /// Whether the guest tried to write past the capacity.
    pub(crate) fn overflowed(&self) -> bool {
        self.inner.overflowed.load(Ordering::Relaxed)
    }

    /// Takes what was written so far, leaving the pipe empty and its overflow flag
    /// cleared, ready for the next request of a reused instance.
    pub(crate) fn take(&self) -> Bytes {
        let bytes = std::mem::take(&mut *self.inner.lock()).freeze();
        self.inner.overflowed.store(false, Ordering::Relaxed);
        bytes
    }

    /// Appends as much of `bytes` as fits and returns how much that was.
    fn append(&self, bytes: &[u8]) -> usize {
        let mut buffer = self.inner.lock();
        let room = self.inner.capacity.saturating_sub(buffer.len());
        let n = bytes.len().min(room);
        buffer.extend_from_slice(&bytes[..n]);
        if n < bytes.len() {
            self.inner.overflowed.store(true, Ordering::Relaxed);
        }
        n
    }

    fn room(&self) -> usize {
        self.inner.capacity.saturating_sub(self.inner.lock().len())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, BytesMut> {
        // A poisoned buffer only means a writer panicked mid-append; the bytes are
        // still bytes, so keep going rather than poison every later request.
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Larger than any single write a guest makes through WASI, so `check_write` never
/// makes a dropping pipe look full.
const DROP_PERMIT: usize = 1 << 20;

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let n = self.append(&bytes);
        if n < bytes.len() && self.inner.overflow == Overflow::Refuse {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        match self.inner.overflow {
            Overflow::Drop => Ok(DROP_PERMIT),
            Overflow::Refuse => match self.room() {
                0 => {
                    self.inner.overflowed.store(true, Ordering::Relaxed);
                    Err(StreamError::Closed)
                }
                room => Ok(room),
            },
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.append(buf);
        match self.inner.overflow {
            Overflow::Drop => Poll::Ready(Ok(buf.len())),
            Overflow::Refuse if n == 0 && !buf.is_empty() => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "response limit reached",
            ))),
            Overflow::Refuse => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusing_pipe_keeps_what_fits_and_reports_overflow() {
        let mut pipe = CappedPipe::new(5, Overflow::Refuse);
        pipe.write(Bytes::from_static(b"abc")).unwrap();
        assert!(!pipe.overflowed());
        assert!(matches!(
            pipe.write(Bytes::from_static(b"def")),
            Err(StreamError::Closed)
        ));
        assert!(pipe.overflowed());
        assert_eq!(pipe.take(), Bytes::from_static(b"abcde"));
    }

    #[test]
    fn dropping_pipe_accepts_everything_and_keeps_the_head() {
        let mut pipe = CappedPipe::new(4, Overflow::Drop);
        for _ in 0..10 {
            pipe.write(Bytes::from_static(b"xy")).unwrap();
        }
        assert_eq!(pipe.check_write().unwrap(), DROP_PERMIT);
        assert!(pipe.overflowed());
        assert_eq!(pipe.take(), Bytes::from_static(b"xyxy"));
    }
}
