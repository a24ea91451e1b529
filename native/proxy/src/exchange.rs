//! One request through the proxy (`_exchange.py`): forwarded upstream, the answer forwarded back, a
//! copy kept for the record.
//!
//! [`Exchange::run`] drives it on the client connection's task: one poll loop over the client socket,
//! the upstream socket (or its connect), one timer and the stop signal. Per response chunk the work is
//! one read, one write, a time stamp and two appends; everything that interprets the bytes happens
//! later, in the pipeline, from the record.

use crate::io::{ClientIo, UpSide};
use crate::pool::{Connecting, UpConn};
use crate::proxy::{Shared, HARD_STOP};
use crate::usage::UsageStripper;
use crate::wire::{has_token, ChunkedDecoder, Framing, Reject, RequestHead};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::futures::Notified;
use tokio::time::Sleep;

/// Pass-through request body held while the upstream connection is being opened (then the client waits).
const MAX_BUFFERED: usize = 1024 * 1024;
/// Request body written upstream and not taken yet (then the client waits).
const MAX_UNSENT: usize = 256 * 1024;
/// Pipelined bytes read ahead while an exchange runs (reading goes on to see the client leave).
const MAX_READ_AHEAD: usize = 64 * 1024;

/// How the response body goes to the client.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Raw,
    Chunked,
    UntilClose,
}

#[derive(PartialEq)]
pub enum RState {
    Head,
    Body,
    Done,
}

/// How an exchange left its client connection.
pub enum Outcome {
    KeepAlive,
    Close,
    /// Cut at once (the proxy's drain time is over).
    Abort,
    /// Answer this error and close (a malformed or too large request body).
    Reject(Reject),
}

enum Ev {
    ClientData,
    ClientGone,
    UpData,
    UpClosed,
    Connected(io::Result<UpConn>),
    Timer,
    Stop,
    Flushed,
}

pub struct Exchange {
    pub(crate) head: RequestHead,
    pub(crate) t0: Instant,
    pub(crate) start_ns: u64,
    pub(crate) http11: bool,
    pub(crate) keep_alive: bool,
    pub(crate) path_end: usize,
    pub(crate) route: Option<usize>,
    /// The upstream pool it goes to (`Shared::pools`; 0 unless a model route chose another).
    pub(crate) pool: usize,
    /// The model route (`Shared::router`) whose credential replaces the client's, if any.
    pub(crate) model_route: Option<usize>,
    pub(crate) capture: bool,
    pub(crate) req_framing: Framing,
    pub(crate) req_length: Option<u64>,
    pub(crate) req_chunked: bool,
    pub(crate) expect: bool,
    pub(crate) upgrade: bool,
    pub(crate) authorization: Option<usize>,
    pub(crate) traceparent: Option<usize>,
    pub(crate) tracestate: Vec<usize>,
    pub(crate) named: Vec<Vec<u8>>,
    /// The captured request body (shared with the upstream write and the record).
    pub(crate) body: Rc<Vec<u8>>,
    pub(crate) up_body: Option<Rc<Vec<u8>>>,
    /// Pass-through body read before the upstream connection was there.
    pub(crate) pending_body: Vec<u8>,
    pub(crate) req_size: u64,
    pub(crate) req_done: bool,
    pub(crate) replayable: bool,
    pub(crate) usage_added: bool,
    pub(crate) usage_retry: bool,
    pub(crate) stale_retried: bool,
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_span_id: Option<[u8; 8]>,
    pub(crate) trace_state: Vec<u8>,
    pub(crate) traced: bool,
    pub(crate) up_head: Vec<u8>,
    pub(crate) started: bool,
    pub(crate) connecting: Option<Connecting>,
    pub(crate) resp_begun: bool,
    pub(crate) rstate: RState,
    pub(crate) resp_framing: Framing,
    pub(crate) resp_keep: bool,
    pub(crate) status: u16,
    pub(crate) client_status: u16,
    pub(crate) head_sent: bool,
    pub(crate) mode: Mode,
    pub(crate) until_close: bool,
    pub(crate) stripper: Option<UsageStripper>,
    pub(crate) parts: Vec<u8>,
    pub(crate) cap_left: usize,
    pub(crate) resp_size: u64,
    pub(crate) chunks: Vec<(u64, u64)>,
    pub(crate) headers_ns: Option<u64>,
    pub(crate) last_up: Instant,
    pub(crate) content_type: Vec<u8>,
    pub(crate) done: bool,
    pub(crate) client_deadline: Option<Instant>,
    /// The client's peer IP, no port (the record's `client_address`; empty when unknown).
    pub(crate) client_address: Rc<str>,
}

impl Exchange {
    /// From a parsed head; Err: header semantics llhttp refuses (Content-Length, Transfer-Encoding).
    pub fn new(sh: &Shared, head: RequestHead, t0: Instant, client_address: Rc<str>) -> Result<Exchange, Reject> {
        let (mut req_length, mut req_chunked, mut expect, mut upgrade) = (None, false, false, false);
        let (mut authorization, mut traceparent, mut tracestate) = (None, None, Vec::new());
        let mut named: Vec<Vec<u8>> = Vec::new();
        let mut close = false;
        for i in 0..head.headers.len() {
            let (name, value) = (head.name(i), head.value(i));
            if name.eq_ignore_ascii_case(b"content-length") {
                if req_length.is_some() {
                    return Err(Reject::bad("Duplicate Content-Length"));
                }
                let v = value.trim_ascii();
                if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 19 {
                    return Err(Reject::bad("Invalid character in Content-Length"));
                }
                req_length = Some(std::str::from_utf8(v).unwrap().parse::<u64>().unwrap());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
                if !last.eq_ignore_ascii_case(b"chunked") {
                    return Err(Reject::bad("Request has invalid `Transfer-Encoding`"));
                }
                req_chunked = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                close |= has_token(value, b"close");
                for t in value.split(|&b| b == b',') {
                    named.push(t.trim_ascii().to_ascii_lowercase());
                }
            } else if name.eq_ignore_ascii_case(b"expect") {
                expect = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            } else if name.eq_ignore_ascii_case(b"authorization") {
                authorization = Some(i);
            } else if name.eq_ignore_ascii_case(b"traceparent") {
                traceparent = Some(i);
            } else if name.eq_ignore_ascii_case(b"tracestate") {
                tracestate.push(i);
            }
        }
        if req_chunked && req_length.is_some() {
            return Err(Reject::bad("Content-Length can't be present with Transfer-Encoding"));
        }
        let target = head.target();
        let path_end = target.iter().position(|&b| b == b'?').unwrap_or(target.len());
        let route = if head.method() == b"POST" {
            let path: String = target[..path_end].iter().map(|&b| b as char).collect();
            sh.cfg.route_of(&path).map(|r| sh.cfg.routes.iter().position(|x| std::ptr::eq(x, r)).unwrap())
        } else {
            None
        };
        let capture = route.is_some();
        let req_framing = if req_chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else {
            match req_length {
                Some(n) if n > 0 => Framing::Length(n),
                _ => Framing::None,
            }
        };
        let http11 = head.http11;
        Ok(Exchange {
            t0,
            start_ns: wall_ns(),
            http11,
            keep_alive: http11 && !close,
            path_end,
            route,
            pool: 0,
            model_route: None,
            capture,
            req_done: matches!(req_framing, Framing::None),
            req_framing,
            req_length,
            req_chunked,
            expect,
            upgrade,
            authorization,
            traceparent,
            tracestate,
            named,
            head,
            body: Rc::new(Vec::new()),
            up_body: None,
            pending_body: Vec::new(),
            req_size: 0,
            replayable: capture,
            usage_added: false,
            usage_retry: false,
            stale_retried: false,
            trace_id: [0; 16],
            span_id: [0; 8],
            parent_span_id: None,
            trace_state: Vec::new(),
            traced: false,
            up_head: Vec::new(),
            started: false,
            connecting: None,
            resp_begun: false,
            rstate: RState::Head,
            resp_framing: Framing::None,
            resp_keep: false,
            status: 0,
            client_status: 0,
            head_sent: false,
            mode: Mode::Raw,
            until_close: false,
            stripper: None,
            parts: Vec::new(),
            cap_left: if capture { sh.cfg.max_capture } else { 0 },
            resp_size: 0,
            chunks: Vec::new(),
            headers_ns: None,
            last_up: t0,
            content_type: Vec::new(),
            done: false,
            client_deadline: None,
            client_address,
        })
    }

    pub fn method(&self) -> &[u8] {
        self.head.method()
    }

    fn expects_body(&self) -> bool {
        self.req_chunked || self.req_length.unwrap_or(0) > 0
    }

    pub(crate) fn path(&self) -> &[u8] {
        &self.head.target()[..self.path_end]
    }

    pub(crate) fn route_label(&self) -> String {
        if !self.capture {
            return "other".into();
        }
        let p: String = self.path().iter().map(|&b| b as char).collect();
        let t = p.trim_end_matches('/');
        if t.is_empty() { p } else { t.to_string() }
    }

    // -- the run loop ------------------------------------------------------------------------------
    pub async fn run(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, mut timer: Pin<&mut Sleep>)
                     -> Outcome {
        sh.in_flight.set(sh.in_flight.get() + 1);
        let out = self.drive(sh, io, up, timer.as_mut()).await;
        sh.in_flight.set(sh.in_flight.get() - 1);
        out
    }

    async fn drive(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, mut timer: Pin<&mut Sleep>) -> Outcome {
        let now = Instant::now();
        timer.as_mut().reset(far_future(now));
        if self.expects_body() {
            self.client_deadline = Some(now + sh.cfg.idle_timeout);
        }
        if let Some(rej) = self.take_body(sh, io, up, now) {
            return self.rejected(up, rej);
        }
        if self.expect && !self.req_done && self.expects_body() {
            io.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if !self.started && (!self.capture || self.req_done) {
            self.start(sh, up, now);
        }
        let mut stop = std::pin::pin!(sh.stop.notified());
        loop {
            if self.done && (io.lost || !io.out_pending()) {
                break;
            }
            self.arm(sh, up, timer.as_mut());
            let ev = poll_fn(|cx| self.poll(cx, io, up, timer.as_mut(), stop.as_mut())).await;
            let now = Instant::now();
            match ev {
                Ev::ClientData => {
                    if let Some(rej) = self.take_body(sh, io, up, now) {
                        return self.rejected(up, rej);
                    }
                }
                Ev::ClientGone => {
                    io.lost = true;
                    self.client_gone(sh, up);
                }
                Ev::UpData => self.on_up_data(sh, io, up, now),
                Ev::UpClosed => self.upstream_closed(sh, io, up),
                Ev::Connected(Ok(conn)) => {
                    if self.done {
                        sh.pools[self.pool].put(conn);
                    } else {
                        self.attach(conn, up, now);
                    }
                }
                Ev::Connected(Err(e)) => {
                    if e.kind() == io::ErrorKind::TimedOut {
                        self.error(sh, io, up, 504, "timeout", "the model server did not accept a connection in time");
                    } else {
                        self.error(sh, io, up, 502, "upstream_unreachable", &format!("the model server is unreachable: {e}"));
                    }
                }
                Ev::Timer => {
                    timer.as_mut().reset(far_future(now)); // `arm` brings it back to the next deadline
                    self.on_timer(sh, io, up, now);
                }
                Ev::Stop => {
                    if sh.state() == HARD_STOP {
                        self.shutdown(sh, up);
                        return Outcome::Abort;
                    }
                    stop.set(sh.stop.notified());
                }
                Ev::Flushed => {}
            }
        }
        if io.lost || !self.keep_alive || sh.stopping() { Outcome::Close } else { Outcome::KeepAlive }
    }

    fn poll(&mut self, cx: &mut Context<'_>, io: &mut ClientIo, up: &mut UpSide, timer: Pin<&mut Sleep>,
            stop: Pin<&mut Notified<'_>>) -> Poll<Ev> {
        if io.out_pending() && !io.lost {
            match io.poll_flush(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(Ev::ClientGone),
                Poll::Ready(Ok(())) if self.done => return Poll::Ready(Ev::Flushed),
                _ => {}
            }
        }
        if self.done {
            return if stop.poll(cx).is_ready() { Poll::Ready(Ev::Stop) } else { Poll::Pending };
        }
        if up.conn.is_some() && up.unsent() > 0 {
            if let Poll::Ready(Err(_)) = up.poll_flush(cx) {
                return Poll::Ready(Ev::UpClosed);
            }
        }
        if let Some(f) = self.connecting.as_mut() {
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                self.connecting = None;
                return Poll::Ready(Ev::Connected(r));
            }
        }
        if up.conn.is_some() && !io.out_pending() {
            // the client reads slower than the server writes: the server waits (its window fills)
            match up.poll_read(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::UpClosed),
                Poll::Ready(Ok(_)) => return Poll::Ready(Ev::UpData),
                Poll::Pending => {}
            }
        }
        if self.wants_client_data(io, up) {
            match io.poll_read(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::ClientGone),
                Poll::Ready(Ok(_)) => return Poll::Ready(Ev::ClientData),
                Poll::Pending => {}
            }
        }
        if timer.poll(cx).is_ready() {
            return Poll::Ready(Ev::Timer);
        }
        if stop.poll(cx).is_ready() {
            return Poll::Ready(Ev::Stop);
        }
        Poll::Pending
    }

    /// Read the client while its body is wanted (and the upstream keeps up), and afterwards to see it
    /// leave (a client that closes its side is gone, as nginx sees it).
    fn wants_client_data(&self, io: &ClientIo, up: &UpSide) -> bool {
        if io.lost {
            return false;
        }
        if !self.req_done {
            return self.capture
                || (up.conn.is_none() && self.pending_body.len() <= MAX_BUFFERED)
                || (up.conn.is_some() && up.unsent() < MAX_UNSENT);
        }
        io.buf.len() - io.pos < MAX_READ_AHEAD
    }

    /// Move the timer to the earliest deadline that is not met yet (it only ever moves earlier
    /// here; when it fires, [`Exchange::on_timer`] moves it on): no timer work per chunk.
    fn arm(&self, sh: &Shared, up: &UpSide, timer: Pin<&mut Sleep>) {
        let mut next = None::<Instant>;
        if !self.req_done {
            next = self.client_deadline;
        }
        if up.conn.is_some() {
            let d = self.last_up + sh.cfg.upstream_timeout;
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        if let Some(d) = next {
            let d = tokio::time::Instant::from_std(d);
            if d < timer.deadline() {
                timer.reset(d);
            }
        }
    }

    fn on_timer(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, now: Instant) {
        if !self.req_done && self.client_deadline.is_some_and(|d| now > d) {
            // a request body that stopped coming: the connection closes, as a client that left
            io.lost = true;
            self.client_gone(sh, up);
        } else if up.conn.is_some() && !io.out_pending() && now - self.last_up > sh.cfg.upstream_timeout {
            self.upstream_timeout(sh, io, up);
        }
    }

}

/// `data` as one chunk of a chunked body.
pub fn chunk_into(out: &mut Vec<u8>, data: &[u8]) {
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub fn far_future(now: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(now + Duration::from_secs(86400 * 365))
}

pub(crate) fn wall_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
