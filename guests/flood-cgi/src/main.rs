//! A CGI guest that writes a lot of output, for testing the host's output limits.
//!
//! `?bytes=N` (default 64 MiB) sets how many `x` bytes go to stdout after the headers, and `?stderr=N` (default 0) how many `e` bytes go to stderr.
//! A failed stdout write panics, which the host sees as a trap; stderr failures are ignored because stderr is only diagnostics.

use std::io::Write as _;

const CHUNK_SIZE: usize = 64 * 1024;

fn main() {
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let n_stdout_bytes = query_param(&query, "bytes")
        .and_then(|n| n.parse().ok())
        .unwrap_or(64 * 1024 * 1024);
    let n_stderr_bytes = query_param(&query, "stderr")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);

    let mut stderr = std::io::stderr().lock();
    let _ = write_repeated(&mut stderr, b'e', n_stderr_bytes);
    let _ = stderr.flush();

    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(b"Content-Type: text/plain\n\n")
        .expect("writing the headers");
    write_repeated(&mut stdout, b'x', n_stdout_bytes).expect("writing the body");
    stdout.flush().expect("flushing the body");
}

/// Writes `n_bytes` copies of `byte` in chunks of at most `CHUNK_SIZE`.
fn write_repeated(writer: &mut impl std::io::Write, byte: u8, n_bytes: u64) -> std::io::Result<()> {
    let chunk = [byte; CHUNK_SIZE];
    let mut n_remaining = n_bytes;
    while n_remaining > 0 {
        let n_chunk = usize::try_from(n_remaining).map_or(CHUNK_SIZE, |n| n.min(CHUNK_SIZE));
        writer.write_all(&chunk[..n_chunk])?;
        n_remaining -= n_chunk as u64;
    }
    Ok(())
}

/// Returns the value of `key` in a query string, undecoded.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then_some(value)
    })
}
