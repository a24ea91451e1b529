//! One client connection (`_ClientConn` in `fastproxy.py`): reads request heads, refuses what must
//! be refused, runs the exchanges one after the other (pipelined requests wait in the buffer, in
//! order), and closes on timeouts, on errors and when the proxy stops.

use crate::exchange::{Exchange, Outcome};
use crate::io::{shutdown_write, ClientIo, UpSide};
use crate::proxy::Shared;
use crate::wire::{error_response, parse_request, Reject};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// After an error answer that closes the connection, how long the rest of the client's request is
/// read and dropped, so the client gets to read the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);

struct Counted<'a>(&'a Shared);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

enum Wait {
    Data,
    Gone,
    Timer,
    Stop,
}

pub async fn serve(sh: Rc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // the records' client_address, as the Python proxy's `peername[0]`
    let peer: Rc<str> = stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default().into();
    sh.connections.set(sh.connections.get() + 1);
    let _counted = Counted(&sh);
    let now = Instant::now();
    let mut io = ClientIo::new(stream, now);
    let mut up = UpSide::default();
    // the first request's head is due within header_timeout of the connection's start
    let mut deadline = now + sh.cfg.header_timeout;
    let mut timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)));
    let mut t0: Option<Instant> = None;
    loop {
        let (head, len) = loop {
            if io.has_pending() {
                if t0.is_none() {
                    // the first byte of a request: its head is due within header_timeout
                    let first = io.last_read;
                    t0 = Some(first);
                    deadline = first + sh.cfg.header_timeout;
                    timer.as_mut().reset(tokio::time::Instant::from_std(deadline));
                }
                match parse_request(io.pending()) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(rej) => return fail(&sh, &mut io, rej).await,
                }
            }
            if sh.stopping() {
                return io.close_gracefully(); // no exchange on it: closes at once
            }
            let mut stop = std::pin::pin!(sh.stop.notified());
            let ev = poll_fn(|cx| {
                match io.poll_read(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wait::Gone),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Wait::Data),
                    Poll::Pending => {}
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Timer);
                }
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Stop);
                }
                Poll::Pending
            })
            .await;
            match ev {
                Wait::Data | Wait::Stop => {}
                Wait::Gone => return,
                Wait::Timer => {
                    if Instant::now() >= deadline {
                        return; // too slow: closed without an answer
                    }
                    timer.as_mut().reset(tokio::time::Instant::from_std(deadline));
                }
            }
        };
        io.consume(len);
        let started = t0.take().unwrap_or(now);
        let mut ex = match Exchange::new(&sh, head, started, peer.clone()) {
            Ok(ex) => ex,
            Err(rej) => return fail(&sh, &mut io, rej).await,
        };
        if let Some(rej) = refused(&sh, &mut ex) {
            return fail(&sh, &mut io, rej).await;
        }
        match ex.run(&sh, &mut io, &mut up, timer.as_mut()).await {
            Outcome::KeepAlive => {
                // idle keep-alive: the next request's first byte is due within idle_timeout
                deadline = Instant::now() + sh.cfg.idle_timeout;
                timer.as_mut().reset(tokio::time::Instant::from_std(deadline));
            }
            Outcome::Close => return io.close_gracefully(),
            Outcome::Abort => return,
            Outcome::Reject(rej) => return fail(&sh, &mut io, rej).await,
        }
    }
}

/// What is refused once the head is known, in `on_headers_complete`'s order: upgrades, a missing or
/// wrong bearer token, a captured request whose Content-Length is over the limit.
fn refused(sh: &Shared, ex: &mut Exchange) -> Option<Reject> {
    if ex.upgrade || ex.method() == b"CONNECT" {
        return Some(Reject { status: 501, kind: "invalid_request_error", code: "upgrade_not_supported",
                             message: "the capture proxy does not forward protocol upgrades".into(), counted: false });
    }
    if let Some(want) = &sh.cfg.auth {
        let got = ex.authorization.map_or(&b""[..], |i| ex.head.value(i));
        if !constant_time_eq(got, want) {
            return Some(Reject { status: 401, kind: "authentication_error", code: "invalid_api_key",
                                 message: "missing or invalid bearer token for the monitor proxy".into(),
                                 counted: false });
        }
    }
    if ex.capture && ex.req_length.is_some_and(|n| n > sh.cfg.max_request) {
        return Some(ex.too_large(sh));
    }
    None
}

/// `hmac.compare_digest`: the time depends on the lengths, never on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!*x);
    }
    diff == 0
}

/// Answer an error and close: the answer, then FIN, then the rest of what the client sends is read
/// and dropped for [`LINGER`] (or until it closes).
async fn fail(sh: &Shared, io: &mut ClientIo, rej: Reject) {
    if !rej.counted {
        sh.metrics.count("-", rej.status);
    }
    io.out.extend_from_slice(&error_response(rej.status, rej.kind, rej.code, &rej.message, true));
    let until = tokio::time::Instant::now() + LINGER;
    let _ = tokio::time::timeout_at(until, async {
        if poll_fn(|cx| io.poll_flush(cx)).await.is_err() {
            return;
        }
        shutdown_write(&io.stream);
        loop {
            io.buf.clear();
            io.pos = 0;
            match poll_fn(|cx| io.poll_read(cx)).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    })
    .await;
}
