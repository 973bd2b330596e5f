//! A CGI guest that describes the CGI environment it ran in as JSON.
//!
//! Tests use it to check the request variables, `HTTP_*` headers, arguments and stdin the host passes, and how the host turns CGI response headers into HTTP.
//! It always sets two cookies (`a=1`, then `b=2`); `?status=NNN` adds a `Status:` header and `?location=X` a `Location:` header (percent-decoded).

use std::io::{Read as _, Write as _};

use serde_json::{Map, Value, json};

fn main() {
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let mut headers = String::from(
        "Content-Type: application/json\nSet-Cookie: a=1; Path=/\nSet-Cookie: b=2; Path=/\n",
    );
    if let Some(status) = query_param(&query, "status") {
        headers.push_str(&format!("Status: {}\n", percent_decode(status)));
    }
    if let Some(location) = query_param(&query, "location") {
        headers.push_str(&format!("Location: {}\n", percent_decode(location)));
    }

    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .expect("reading stdin");
    let http_headers: Map<String, Value> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with("HTTP_")
                .then(|| (name, Value::String(value.to_string_lossy().into_owned())))
        })
        .collect();
    let description = json!({
        "method": env_or_null("REQUEST_METHOD"),
        "path_info": env_or_null("PATH_INFO"),
        "script_name": env_or_null("SCRIPT_NAME"),
        "query": env_or_null("QUERY_STRING"),
        "content_type": env_or_null("CONTENT_TYPE"),
        "content_length": env_or_null("CONTENT_LENGTH"),
        "headers": http_headers,
        "args": std::env::args_os().map(|arg| arg.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        "body": String::from_utf8_lossy(&body),
    });

    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{headers}\n{description}").expect("writing the response");
    stdout.flush().expect("flushing the response");
}

fn env_or_null(name: &str) -> Value {
    std::env::var_os(name).map_or(Value::Null, |value| {
        Value::String(value.to_string_lossy().into_owned())
    })
}

/// Returns the value of `key` in a query string, undecoded.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then_some(value)
    })
}

/// Decodes `%XX` escapes and `+` as a space; invalid escapes are kept as they are.
fn percent_decode(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut byte_idx = 0;
    while byte_idx < bytes.len() {
        let hex = bytes
            .get(byte_idx + 1..byte_idx + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok());
        match (
            bytes[byte_idx],
            hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()),
        ) {
            (b'%', Some(value)) => {
                decoded.push(value);
                byte_idx += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                byte_idx += 1;
            }
            (other, _) => {
                decoded.push(other);
                byte_idx += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
