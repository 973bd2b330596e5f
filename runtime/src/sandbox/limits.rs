//! What one request may consume ([`SandboxLimits`]), and the store-level memory limiter that
//! enforces the memory part.
//!
//! Memory is limited through a `ResourceLimiter` that sums every linear memory in the
//! store, so the limit is the instance's total, whatever number of memories a
//! component brings. A refused growth is remembered: if the guest then fails, the
//! failure is reported as the memory limit it hit, not as the trap that followed.

use std::time::Duration;

/// What one request of a service may consume. Every field is enforced on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Total linear memory of the instance, in bytes.
    pub memory: u64,
    /// Fuel (roughly, wasm instructions) a request may burn.
    pub fuel: u64,
    /// Wall-clock time a request may take, instantiation included.
    pub timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_request_body: u64,
    /// Largest response body produced (a CGI guest's stdout), in bytes.
    pub max_response: u64,
    /// Guest stderr kept for the log per request, in bytes; the rest is dropped.
    pub max_stderr: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory: 64 << 20,
            fuel: 5_000_000_000,
            timeout: Duration::from_secs(10),
            max_request_body: 10 << 20,
            max_response: 16 << 20,
            max_stderr: 64 << 10,
        }
    }
}

/// Tables hold one pointer per element; this is far beyond what real guests use and
/// keeps a hostile `table.grow` from allocating gigabytes.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Enforces [`SandboxLimits::memory`] across all memories of a store.
pub(crate) struct MemoryLimiter {
    limit: u64,
    total: u64,
    /// The total the guest asked for when it was refused, if it ever was.
    pub(crate) refused: Option<u64>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            total: 0,
            refused: None,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let requested = self
            .total
            .saturating_sub(current as u64)
            .saturating_add(desired as u64);
        if requested > self.limit {
            self.refused = Some(requested);
            return Ok(false);
        }
        self.total = requested;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn limiter_sums_memories_and_remembers_refusal() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert_eq!(limiter.refused, None);
        assert!(!limiter.memory_growing(40, 41, None).unwrap());
        assert_eq!(limiter.refused, Some(101));
    }
}
