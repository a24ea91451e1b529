//! The request side of an exchange (`_exchange.py`): the client's body as it arrives, the request
//! head for the upstream (trace context, hop-by-hop headers, Host), the usage option, the upstream
//! connection it goes on (pooled, new, or again after a refusal or a stale pooled connection).

use crate::exchange::{chunk_into, Exchange, Outcome, RState};
use crate::io::{ClientIo, UpSide};
use crate::pool::UpConn;
use crate::proxy::Shared;
use crate::record::encode_start;
use crate::trace::{hex_into, parse_traceparent};
use crate::usage::with_usage_option;
use crate::wire::{Framing, Piece, Reject, HOP_BY_HOP};
use std::rc::Rc;
use std::time::Instant;


impl Exchange {
    // -- request side ------------------------------------------------------------------------------
    /// Take what the client's buffer holds of the request body.
    pub(crate) fn take_body(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, now: Instant) -> Option<Reject> {
        if self.req_done {
            return None;
        }
        let mut framing = std::mem::replace(&mut self.req_framing, Framing::None);
        let mut result = None;
        loop {
            let (piece, complete) = match &mut framing {
                Framing::Length(rem) => {
                    let n = (io.buf.len() - io.pos).min(*rem as usize);
                    if n == 0 {
                        break;
                    }
                    *rem -= n as u64;
                    let start = io.pos;
                    io.pos += n;
                    (start..start + n, *rem == 0)
                }
                Framing::Chunked(dec) => match dec.next(&io.buf, &mut io.pos) {
                    Ok(Some(Piece::Data(p))) => {
                        let start = p.as_ptr() as usize - io.buf.as_ptr() as usize;
                        (start..start + p.len(), false)
                    }
                    Ok(Some(Piece::End)) => (io.pos..io.pos, true),
                    Ok(None) => break,
                    Err(msg) => {
                        result = Some(Reject::bad(msg));
                        break;
                    }
                },
                _ => (io.pos..io.pos, true),
            };
            if !piece.is_empty() {
                self.client_deadline = Some(now + sh.cfg.idle_timeout);
                if let Some(rej) = self.on_req_body(sh, &io.buf[piece], up, now) {
                    result = Some(rej);
                    break;
                }
            }
            if complete {
                self.on_req_complete(sh, up, now);
                break;
            }
        }
        self.req_framing = framing;
        io.compact();
        result
    }

    pub(crate) fn on_req_body(&mut self, sh: &Shared, data: &[u8], up: &mut UpSide, now: Instant) -> Option<Reject> {
        if self.done {
            return None; // answered already (an early error): the rest of the body is read and dropped
        }
        self.req_size += data.len() as u64;
        if self.capture {
            if self.req_size > sh.cfg.max_request {
                return Some(self.too_large(sh));
            }
            Rc::get_mut(&mut self.body).expect("the body is not shared before it is complete").extend_from_slice(data);
        } else if up.conn.is_some() {
            self.last_up = now; // the server is not silent while the client still uploads
            if self.req_chunked {
                chunk_into(&mut up.out, data);
            } else {
                up.out.extend_from_slice(data);
            }
        } else {
            self.pending_body.extend_from_slice(data);
        }
        None
    }

    pub(crate) fn on_req_complete(&mut self, sh: &Shared, up: &mut UpSide, now: Instant) {
        self.req_done = true;
        self.client_deadline = None;
        if self.done {
            return;
        }
        if self.capture {
            self.start(sh, up, now);
        } else if up.conn.is_some() && self.req_chunked {
            up.out.extend_from_slice(b"0\r\n\r\n");
        }
    }

    /// A captured request over `max_request_bytes`: 413, a record, the connection closes.
    pub fn too_large(&mut self, sh: &Shared) -> Reject {
        self.done = true;
        self.keep_alive = false;
        if self.req_size == 0 {
            if let Some(n) = self.req_length {
                self.req_size = n; // refused on its Content-Length, before reading it
            }
        }
        sh.metrics.count(&self.route_label(), 413);
        self.client_status = 413;
        self.emit(sh, "request_too_large");
        Reject { status: 413, kind: "invalid_request_error", code: "request_too_large", counted: true,
                 message: format!("request body over the proxy's limit of {} bytes", sh.cfg.max_request) }
    }

    /// The request body broke off (malformed): no answer of the upstream's, no record.
    pub(crate) fn rejected(&mut self, up: &mut UpSide, rej: Reject) -> Outcome {
        if !self.done {
            self.done = true;
            self.connecting = None;
            up.detach();
            if self.head_sent {
                return Outcome::Close; // the client has a response head already: it sees it cut
            }
        }
        Outcome::Reject(rej)
    }

    pub(crate) fn client_gone(&mut self, sh: &Shared, up: &mut UpSide) {
        if self.done {
            return;
        }
        self.connecting = None;
        up.detach(); // the upstream connection closes at once: the server stops generating
        self.keep_alive = false;
        // A client that closes right after the stream's last event (`data: [DONE]`), before the
        // upstream's closing chunk arrived, had the whole answer: the openai SDK does that.
        let error = if self.stream_delivered() { "" } else { "client_disconnected" };
        self.finish(sh, error);
    }

    /// Everything of an SSE answer up to its `[DONE]` event reached the client: the copy ends with
    /// it and the usage stripper holds nothing back.
    fn stream_delivered(&self) -> bool {
        if !self.head_sent || self.parts.is_empty() {
            return false;
        }
        if let Some(st) = self.stripper.as_ref() {
            if !st.held.is_empty() {
                return false;
            }
        }
        let mut end = self.parts.len();
        while end > 0 && self.parts[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        self.parts[..end].ends_with(b"data: [DONE]")
    }

    /// The proxy stops and its drain time is over.
    pub(crate) fn shutdown(&mut self, sh: &Shared, up: &mut UpSide) {
        if !self.done {
            self.connecting = None;
            up.detach();
            self.keep_alive = false;
            self.finish(sh, "proxy_stopped");
        }
    }

    // -- sending upstream --------------------------------------------------------------------------
    pub(crate) fn start(&mut self, sh: &Shared, up: &mut UpSide, now: Instant) {
        self.started = true;
        if self.capture {
            self.trace(sh);
            sh.sender.send(encode_start(&self.trace_id, &self.span_id)); // the record follows
            if !sh.router.is_empty() {
                // several upstreams: the one of the model the body asks for (the body is all here)
                if let Some(i) = sh.router.route(&self.body) {
                    self.pool = sh.router.pool_of[i];
                    self.model_route = Some(i);
                }
            }
            let route = &sh.cfg.routes[self.route.expect("captured")];
            if sh.cfg.request_usage && !sh.pools[self.pool].usage_rejected.get() && route.api == "openai"
                && route.operation != "embeddings"
            {
                if let Some(patched) = with_usage_option(&self.body) {
                    self.up_body = Some(Rc::new(patched));
                    self.usage_added = true;
                }
            }
        } else {
            self.replayable = self.req_done && self.req_size == 0 && !self.req_chunked;
        }
        self.up_head = self.build_head(sh);
        self.send(sh, up, now, true);
    }

    /// On a pooled connection when `pooled` and there is one, else on a new one.
    pub(crate) fn send(&mut self, sh: &Shared, up: &mut UpSide, now: Instant, pooled: bool) {
        let pool = &sh.pools[self.pool];
        match if pooled { pool.get(now) } else { None } {
            Some(conn) => self.attach(conn, up, now),
            None => self.connecting = Some(pool.connect()),
        }
    }

    /// The proxy's span: a new span id, the client's trace when its traceparent is valid.
    pub(crate) fn trace(&mut self, sh: &Shared) {
        self.traced = true;
        match self.traceparent.and_then(|i| parse_traceparent(self.head.value(i))) {
            Some((t, s)) => {
                self.trace_id = t;
                self.parent_span_id = Some(s);
                let mut st = Vec::new();
                for (k, &i) in self.tracestate.iter().enumerate() {
                    if k > 0 {
                        st.push(b',');
                    }
                    st.extend_from_slice(self.head.value(i));
                }
                self.trace_state = st;
            }
            None => self.trace_id = sh.rng.trace_id(),
        }
        self.span_id = sh.rng.span_id();
    }

    /// The request head for the upstream, up to (not including) its framing headers.
    pub(crate) fn build_head(&mut self, sh: &Shared) -> Vec<u8> {
        let u = &sh.pools[self.pool].upstream;
        let route_auth = self.model_route.and_then(|i| sh.router.routes[i].auth.as_deref());
        let mut out = Vec::with_capacity(self.head.raw.len() + 160);
        out.extend_from_slice(self.head.method());
        out.push(b' ');
        if self.head.target().first() == Some(&b'/') {
            out.extend_from_slice(&u.prefix);
        }
        out.extend_from_slice(self.head.target());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(&u.host_header);
        out.extend_from_slice(b"\r\n");
        let drop_auth = sh.cfg.auth.is_some() || route_auth.is_some();
        for i in 0..self.head.headers.len() {
            let name = self.head.name(i);
            let lname = name.to_ascii_lowercase();
            let l = lname.as_slice();
            if HOP_BY_HOP.contains(&l) || matches!(l, b"host" | b"content-length" | b"expect")
                || (self.capture && matches!(l, b"traceparent" | b"tracestate" | b"accept-encoding"))
                || self.named.iter().any(|n| n == l) || (drop_auth && l == b"authorization")
            {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(self.head.value(i));
            out.extend_from_slice(b"\r\n");
        }
        if let Some(auth) = route_auth {
            // a managed route's key, in place of the client's (never in a record)
            out.extend_from_slice(b"Authorization: ");
            out.extend_from_slice(auth);
            out.extend_from_slice(b"\r\n");
        }
        if self.capture {
            if !self.traced {
                self.trace(sh);
            }
            out.extend_from_slice(b"Accept-Encoding: identity\r\ntraceparent: 00-");
            hex_into(&mut out, &self.trace_id);
            out.push(b'-');
            hex_into(&mut out, &self.span_id);
            out.extend_from_slice(b"-01\r\n");
            if !self.trace_state.is_empty() {
                out.extend_from_slice(b"tracestate: ");
                out.extend_from_slice(&self.trace_state);
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    pub(crate) fn attach(&mut self, conn: UpConn, up: &mut UpSide, now: Instant) {
        up.attach(conn);
        self.resp_begun = false;
        self.rstate = RState::Head;
        self.last_up = now;
        up.out.extend_from_slice(&self.up_head);
        if self.capture {
            let body = self.up_body.clone().unwrap_or_else(|| self.body.clone());
            up.out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            up.send_body(body);
        } else if self.req_chunked {
            up.out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            if !self.pending_body.is_empty() {
                chunk_into(&mut up.out, &self.pending_body);
            }
            if self.req_done {
                up.out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            match self.req_length {
                Some(n) => up.out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes()),
                None => up.out.extend_from_slice(b"\r\n"),
            }
            up.out.extend_from_slice(&self.pending_body);
        }
        self.pending_body = Vec::new();
    }

    /// The upstream refused the request the proxy added `stream_options` to: send the client's own.
    pub(crate) fn retry_without_usage(&mut self, sh: &Shared, up: &mut UpSide, now: Instant) {
        up.detach();
        self.usage_added = false;
        self.usage_retry = true;
        self.up_body = None;
        self.send(sh, up, now, true);
    }
}
