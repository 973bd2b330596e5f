//! The key/value store of the Consul-compatible API: keys are strings, values raw bytes of at
//! most [`MAX_KV_VALUE_SIZE`], and each entry carries the change indexes that created and last
//! modified it, which is what check-and-set and blocking queries work from.

use shoal_spec::FieldError;

use crate::{Error, Result};

/// The largest value a key may hold, as in Consul: 512 KiB.
pub const MAX_KV_VALUE_SIZE: usize = 512 * 1024;

/// Refuses a write of a `value_len`-byte value at `key` that no backend may store: an empty
/// key, or a value over [`MAX_KV_VALUE_SIZE`].
pub fn check_put(key: &str, value_len: usize) -> Result<()> {
    if key.is_empty() {
        return Err(Error::Invalid(FieldError::new("key", "missing key name")));
    }
    if value_len > MAX_KV_VALUE_SIZE {
        return Err(Error::Invalid(FieldError::new(
            "value",
            format!("{value_len} bytes exceeds the limit of {MAX_KV_VALUE_SIZE} bytes"),
        )));
    }
    Ok(())
}

/// Refuses a delete of the empty key that is not recursive.
pub fn check_delete(key: &str, recurse: bool) -> Result<()> {
    if key.is_empty() && !recurse {
        return Err(Error::Invalid(FieldError::new("key", "missing key name")));
    }
    Ok(())
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// An opaque number clients attach to the value.
    pub flags: u64,
    /// The change index of the write that created the key.
    pub create_index: u64,
    /// The change index of the newest write of the key.
    pub modify_index: u64,
}
