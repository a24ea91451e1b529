//! HTTP/1.x on the wire: request heads as llhttp (httptools) accepts them, the proxy's JSON error
//! answers, chunked bodies. Pure: no I/O.

use std::ops::Range;

/// Largest request head (request line and headers) accepted: 431 past it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The methods llhttp knows (HTTP mode); any other is a malformed request there too.
const METHODS: &[&[u8]] = &[
    b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"TRACE", b"COPY", b"LOCK", b"MKCOL",
    b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND", b"REBIND", b"UNBIND", b"ACL", b"REPORT",
    b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PATCH",
    b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE", b"QUERY",
];

/// Headers that belong to one connection: never forwarded (nor the ones `Connection` names).
pub const HOP_BY_HOP: &[&[u8]] = &[
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer", b"trailers",
    b"transfer-encoding", b"upgrade",
];

pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A whole JSON error response in the OpenAI API's shape (`_exchange.error_response`).
pub fn error_response(status: u16, kind: &str, code: &str, message: &str, close: bool) -> Vec<u8> {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "code": code}}).to_string();
    let mut out = format!("HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                          reason(status), body.len(), if close { "Connection: close\r\n" } else { "" })
        .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Why a request is answered with an error and its connection closed.
#[derive(Debug)]
pub struct Reject {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    /// Already counted in `monitor_proxy_requests_total` (under its route).
    pub counted: bool,
}

impl Reject {
    pub fn bad(message: &str) -> Reject {
        Reject { status: 400, kind: "invalid_request_error", code: "bad_request",
                 message: format!("malformed HTTP request: {message}"), counted: false }
    }

    fn too_large(message: String) -> Reject {
        Reject { status: 431, kind: "invalid_request_error", code: "request_header_too_large", message, counted: false }
    }
}

/// A parsed request head; ranges index `raw` (a copy of the head's bytes).
#[derive(Debug)]
pub struct RequestHead {
    pub raw: Vec<u8>,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub http11: bool,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

impl RequestHead {
    pub fn method(&self) -> &[u8] {
        &self.raw[self.method.clone()]
    }
    pub fn target(&self) -> &[u8] {
        &self.raw[self.target.clone()]
    }
    pub fn name(&self, i: usize) -> &[u8] {
        &self.raw[self.headers[i].0.clone()]
    }
    pub fn value(&self, i: usize) -> &[u8] {
        &self.raw[self.headers[i].1.clone()]
    }
}

fn span(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Parse a request head at the start of `buf`: Ok(None) while incomplete, Ok(Some((head, its
/// length))) once complete, Err for what llhttp refuses (and heads over [`MAX_HEAD_BYTES`]).
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, Reject> {
    let mut small = [httparse::EMPTY_HEADER; 64];
    let mut big;
    let mut req = httparse::Request::new(&mut small);
    let mut status = req.parse(buf);
    if matches!(status, Err(httparse::Error::TooManyHeaders)) {
        big = vec![httparse::EMPTY_HEADER; 8192];
        req = httparse::Request::new(&mut big);
        status = req.parse(buf);
    }
    let len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(Reject::too_large(format!("request head over {MAX_HEAD_BYTES} bytes")));
            }
            return Ok(None);
        }
        Err(httparse::Error::Version) => {
            let line = &buf[..buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len())];
            if line.ends_with(b" HTTP/2.0") || line.ends_with(b" HTTP/0.9") {
                return Err(Reject { status: 505, kind: "invalid_request_error", code: "http_version_not_supported",
                                    message: "HTTP/1.x only".into(), counted: false });
            }
            return Err(Reject::bad("Invalid HTTP version"));
        }
        Err(httparse::Error::Token) if !buf.contains(&b' ') || !METHODS.iter().any(|m| buf.starts_with(m)) => {
            return Err(Reject::bad("Invalid method encountered"));
        }
        Err(httparse::Error::HeaderName) => return Err(Reject::bad("Invalid header token")),
        Err(e) => return Err(Reject::bad(&e.to_string())),
    };
    let method = req.method.unwrap_or("").as_bytes();
    if !METHODS.contains(&method) {
        return Err(Reject::bad("Invalid method encountered"));
    }
    let target = req.path.unwrap_or("").as_bytes();
    if target.len() > MAX_HEAD_BYTES {
        return Err(Reject::too_large("request line too long".into()));
    }
    if target.iter().any(|&b| b >= 0x80) {
        return Err(Reject::bad("Invalid char in url path"));
    }
    let mut size = target.len();
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        size += h.name.len() + h.value.len() + 4;
        headers.push((span(buf, h.name.as_bytes()), span(buf, h.value)));
    }
    if size > MAX_HEAD_BYTES {
        return Err(Reject::too_large(format!("request head over {MAX_HEAD_BYTES} bytes")));
    }
    let head = RequestHead {
        raw: buf[..len].to_vec(),
        method: span(buf, method),
        target: span(buf, target),
        http11: req.version == Some(1),
        headers,
    };
    Ok(Some((head, len)))
}

/// True when the comma-separated header value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Body framing of a message (request or response).
pub enum Framing {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// A response delimited by the server's close.
    UntilClose,
}

#[derive(Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
    digits: bool,
}

#[derive(Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size's digits: `;extensions` up to the line end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Trailer lines after the last chunk; `bool`: at the start of a line.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

pub enum Piece<'a> {
    Data(&'a [u8]),
    /// The terminating chunk and its trailers have been read.
    End,
}

impl ChunkedDecoder {
    /// Decode from `buf[*pos..]`: the next piece of body data, or End, or None when `buf` is
    /// consumed; `*pos` advances past what was decoded. Err: not chunked encoding (llhttp's words).
    pub fn next<'a>(&mut self, buf: &'a [u8], pos: &mut usize) -> Result<Option<Piece<'a>>, &'static str> {
        while *pos < buf.len() {
            let b = buf[*pos];
            match self.state {
                ChunkState::Size => {
                    let d = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b';' | b' ' | b'\t' if self.digits => {
                            self.state = ChunkState::Ext;
                            *pos += 1;
                            continue;
                        }
                        b'\r' if self.digits => {
                            self.state = ChunkState::SizeLf;
                            *pos += 1;
                            continue;
                        }
                        _ => return Err("Invalid character in chunk size"),
                    };
                    self.remaining = self.remaining.checked_mul(16).ok_or("Chunk size overflow")? + d as u64;
                    self.digits = true;
                    *pos += 1;
                }
                ChunkState::Ext => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err("Missing expected CR after chunk extension");
                    }
                    *pos += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("Missing expected LF after chunk size");
                    }
                    *pos += 1;
                    self.state = if self.remaining == 0 { ChunkState::Trailer(true) } else { ChunkState::Data };
                }
                ChunkState::Data => {
                    let n = (buf.len() - *pos).min(self.remaining as usize);
                    let piece = &buf[*pos..*pos + n];
                    *pos += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Some(Piece::Data(piece)));
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err("Expected LF after chunk data");
                    }
                    *pos += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("Expected LF after chunk data");
                    }
                    *pos += 1;
                    self.state = ChunkState::Size;
                    self.digits = false;
                }
                ChunkState::Trailer(line_start) => {
                    *pos += 1;
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf(line_start);
                    } else if b == b'\n' {
                        return Err("Missing expected CR after header value");
                    } else {
                        self.state = ChunkState::Trailer(false);
                    }
                }
                ChunkState::TrailerLf(line_start) => {
                    if b != b'\n' {
                        return Err("Missing expected LF after header value");
                    }
                    *pos += 1;
                    if line_start {
                        self.state = ChunkState::Done;
                        return Ok(Some(Piece::End));
                    }
                    self.state = ChunkState::Trailer(true);
                }
                ChunkState::Done => return Ok(None),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), &'static str> {
        let mut d = ChunkedDecoder::default();
        let (mut out, mut end) = (Vec::new(), false);
        let mut fed = Vec::new();
        let mut pos = 0;
        for part in input.chunks(step) {
            fed.extend_from_slice(part);
            while let Some(p) = d.next(&fed, &mut pos)? {
                match p {
                    Piece::Data(b) => out.extend_from_slice(b),
                    Piece::End => end = true,
                }
            }
        }
        Ok((out, end))
    }

    #[test]
    fn chunked_at_every_step() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..body.len() {
            assert_eq!(decode(body, step).unwrap(), (b"hello 0123456789".to_vec(), true));
        }
        assert!(decode(b"zz\r\n", 4).is_err());
        assert!(decode(b"3\nabc\n0\n\n", 4).is_err());
        assert!(decode(b"3\r\nabcd\r\n", 4).is_err());
        assert!(decode(b"\r\n", 4).is_err());
    }

    #[test]
    fn request_heads() {
        let (h, n) = parse_request(b"POST /v1/x?y HTTP/1.1\r\nHost: a\r\nX-B: c \r\n\r\nbody").unwrap().unwrap();
        assert_eq!((h.method(), h.target(), h.http11, n), (&b"POST"[..], &b"/v1/x?y"[..], true, 43));
        assert_eq!((h.name(1), h.value(1)), (&b"X-B"[..], &b"c"[..]));
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert_eq!(parse_request(b"GARBAGE\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse_request(b"get / HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse_request(b"GET / HTTP/2.0\r\n\r\n").unwrap_err().status, 505);
        assert_eq!(parse_request(b"GET / HTTP/1.2\r\n\r\n").unwrap_err().status, 400);
        let long = [b"GET /".as_slice(), &[b'a'; 70000], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(parse_request(&long).unwrap_err().status, 431);
        assert_eq!(parse_request(&long[..66000]).unwrap_err().status, 431);
    }
}
