//! The executor for WASI preview1 commands, speaking CGI/1.1 the way WAGI does, minus
//! WAGI's bugs.
//!
//! The request goes in as CGI variables, `argv` and stdin; the program's stdout is a
//! CGI response: a header block, a blank line, the body. Unlike WAGI, repeated
//! headers (several `Set-Cookie`) are kept in order, `CONTENT_TYPE` comes from the
//! request's `Content-Type`, and `Status` wins over the 302 that `Location` implies
//! whatever their order. Output past the response limit is refused as it is written.

use crate::logs::Stream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use wasmtime::{Engine, InstancePre, Linker, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use crate::cpu::Scheduled;
use crate::exec::Checkout;
use crate::exec::{RequestContext, ServiceConfig};
use crate::sandbox::{self, BoxError, CappedPipe, Metered, Metering, Overflow, ResponseBody};
use crate::{Error, Result};

/// The `T` of `Store<T>` for a CGI instance.
pub(crate) struct CgiState {
    wasi: WasiP1Ctx,
    metering: Metering,
}

impl Metered for CgiState {
    fn metering(&mut self) -> &mut Metering {
        &mut self.metering
    }
}

pub(crate) fn linker(engine: &Engine) -> anyhow::Result<Linker<CgiState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut CgiState| &mut state.wasi)?;
    Ok(linker)
}

/// Serves one request by running the command to completion.
pub(crate) async fn handle<B, C>(
    pre: &InstancePre<CgiState>,
    config: &ServiceConfig,
    request: http::Request<B>,
    context: RequestContext,
    checkout: C,
) -> Result<http::Response<ResponseBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Checkout,
{
    let limits = &config.limits;
    let limit = limits.max_request_body;
    if sandbox::content_length(request.headers()).is_some_and(|n| n > limit) {
        return Err(Error::RequestTooLarge { limit });
    }
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::RequestTooLarge { limit }
            } else {
                Error::Internal(anyhow::anyhow!("reading the request body: {e}"))
            }
        })?
        .to_bytes();

    let variables = variables(&parts, &context, body.len());
    let mut argv = config.args.clone();
    argv.extend(
        parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|a| !a.is_empty())
            .map(str::to_owned),
    );

    let stdout = CappedPipe::new(limits.max_response, Overflow::Refuse);
    let stderr = CappedPipe::new(limits.max_stderr, Overflow::Drop);
    let wasi = WasiCtx::builder()
        .stdin(MemoryInputPipe::new(body))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .envs(&config.env)
        .envs(&variables)
        .args(&argv)
        .build_p1();
    let throttle = checkout.throttle();
    let cpu = checkout.cpu();
    let metering = Metering::new(limits, throttle.clone(), cpu.clone());
    let mut store = Store::new(pre.module().engine(), CgiState { wasi, metering });
    sandbox::prepare_store(&mut store)?;
    sandbox::begin_request(&mut store, limits, cpu.clone())?;

    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    };
    let scheduled = Scheduled::new(run, cpu.clone(), sandbox::quota_charger(throttle));
    let outcome = tokio::time::timeout(limits.timeout, scheduled).await;
    sandbox::count_fuel(&store, limits, &cpu);
    let replica = checkout.replica_id();
    drop(checkout);
    sandbox::log_output(config, replica, Stream::Stderr, &stderr);
    if stdout.overflowed() {
        return Err(Error::ResponseTooLarge {
            limit: limits.max_response,
        });
    }
    match outcome {
        Err(_) => {
            return Err(Error::Timeout {
                limit: limits.timeout,
            });
        }
        Ok(Err(error)) => {
            match sandbox::guest_error(error, limits, &store.data_mut().metering().limiter) {
                Error::Exit(0) => {}
                error => return Err(error),
            }
        }
        Ok(Ok(())) => {}
    }
    let response = parse_response(stdout.take()).map_err(Error::BadCgiOutput)?;
    Ok(response.map(|body| {
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync()
    }))
}

/// The CGI/1.1 variables for a request, plus WAGI's extras.
fn variables(
    parts: &http::request::Parts,
    context: &RequestContext,
    body_len: usize,
) -> Vec<(String, String)> {
    let header = |name: HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let host = header(http::header::HOST);
    let (server_name, server_port) = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            (name.to_owned(), port.to_owned())
        }
        _ => (host.clone(), "80".to_owned()),
    };
    let raw_path = parts.uri.path();
    let path_info = percent_decode(raw_path);
    let remote = context
        .remote_addr
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut vars = vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
        (
            "SERVER_SOFTWARE",
            concat!("shoal/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
        ("SERVER_PROTOCOL", format!("{:?}", parts.version)),
        ("SERVER_NAME", server_name),
        ("SERVER_PORT", server_port),
        ("REQUEST_METHOD", parts.method.to_string()),
        ("SCRIPT_NAME", context.script_name.clone()),
        ("PATH_INFO", path_info.clone()),
        ("PATH_TRANSLATED", path_info),
        ("QUERY_STRING", parts.uri.query().unwrap_or("").to_owned()),
        ("CONTENT_TYPE", header(http::header::CONTENT_TYPE)),
        ("CONTENT_LENGTH", body_len.to_string()),
        ("REMOTE_ADDR", remote.clone()),
        ("REMOTE_HOST", remote),
        ("AUTH_TYPE", String::new()),
        ("REMOTE_USER", String::new()),
        ("X_MATCHED_ROUTE", format!("{}/...", context.script_name)),
        ("X_RAW_PATH_INFO", raw_path.to_owned()),
        (
            "X_FULL_URL",
            format!("http://{host}{}{}", context.script_name, parts.uri),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect::<Vec<_>>();
    let mut seen: Vec<(String, String)> = Vec::new();
    for (name, value) in &parts.headers {
        // Credentials and hop-by-hop headers stay with the gateway, as in WAGI.
        if name == http::header::AUTHORIZATION || name == http::header::CONNECTION {
            continue;
        }
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            None => seen.push((key, value)),
        }
    }
    vars.extend(seen);
    vars
}

/// Decodes `%XX` escapes in a path, leaving a `%` not followed by two hex digits as it is,
/// as CGI's `PATH_INFO` is decoded.
fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses a CGI response: header lines up to the first blank line, then the body.
fn parse_response(output: Bytes) -> Result<http::Response<Bytes>, String> {
    let mut response = http::Response::new(Bytes::new());
    let mut status = None;
    let mut location = false;
    let mut content_type = false;
    let mut offset = 0;
    let mut line_no = 0;
    loop {
        let Some(end) = output[offset..].iter().position(|&b| b == b'\n') else {
            return Err(if output.is_empty() {
                "the guest wrote nothing; a CGI response starts with headers such as Content-Type, then a blank line".to_owned()
            } else {
                "the output ended before the blank line that ends the headers".to_owned()
            });
        };
        let line = &output[offset..offset + end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        offset += end + 1;
        line_no += 1;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!(
                "header line {line_no} has no ':': {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            ));
        };
        let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim();
        let value = trim(&line[colon + 1..]);
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header line {line_no} has an invalid name: {name:?}"))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("header {name} has an invalid value"))?;
        if name.as_str() == "status" {
            let text = value.to_str().unwrap_or("");
            let code = text.split_whitespace().next().unwrap_or("");
            let parsed = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            status = Some(parsed.ok_or_else(|| {
                format!("invalid Status header {text:?}: expected a code such as \"404 Not Found\"")
            })?);
            continue;
        }
        location |= name == http::header::LOCATION;
        content_type |= name == http::header::CONTENT_TYPE;
        response.headers_mut().append(name, value);
    }
    if status.is_none() && !location && !content_type {
        return Err("no Content-Type, Status or Location header".to_owned());
    }
    *response.status_mut() = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    *response.body_mut() = output.slice(offset..);
    Ok(response)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<http::Response<Bytes>, String> {
        parse_response(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn keeps_repeated_headers_in_order() {
        let response =
            parse("Content-Type: text/plain\nSet-Cookie: a=1\r\nSet-Cookie: b=2\n\nbody").unwrap();
        let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(response.status(), 200);
        assert_eq!(response.body(), "body");
    }

    #[test]
    fn status_and_location() {
        assert_eq!(parse("Status: 404 Not Found\n\n").unwrap().status(), 404);
        let redirect = parse("Location: /elsewhere\n\n").unwrap();
        assert_eq!(redirect.status(), 302);
        assert_eq!(redirect.headers()["location"], "/elsewhere");
        // Status wins over Location's implied 302, in either order.
        assert_eq!(
            parse("Status: 301\nLocation: /x\n\n").unwrap().status(),
            301
        );
        assert_eq!(
            parse("Location: /x\nStatus: 307\n\n").unwrap().status(),
            307
        );
    }

    #[test]
    fn malformed_output_says_what_is_wrong() {
        assert!(parse("").unwrap_err().contains("wrote nothing"));
        assert!(
            parse("Content-Type: text/plain\nbody")
                .unwrap_err()
                .contains("before the blank line")
        );
        assert!(parse("just text\n\n").unwrap_err().contains("has no ':'"));
        assert!(
            parse("Status: abc\n\n")
                .unwrap_err()
                .contains("invalid Status")
        );
        assert!(
            parse("X-Thing: 1\n\n")
                .unwrap_err()
                .contains("no Content-Type, Status or Location")
        );
        assert!(
            parse("Bad Name: 1\n\n")
                .unwrap_err()
                .contains("invalid name")
        );
    }

    #[test]
    fn decodes_paths() {
        assert_eq!(percent_decode("/a%20b/%zz"), "/a b/%zz");
    }
}
