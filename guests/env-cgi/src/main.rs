//! A CGI guest that dumps its whole environment and argument list as JSON.
//!
//! Tests use it to check that the host passes exactly the CGI variables and nothing of its own environment.

use std::io::Write as _;

use serde_json::{Map, Value, json};

fn main() {
    let env: Map<String, Value> = std::env::vars_os()
        .map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                Value::String(value.to_string_lossy().into_owned()),
            )
        })
        .collect();
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let mut stdout = std::io::stdout().lock();
    write!(
        stdout,
        "Content-Type: application/json\n\n{}",
        json!({ "env": env, "args": args })
    )
    .expect("writing the response");
    stdout.flush().expect("flushing the response");
}
