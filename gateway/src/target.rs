//! Where a request goes: the service it names, the prefix consumed to find it, and the URI the
//! service sees.

use http::Uri;

/// A request's service and what is left of its URI.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) service: String,
    pub(crate) prefix: String,
    pub(crate) uri: Uri,
}

/// The service `Host: {service}.{domain}` names, else the first path segment.
pub(crate) fn target(uri: &Uri, host: Option<&str>, domain: &str) -> Option<Target> {
    if let Some(host) = host {
        let host = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        if let Some(service) = host.strip_suffix(domain).and_then(|s| s.strip_suffix('.'))
            && !service.is_empty()
            && !service.contains('.')
        {
            return Some(Target {
                service: service.to_owned(),
                prefix: String::new(),
                uri: uri.clone(),
            });
        }
    }
    let path = uri.path();
    let rest = path.strip_prefix('/')?;
    let (service, rest) = rest.split_once('/').map_or((rest, ""), |(s, r)| (s, r));
    if service.is_empty() {
        return None;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    Some(Target {
        service: service.to_owned(),
        prefix: format!("/{service}"),
        uri: Uri::builder().path_and_query(path_and_query).build().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(uri: &str, host: Option<&str>) -> Option<(String, String, String)> {
        target(&uri.parse().unwrap(), host, "localhost")
            .map(|t| (t.service, t.prefix, t.uri.to_string()))
    }

    #[test]
    fn routes_by_path_and_by_host() {
        let s = |a: &str, b: &str, c: &str| Some((a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(t("/hello/a/b?x=1", None), s("hello", "/hello", "/a/b?x=1"));
        assert_eq!(t("/hello", None), s("hello", "/hello", "/"));
        assert_eq!(
            t("/hello/", Some("127.0.0.1:8080")),
            s("hello", "/hello", "/")
        );
        assert_eq!(
            t("/a/b", Some("hello.localhost:8080")),
            s("hello", "", "/a/b")
        );
        assert_eq!(t("/a/b", Some("hello.localhost")), s("hello", "", "/a/b"));
        assert_eq!(
            t("/hello/x", Some("localhost:8080")),
            s("hello", "/hello", "/x")
        );
        assert_eq!(t("/", None), None);
    }
}
