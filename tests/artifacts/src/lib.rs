//! Paths to the test guests from `guests/`, built by this crate's `build.rs`.
//!
//! Each guest crate `foo-http` or `foo-cgi` becomes a constant `FOO_HTTP` / `FOO_CGI` holding the absolute path of its `.wasm` file.
//! `HELLO_CGI_P2` is `hello-cgi` built for `wasm32-wasip2`: a wasi:cli command component without the HTTP export.
//! `foreach_guest!(mac)` expands to `mac!(foo_http);` for every guest, so a test suite can check at compile time that each guest has a test:
//!
//! ```text
//! macro_rules! assert_test_exists {
//!     ($name:ident) => {
//!         #[allow(unused_imports)]
//!         use self::$name as _;
//!     };
//! }
//! guest_artifacts::foreach_guest!(assert_test_exists);
//! ```
#![warn(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/gen.rs"));

/// Reads a guest's `.wasm` file, given one of this crate's path constants.
///
/// # Panics
///
/// If the file cannot be read, which means the guest build is broken rather than the test.
pub fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|error| panic!("failed to read guest artifact {path}: {error}"))
}
