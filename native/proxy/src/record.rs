//! Capture record frames, byte for byte those of `monitor/sidecar/proxy/record.py`.
//!
//! A record frame is `<BIII` (format version 1, JSON header length, request body length, response
//! body length), the JSON header (the keys of `record._FIELDS`, then `client_headers` and
//! `client_address` when set, then `ids`), the request body, the
//! response body. A start frame is 25 bytes: 2, the trace id, the span id. Every frame is returned
//! with the channel's 4-byte little-endian length prefix already in front (`channel.py`).

use crate::trace::hex_into;

pub const FORMAT_VERSION: u8 = 1;
const START: u8 = 2;

/// What one captured exchange leaves: see `CaptureRecord` for the meaning of each field.
pub struct Record<'a> {
    pub api: &'a str,
    pub operation: &'a str,
    /// The request path as the client sent it (no query string), bytes as latin-1.
    pub path: &'a [u8],
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: &'a [u8],
    pub start_ns: u64,
    pub end_ns: u64,
    pub request_body: &'a [u8],
    pub request_size: u64,
    pub status: u16,
    pub content_type: &'a [u8],
    pub response_body: &'a [u8],
    pub response_size: u64,
    /// `(t_ns, offset)`: monotonic ns after the request's first byte, response bytes up to `offset`.
    pub chunks: &'a [(u64, u64)],
    pub headers_ns: Option<u64>,
    pub usage_requested: bool,
    pub error_type: &'a str,
    pub upstream: &'a str,
    pub server_address: &'a str,
    pub server_port: u16,
    /// The status the client got when it differs from the upstream's (a proxy error answer).
    pub client_status: Option<u16>,
    /// `(lower-case name, value)` of the configured identity headers the client sent, the first of a
    /// repeated one, in request order; empty: the key is left out (as the Python encoder does).
    pub client_headers: &'a [(Vec<u8>, &'a [u8])],
    /// The client's peer IP (no port); empty: left out.
    pub client_address: &'a str,
}

fn int(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn latin1(out: &mut Vec<u8>, b: &[u8]) {
    if b.is_ascii() {
        string(out, std::str::from_utf8(b).expect("ASCII is UTF-8"));
    } else {
        string(out, &b.iter().map(|&c| c as char).collect::<String>());
    }
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

/// The record as one length-prefixed frame.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut head = Vec::with_capacity(512 + r.chunks.len() * 24);
    head.push(b'{');
    key(&mut head, "api");
    string(&mut head, r.api);
    head.push(b',');
    key(&mut head, "operation");
    string(&mut head, r.operation);
    head.push(b',');
    key(&mut head, "path");
    latin1(&mut head, r.path);
    head.push(b',');
    key(&mut head, "trace_state");
    latin1(&mut head, r.trace_state);
    for (k, v) in [("start_ns", r.start_ns), ("end_ns", r.end_ns), ("request_size", r.request_size),
                   ("status", r.status as u64)] {
        head.push(b',');
        key(&mut head, k);
        int(&mut head, v);
    }
    head.push(b',');
    key(&mut head, "content_type");
    latin1(&mut head, r.content_type);
    head.push(b',');
    key(&mut head, "response_size");
    int(&mut head, r.response_size);
    head.push(b',');
    key(&mut head, "chunks");
    head.push(b'[');
    for (i, (t, o)) in r.chunks.iter().enumerate() {
        if i > 0 {
            head.push(b',');
        }
        head.push(b'[');
        int(&mut head, *t);
        head.push(b',');
        int(&mut head, *o);
        head.push(b']');
    }
    head.extend_from_slice(b"],");
    key(&mut head, "headers_ns");
    match r.headers_ns {
        Some(ns) => int(&mut head, ns),
        None => head.extend_from_slice(b"null"),
    }
    head.push(b',');
    key(&mut head, "usage_requested");
    head.extend_from_slice(if r.usage_requested { b"true" } else { b"false" });
    head.push(b',');
    key(&mut head, "error_type");
    string(&mut head, r.error_type);
    head.push(b',');
    key(&mut head, "upstream");
    string(&mut head, r.upstream);
    head.push(b',');
    key(&mut head, "attributes");
    head.push(b'{');
    key(&mut head, "server.address");
    string(&mut head, r.server_address);
    head.push(b',');
    key(&mut head, "server.port");
    int(&mut head, r.server_port as u64);
    if let Some(s) = r.client_status {
        head.push(b',');
        key(&mut head, "http.response.status_code");
        int(&mut head, s as u64);
    }
    head.extend_from_slice(b"},");
    if !r.client_headers.is_empty() {
        key(&mut head, "client_headers");
        head.push(b'{');
        for (i, (name, value)) in r.client_headers.iter().enumerate() {
            if i > 0 {
                head.push(b',');
            }
            latin1(&mut head, name);
            head.push(b':');
            latin1(&mut head, value);
        }
        head.extend_from_slice(b"},");
    }
    if !r.client_address.is_empty() {
        key(&mut head, "client_address");
        string(&mut head, r.client_address);
        head.push(b',');
    }
    key(&mut head, "ids");
    head.push(b'"');
    hex_into(&mut head, &r.trace_id);
    hex_into(&mut head, &r.span_id);
    if let Some(p) = r.parent_span_id {
        hex_into(&mut head, &p);
    }
    head.extend_from_slice(b"\"}");

    let payload = 13 + head.len() + r.request_body.len() + r.response_body.len();
    let mut frame = Vec::with_capacity(4 + payload);
    frame.extend_from_slice(&(payload as u32).to_le_bytes());
    frame.push(FORMAT_VERSION);
    frame.extend_from_slice(&(head.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(r.request_body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(r.response_body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&head);
    frame.extend_from_slice(r.request_body);
    frame.extend_from_slice(r.response_body);
    frame
}

/// A `CaptureStart` as one length-prefixed frame.
pub fn encode_start(trace_id: &[u8; 16], span_id: &[u8; 8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(29);
    frame.extend_from_slice(&25u32.to_le_bytes());
    frame.push(START);
    frame.extend_from_slice(trace_id);
    frame.extend_from_slice(span_id);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_the_python_json() {
        let r = Record {
            api: "openai", operation: "chat", path: b"/v1/chat/completions/\xe9", trace_id: [1; 16], span_id: [2; 8],
            parent_span_id: None, trace_state: b"", start_ns: 1, end_ns: 2, request_body: b"{}", request_size: 2,
            status: 0, content_type: b"", response_body: b"", response_size: 0, chunks: &[(5, 6), (7, 8)],
            headers_ns: None, usage_requested: false, error_type: "upstream_unreachable", upstream: "http://h:1",
            server_address: "h", server_port: 1, client_status: Some(502), client_headers: &[],
            client_address: "",
        };
        let f = encode(&r);
        let n_head = u32::from_le_bytes(f[5..9].try_into().unwrap()) as usize;
        let head = std::str::from_utf8(&f[17..17 + n_head]).unwrap();
        assert_eq!(head, concat!(
            r#"{"api":"openai","operation":"chat","path":"/v1/chat/completions/é","trace_state":"","#,
            r#""start_ns":1,"end_ns":2,"request_size":2,"status":0,"content_type":"","response_size":0,"#,
            r#""chunks":[[5,6],[7,8]],"headers_ns":null,"usage_requested":false,"error_type":"upstream_unreachable","#,
            r#""upstream":"http://h:1","attributes":{"server.address":"h","server.port":1,"#,
            r#""http.response.status_code":502},"ids":"010101010101010101010101010101010202020202020202"}"#));
        assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        assert_eq!(&f[f.len() - 2..], b"{}");
    }

    #[test]
    fn identity_fields_sit_between_attributes_and_ids() {
        let headers = [(b"authorization".to_vec(), &b"Bearer sk-\"x\xe9"[..]), (b"x-user-id".to_vec(), &b"u1"[..])];
        let r = Record {
            api: "openai", operation: "chat", path: b"/p", trace_id: [1; 16], span_id: [2; 8],
            parent_span_id: None, trace_state: b"", start_ns: 1, end_ns: 2, request_body: b"", request_size: 0,
            status: 200, content_type: b"", response_body: b"", response_size: 0, chunks: &[],
            headers_ns: None, usage_requested: false, error_type: "", upstream: "http://h:1",
            server_address: "h", server_port: 1, client_status: None, client_headers: &headers,
            client_address: "::1",
        };
        let f = encode(&r);
        let n_head = u32::from_le_bytes(f[5..9].try_into().unwrap()) as usize;
        let head = std::str::from_utf8(&f[17..17 + n_head]).unwrap();
        assert!(head.ends_with(concat!(
            r#""attributes":{"server.address":"h","server.port":1},"#,
            r#""client_headers":{"authorization":"Bearer sk-\"xé","x-user-id":"u1"},"client_address":"::1","#,
            r#""ids":"010101010101010101010101010101010202020202020202"}"#)), "{head}");
    }
}
