//! The proxy's configuration: one JSON object (`--config-json`), checked once at start.
//!
//! The Python side (`monitor/sidecar/proxy/native.py`) builds it from `ProxySettings`, plus the
//! capture socket, the metrics port and the route table of `monitor/sidecar/proxy/capture.py`
//! (so the two implementations capture the same paths). A field that is missing takes the same
//! default as `ProxySettings`; an unknown field, a wrong type or a bad value fails the start.

use serde_json::{Map, Value};
use std::time::Duration;

/// The upstream base URL, split as the Python `UpstreamPool` splits it (`urlsplit`).
#[derive(Clone)]
pub struct Upstream {
    /// `http://host:port[/prefix]` without a trailing slash: the records' `upstream`.
    pub base: String,
    /// Lowercased host name, IPv6 without brackets (the records' `server.address`).
    pub host: String,
    pub port: u16,
    /// Path prefix put before every request target.
    pub prefix: Vec<u8>,
    /// `Host` header value sent upstream (port omitted when it is the scheme's default).
    pub host_header: Vec<u8>,
}

/// One of `proxy.routes`: a requested model name or glob, its upstream (`crate::routing` matches them).
pub struct ModelRoute {
    pub pattern: String,
    pub upstream: Upstream,
    /// `Bearer <key>` for a managed route; None: the client's own header goes on.
    pub auth: Option<Vec<u8>>,
}

/// A captured route: path (no trailing slash) -> (API dialect, operation name).
pub struct Route {
    pub path: String,
    pub api: String,
    pub operation: String,
}

pub struct Config {
    pub upstream: Upstream,
    pub host: String,
    pub port: u16,
    /// SO_REUSEPORT: several processes listen on the one port.
    pub reuse_port: bool,
    /// `Bearer <token>` as the client must send it; None: no auth.
    pub auth: Option<Vec<u8>>,
    pub max_request: u64,
    pub max_capture: usize,
    /// `request_usage: auto`.
    pub request_usage: bool,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_timeout: Duration,
    pub drain: Duration,
    /// Unix socket of the pipeline's `RecordReceiver`; None: records are built and discarded.
    pub capture_socket: Option<String>,
    pub capture_buffer_bytes: usize,
    pub metrics_host: String,
    pub metrics_port: u16,
    pub routes: Vec<Route>,
    /// Request headers (lower case) copied into each record for the client's identity
    /// (`client_headers` of `CaptureRecord`); never `authorization` when `auth` is set (then it
    /// carries the proxy's own token, the same for every client).
    pub client_headers: Vec<Vec<u8>>,
    /// `proxy.routes`: upstreams chosen by the requested model, in order (first match wins).
    pub model_routes: Vec<ModelRoute>,
    /// What records of OpenAI SSE streams carry (`crate::digest`): `on` (default) the reassembled
    /// answer instead of the stream, `off` the stream, `both` (the parity test).
    pub digest: crate::digest::Mode,
}

const MIB: u64 = 1024 * 1024;
const KNOWN: &[&str] = &[
    "upstream", "host", "port", "workers", "reuse_port", "auth_token", "max_request_bytes",
    "max_capture_bytes", "header_timeout_s", "idle_timeout_s", "upstream_timeout_s", "request_usage",
    "drain_s", "capture_socket", "capture_buffer_bytes", "metrics_host", "metrics_port", "routes", "client_headers",
    "model_routes", "digest",
];

/// The default route table: a copy of `capture.ROUTES`, used only when the config has none.
const DEFAULT_ROUTES: &[(&str, &str, &str)] = &[
    ("/v1/chat/completions", "openai", "chat"),
    ("/v1/completions", "openai", "text_completion"),
    ("/v1/embeddings", "openai", "embeddings"),
    ("/api/chat", "ollama", "chat"),
    ("/api/generate", "ollama", "text_completion"),
    ("/api/embed", "ollama", "embeddings"),
    ("/api/embeddings", "ollama", "embeddings"),
];

impl Config {
    pub fn from_json(text: &str) -> Result<Config, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("config is not JSON: {e}"))?;
        let o = v.as_object().ok_or("config must be a JSON object")?;
        if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!("unknown config field {k:?}"));
        }
        let url = opt_str(o, "upstream")?.ok_or("config needs \"upstream\" (the model server's URL)")?;
        let workers = num(o, "workers", 1.0)?;
        let reuse_port = match o.get("reuse_port") {
            None | Some(Value::Null) => workers > 1.0,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("\"reuse_port\" must be true or false".into()),
        };
        let request_usage = match opt_str(o, "request_usage")?.as_deref() {
            None | Some("auto") => true,
            Some("no") => false,
            Some(other) => return Err(format!("\"request_usage\" must be auto or no (got {other:?})")),
        };
        let digest = match opt_str(o, "digest")?.as_deref() {
            None | Some("on") => crate::digest::Mode::On,
            Some("off") => crate::digest::Mode::Off,
            Some("both") => crate::digest::Mode::Both,
            Some(other) => return Err(format!("\"digest\" must be on, off or both (got {other:?})")),
        };
        let auth = opt_str(o, "auth_token")?.map(|t| format!("Bearer {t}").into_bytes());
        let mut wanted = client_headers(o.get("client_headers"))?;
        if auth.is_some() {
            wanted.retain(|h| h != b"authorization");
        }
        Ok(Config {
            upstream: parse_upstream(&url)?,
            host: opt_str(o, "host")?.unwrap_or_else(|| "127.0.0.1".into()),
            port: port(o, "port", 8080)?,
            reuse_port,
            auth,
            max_request: positive(o, "max_request_bytes", (32 * MIB) as f64)? as u64,
            max_capture: num(o, "max_capture_bytes", (4 * MIB) as f64)? as usize,
            request_usage,
            header_timeout: seconds(o, "header_timeout_s", 30.0)?,
            idle_timeout: seconds(o, "idle_timeout_s", 75.0)?,
            upstream_timeout: seconds(o, "upstream_timeout_s", 600.0)?,
            drain: Duration::from_secs_f64(num(o, "drain_s", 2.0)?),
            capture_socket: opt_str(o, "capture_socket")?,
            capture_buffer_bytes: positive(o, "capture_buffer_bytes", (64 * MIB) as f64)? as usize,
            metrics_host: opt_str(o, "metrics_host")?.unwrap_or_else(|| "127.0.0.1".into()),
            metrics_port: port(o, "metrics_port", 0)?,
            routes: routes(o.get("routes"))?,
            client_headers: wanted,
            model_routes: model_routes(o.get("model_routes"))?,
            digest,
        })
    }

    /// (api, operation) of a POST to `path` (query string already cut), as `capture.operation_of`.
    pub fn route_of(&self, path: &str) -> Option<&Route> {
        let trimmed = path.trim_end_matches('/');
        let key = if trimmed.is_empty() { path } else { trimmed };
        self.routes.iter().find(|r| r.path == key)
    }
}

fn opt_str(o: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key:?} must be a string")),
    }
}

fn num(o: &Map<String, Value>, key: &str, default: f64) -> Result<f64, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f >= 0.0 && f.is_finite() => Ok(f),
            _ => Err(format!("{key:?} must be a number >= 0")),
        },
        Some(_) => Err(format!("{key:?} must be a number")),
    }
}

fn positive(o: &Map<String, Value>, key: &str, default: f64) -> Result<f64, String> {
    let v = num(o, key, default)?;
    if v > 0.0 { Ok(v) } else { Err(format!("{key:?} must be > 0")) }
}

fn seconds(o: &Map<String, Value>, key: &str, default: f64) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(positive(o, key, default)?))
}

fn port(o: &Map<String, Value>, key: &str, default: u16) -> Result<u16, String> {
    let v = num(o, key, default as f64)?;
    if v.fract() == 0.0 && v <= 65535.0 { Ok(v as u16) } else { Err(format!("{key:?} must be a port (0-65535)")) }
}

/// `client_headers`: a list of header names, kept lower case, each once (default: none).
fn client_headers(v: Option<&Value>) -> Result<Vec<Vec<u8>>, String> {
    let bad = || "\"client_headers\" must be a list of header names".to_string();
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad()),
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for item in items {
        let name = item.as_str().ok_or_else(bad)?.trim().to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("\"client_headers\": {name:?} is not a header name"));
        }
        if !out.iter().any(|h| h == name.as_bytes()) {
            out.push(name.into_bytes());
        }
    }
    Ok(out)
}

fn routes(v: Option<&Value>) -> Result<Vec<Route>, String> {
    let Some(Value::Object(m)) = v else {
        if matches!(v, None | Some(Value::Null)) {
            return Ok(DEFAULT_ROUTES
                .iter()
                .map(|(p, a, op)| Route { path: p.to_string(), api: a.to_string(), operation: op.to_string() })
                .collect());
        }
        return Err("\"routes\" must map a path to [api, operation]".into());
    };
    let mut out = Vec::new();
    for (path, pair) in m {
        match pair.as_array().map(|a| a.as_slice()) {
            Some([Value::String(api), Value::String(op)]) => {
                out.push(Route { path: path.clone(), api: api.clone(), operation: op.clone() })
            }
            _ => return Err(format!("route {path:?} must be [api, operation]")),
        }
    }
    Ok(out)
}

/// `model_routes`: `[{"model": GLOB, "upstream": URL, "authorization": "Bearer KEY" | null}, ...]`.
fn model_routes(v: Option<&Value>) -> Result<Vec<ModelRoute>, String> {
    let bad = || "\"model_routes\" must be a list of {model, upstream, authorization}".to_string();
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad()),
    };
    let mut out = Vec::new();
    for item in items {
        let o = item.as_object().ok_or_else(bad)?;
        if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "model" | "upstream" | "authorization")) {
            return Err(format!("unknown model_routes field {k:?}"));
        }
        let pattern = opt_str(o, "model")?.filter(|m| !m.is_empty()).ok_or_else(bad)?;
        let url = opt_str(o, "upstream")?.ok_or_else(bad)?;
        let upstream = parse_upstream(&url).map_err(|e| format!("proxy.routes {pattern:?}: {e}"))?;
        let auth = opt_str(o, "authorization")?.map(String::into_bytes);
        if auth.as_ref().is_some_and(|a| a.iter().any(|&b| b == b'\r' || b == b'\n')) {
            return Err(format!("proxy.routes {pattern:?}: the key holds a line break"));
        }
        out.push(ModelRoute { pattern, upstream, auth });
    }
    Ok(out)
}

/// `http://host[:port][/prefix]` as `UpstreamPool` reads it. https is the Python proxy's (no TLS here).
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let base = url.trim_end_matches('/');
    let bad = || format!("proxy.upstream must be http(s)://host[:port] (got {url:?})");
    let (scheme, rest) = base.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "https" {
        return Err(format!("the native proxy speaks plain http to the upstream; {url:?} needs the Python proxy \
                            (proxy.implementation: python)"));
    }
    if scheme != "http" {
        return Err(bad());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (netloc, tail) = rest.split_at(end);
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let hostport = netloc.rsplit_once('@').map_or(netloc, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port in proxy.upstream {url:?}"))?,
    };
    let host = host.to_ascii_lowercase();
    let shown = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let host_header = if port == 80 { shown } else { format!("{shown}:{port}") };
    Ok(Upstream { base: base.to_string(), host, port, prefix: path.as_bytes().to_vec(), host_header: host_header.into_bytes() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_split_like_urlsplit() {
        let u = parse_upstream("http://LocalHost:8000/v/").unwrap();
        assert_eq!((u.base.as_str(), u.host.as_str(), u.port), ("http://LocalHost:8000/v", "localhost", 8000));
        assert_eq!((u.prefix.as_slice(), u.host_header.as_slice()), (&b"/v"[..], &b"localhost:8000"[..]));
        let u = parse_upstream("http://[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.host_header.as_slice()), ("::1", 80, &b"[::1]"[..]));
        assert!(parse_upstream("https://x").is_err() && parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://:80").is_err());
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c = Config::from_json(r#"{"upstream": "http://127.0.0.1:9"}"#).unwrap();
        assert_eq!((c.port, c.max_request, c.request_usage, c.reuse_port), (8080, 32 << 20, true, false));
        assert_eq!(c.route_of("/v1/chat/completions/").unwrap().operation, "chat");
        assert!(c.route_of("/").is_none());
        assert!(Config::from_json(r#"{"upstream": "http://x", "nope": 1}"#).is_err());
        assert!(Config::from_json(r#"{"upstream": "http://x", "workers": 2}"#).unwrap().reuse_port);
    }

    #[test]
    fn model_routes_are_checked() {
        let c = Config::from_json(r#"{"upstream": "http://x", "model_routes": [
            {"model": "gpt*", "upstream": "http://m:81/v", "authorization": "Bearer k"},
            {"model": "v2", "upstream": "http://y"}]}"#).unwrap();
        assert_eq!(c.model_routes.len(), 2);
        assert_eq!((c.model_routes[0].upstream.port, c.model_routes[0].auth.as_deref()), (81, Some(&b"Bearer k"[..])));
        assert!(c.model_routes[1].auth.is_none());
        for bad in [r#"[{"model": "m", "upstream": "https://y"}]"#, r#"[{"model": "", "upstream": "http://y"}]"#,
                    r#"[{"model": "m"}]"#, r#"[{"model": "m", "upstream": "http://y", "key": 1}]"#, r#"{}"#,
                    r#"[{"model": "m", "upstream": "http://y", "authorization": "a\nb"}]"#] {
            let text = format!(r#"{{"upstream": "http://x", "model_routes": {bad}}}"#);
            assert!(Config::from_json(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_headers_lower_case_and_never_the_proxys_own_token() {
        assert!(Config::from_json(r#"{"upstream": "http://x"}"#).unwrap().client_headers.is_empty());
        let c = Config::from_json(r#"{"upstream": "http://x", "client_headers": ["Authorization", " X-User-Id", "x-user-id"]}"#)
            .unwrap();
        assert_eq!(c.client_headers, vec![b"authorization".to_vec(), b"x-user-id".to_vec()]);
        let c = Config::from_json(r#"{"upstream": "http://x", "auth_token": "t", "client_headers": ["authorization", "x-api-key"]}"#)
            .unwrap();
        assert_eq!(c.client_headers, vec![b"x-api-key".to_vec()]);
        assert!(Config::from_json(r#"{"upstream": "http://x", "client_headers": "authorization"}"#).is_err());
        assert!(Config::from_json(r#"{"upstream": "http://x", "client_headers": [1]}"#).is_err());
        assert!(Config::from_json(r#"{"upstream": "http://x", "client_headers": ["a b"]}"#).is_err());
    }
}
