//! The key/value store of the Consul-compatible API: keys are strings, values raw bytes of at
//! most [`MAX_KV_VALUE_SIZE`], and each entry carries the change indexes that created and last
//! modified it, which is what check-and-set and blocking queries work from.

/// The largest value a key may hold, as in Consul: 512 KiB.
pub const MAX_KV_VALUE_SIZE: usize = 512 * 1024;

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
