//! The response side of an exchange: the upstream's head and body as they arrive, forwarded to the
//! client (re-framed where it must be) and copied for the record (`Exchange.on_headers_complete`,
//! `on_body`, `on_message_complete` in `_exchange.py`).

use crate::exchange::{chunk_into, Exchange, Mode, RState};
use crate::io::{ClientIo, UpSide};
use crate::proxy::Shared;
use crate::usage::UsageStripper;
use crate::wire::{has_token, ChunkedDecoder, Framing, Piece, HOP_BY_HOP};
use std::ops::Range;
use std::time::Instant;

/// A response head that does not end within this is not HTTP.
const MAX_RESPONSE_HEAD: usize = 1024 * 1024;

struct RespHead {
    status: u16,
    http11: bool,
    len: usize,
    reason: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

fn parse_response(buf: &[u8]) -> Result<Option<RespHead>, ()> {
    let mut small = [httparse::EMPTY_HEADER; 64];
    let mut big;
    let mut resp = httparse::Response::new(&mut small);
    let mut status = resp.parse(buf);
    if matches!(status, Err(httparse::Error::TooManyHeaders)) {
        big = vec![httparse::EMPTY_HEADER; 8192];
        resp = httparse::Response::new(&mut big);
        status = resp.parse(buf);
    }
    let len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return if buf.len() > MAX_RESPONSE_HEAD { Err(()) } else { Ok(None) },
        Err(_) => return Err(()),
    };
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + s.len()
    };
    // the reason phrase as sent, whatever its bytes: the status line after "HTTP/1.x NNN "
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(0);
    let reason = if line_end > 13 { 13..line_end } else { line_end..line_end };
    Ok(Some(RespHead {
        status: resp.code.unwrap_or(0),
        http11: resp.version == Some(1),
        len,
        reason,
        headers: resp.headers.iter().map(|h| (at(h.name.as_bytes()), at(h.value))).collect(),
    }))
}

enum Step {
    /// Parse on: more of the response is in the buffer.
    Continue,
    /// Wait for more bytes.
    More,
    /// This connection is done with (the exchange ended, or moved to another connection).
    Stop,
}

impl Exchange {
    pub(crate) fn on_up_data(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, now: Instant) {
        self.last_up = now;
        loop {
            let step = match self.rstate {
                RState::Head if up.pos < up.buf.len() => {
                    self.resp_begun = true;
                    self.on_head(sh, io, up, now)
                }
                RState::Body => self.on_body_bytes(sh, io, up, now),
                _ => Step::More,
            };
            match step {
                Step::Continue => continue,
                Step::More | Step::Stop => break,
            }
        }
    }

    fn on_head(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, now: Instant) -> Step {
        let h = match parse_response(up.unparsed()) {
            Ok(Some(h)) => h,
            Ok(None) => return Step::More,
            Err(()) => {
                self.upstream_broken(sh, io, up);
                return Step::Stop;
            }
        };
        let base = up.pos;
        up.pos += h.len;
        if h.status < 200 {
            if h.status == 101 {
                self.upstream_broken(sh, io, up); // the proxy refused every upgrade: a broken server
                return Step::Stop;
            }
            return Step::Continue; // 1xx (103 Early Hints...): not passed on
        }
        self.headers_ns = Some((now - self.t0).as_nanos() as u64);
        let status = h.status;
        if self.usage_added && (status == 400 || status == 422) {
            self.retry_without_usage(sh, up, now);
            return Step::Stop;
        }
        if self.usage_retry {
            self.usage_retry = false;
            if status < 400 {
                sh.usage_refused(self.pool);
            }
        }
        self.status = status;
        self.client_status = status;

        let buf = &up.buf[base..];
        let (mut length, mut chunked, mut te, mut close, mut keep) = (None::<Range<usize>>, false, false, false, false);
        let mut conn_named: Vec<Vec<u8>> = Vec::new();
        let mut bad = false;
        for (n, v) in &h.headers {
            let (name, value) = (&buf[n.clone()], &buf[v.clone()]);
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te = true;
                chunked = value.trim_ascii_end().to_ascii_lowercase().ends_with(b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close |= has_token(value, b"close");
                keep |= has_token(value, b"keep-alive");
                conn_named.extend(value.split(|&b| b == b',').map(|t| t.trim_ascii().to_ascii_lowercase()));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let t = value.trim_ascii();
                bad |= length.is_some() || t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit);
                length = Some(v.clone());
            } else if name.eq_ignore_ascii_case(b"content-type") {
                self.content_type = value.to_vec();
            }
        }
        if bad || (te && length.is_some()) {
            self.upstream_broken(sh, io, up); // what llhttp refuses
            return Step::Stop;
        }
        let head_req = self.method() == b"HEAD";
        let no_body = head_req || status == 204 || status == 304;
        let length_value = length.as_ref().map(|r| buf[r.clone()].to_vec());
        let content_length = length_value.as_ref().map(|v| {
            std::str::from_utf8(v.trim_ascii()).unwrap().parse::<u64>().unwrap_or(0)
        });
        self.resp_framing = if no_body {
            Framing::None
        } else if chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else if let Some(n) = content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        // llhttp's should_keep_alive (it does not know the request was HEAD): HTTP/1.1 without close
        // (1.0 with keep-alive), and a body that does not end with the connection
        let needs_eof = !(status == 204 || status == 304 || chunked) && content_length.is_none();
        self.resp_keep = (if h.http11 { !close } else { keep }) && !needs_eof;

        let out = &mut io.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(&buf[h.reason.clone()]);
        out.extend_from_slice(b"\r\n");
        for (n, v) in &h.headers {
            let lname = buf[n.clone()].to_ascii_lowercase();
            if HOP_BY_HOP.contains(&lname.as_slice()) || lname == b"content-length" || conn_named.contains(&lname) {
                continue;
            }
            out.extend_from_slice(&buf[n.clone()]);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&buf[v.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        let strip = self.usage_added && status == 200
            && crate::usage::find(&self.content_type.to_ascii_lowercase(), b"text/event-stream").is_some();
        self.mode = Mode::Raw;
        if no_body {
            if let (Some(v), true) = (&length_value, status != 204) {
                content_length_header(out, v);
            }
        } else if let (Some(v), false) = (&length_value, strip) {
            content_length_header(out, v);
        } else if self.http11 {
            self.mode = Mode::Chunked;
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else {
            self.mode = Mode::UntilClose;
        }
        self.until_close = length_value.is_none() && !chunked && !no_body;
        if strip {
            self.stripper = Some(UsageStripper::default());
        }
        if self.keep_alive && (self.mode == Mode::UntilClose || sh.stopping() || !self.req_done) {
            self.keep_alive = false;
        }
        if !self.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.head_sent = true;
        self.rstate = RState::Body;
        if matches!(self.resp_framing, Framing::None | Framing::Length(0)) {
            let keep = self.resp_keep;
            self.complete(sh, io, up, keep);
            return Step::Stop;
        }
        Step::Continue
    }

    /// Body bytes in the upstream buffer: forwarded piece by piece (a piece is a chunk's data within one
    /// read, or one read of a length- or close-delimited body, as llhttp hands them to `on_body`).
    fn on_body_bytes(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, now: Instant) -> Step {
        let mut framing = std::mem::replace(&mut self.resp_framing, Framing::None);
        let mut end = false;
        let mut broken = false;
        while up.pos < up.buf.len() {
            let piece = match &mut framing {
                Framing::Length(rem) => {
                    let n = (up.buf.len() - up.pos).min(*rem as usize);
                    *rem -= n as u64;
                    end = *rem == 0;
                    up.pos..up.pos + n
                }
                Framing::UntilClose => up.pos..up.buf.len(),
                Framing::Chunked(dec) => {
                    let mut pos = up.pos;
                    match dec.next(&up.buf, &mut pos) {
                        Ok(Some(Piece::Data(p))) => {
                            let start = p.as_ptr() as usize - up.buf.as_ptr() as usize;
                            up.pos = pos;
                            self.on_piece(sh, io, &up.buf[start..start + p.len()], now);
                            continue;
                        }
                        Ok(Some(Piece::End)) => {
                            up.pos = pos;
                            end = true;
                            break;
                        }
                        Ok(None) => {
                            up.pos = pos;
                            break;
                        }
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                Framing::None => break,
            };
            up.pos = piece.end;
            self.on_piece(sh, io, &up.buf[piece], now);
            if end {
                break;
            }
        }
        self.resp_framing = framing;
        if broken {
            self.upstream_broken(sh, io, up);
            return Step::Stop;
        }
        if up.pos == up.buf.len() {
            up.buf.clear();
            up.pos = 0;
        }
        if end {
            let keep = self.resp_keep;
            self.complete(sh, io, up, keep);
            return Step::Stop;
        }
        Step::More
    }

    fn on_piece(&mut self, sh: &Shared, io: &mut ClientIo, piece: &[u8], now: Instant) {
        let _ = sh;
        let n = piece.len() as u64;
        self.resp_size += n;
        let size = self.resp_size;
        let mut held = 0;
        let out: std::borrow::Cow<[u8]> = match self.stripper.as_mut() {
            Some(st) => {
                let o = st.feed(piece);
                if st.done {
                    self.stripper = None; // the usage event went by: nothing more to look for
                } else {
                    held = st.held.len() as u64;
                }
                o
            }
            None => std::borrow::Cow::Borrowed(piece),
        };
        if !out.is_empty() {
            if self.mode == Mode::Chunked {
                chunk_into(&mut io.out, &out);
            } else {
                io.out.extend_from_slice(&out);
            }
        }
        if self.capture {
            if self.cap_left > 0 {
                let k = piece.len().min(self.cap_left);
                self.parts.extend_from_slice(&piece[..k]);
                self.cap_left -= k;
            }
            self.chunks.push(((now - self.t0).as_nanos() as u64, size - held));
        }
    }

    /// The end of the body towards the client: what the stripper held, the last chunk.
    pub(crate) fn end_body(&mut self, io: &mut ClientIo, now: Instant) {
        if let Some(st) = self.stripper.as_mut() {
            if !st.held.is_empty() {
                let rest = st.flush();
                if self.mode == Mode::Chunked {
                    chunk_into(&mut io.out, &rest);
                } else {
                    io.out.extend_from_slice(&rest);
                }
                if self.capture {
                    self.chunks.push(((now - self.t0).as_nanos() as u64, self.resp_size));
                }
            }
        }
        match self.mode {
            Mode::Chunked => io.out.extend_from_slice(b"0\r\n\r\n"),
            Mode::UntilClose => self.keep_alive = false,
            Mode::Raw => {}
        }
    }

    /// The response ended cleanly; the upstream connection goes back to the pool when it may.
    fn complete(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, keep_upstream: bool) {
        self.rstate = RState::Done;
        self.end_body(io, Instant::now());
        let in_step = up.unparsed().is_empty(); // bytes past the response: the server is out of step
        if let Some(conn) = up.detach() {
            if keep_upstream && in_step {
                sh.pools[self.pool].put(conn);
            }
        }
        self.finish(sh, "");
    }
}

fn content_length_header(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn response_heads() {
        let h = parse_response(b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.status, h.reason, h.http11), (200, 13..16, true));
        let h = parse_response(b"HTTP/1.0 204\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.status, h.reason.len(), h.http11), (204, 0, false));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nX: 1\r\n").unwrap().is_none());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
