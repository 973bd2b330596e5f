//! A CGI guest that prints malformed CGI responses, for testing how the host rejects them.
//!
//! `?mode=` picks the defect:
//! `no-blank` ends without the blank line that closes the headers,
//! `bad-status` sends a non-numeric `Status:`,
//! `no-headers` starts with a header line that has no colon,
//! `exit` prints a valid response and then exits with status 3,
//! and anything else prints one line of text with no newline at all.

use std::io::Write as _;

fn main() {
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let output: &[u8] = match query_param(&query, "mode") {
        Some("no-blank") => b"Content-Type: text/plain\nX-Note: the blank line never comes\n",
        Some("bad-status") => b"Status: abc\n\nbody",
        Some("no-headers") => b"just some text\n\nmore text",
        Some("exit") => {
            print!("Content-Type: text/plain\n\nall good, but\n");
            std::process::exit(3);
        }
        _ => b"this is not a cgi response",
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(output).expect("writing the response");
    stdout.flush().expect("flushing the response");
}

/// Returns the value of `key` in a query string, undecoded.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then_some(value)
    })
}
