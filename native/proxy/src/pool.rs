//! Keep-alive connections to the model server (`_upstream.py`).
//!
//! Idle connections are reused last in, first out; one the server marked `Connection: close`, one
//! that broke, one idle longer than [`POOL_IDLE`] (below the 5 s keep-alive timeout of uvicorn and
//! llama.cpp), and one that has something to read while idle (the server's close, or bytes out of
//! step) is never handed out.

use crate::config::Upstream;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub const POOL_IDLE: Duration = Duration::from_secs(4);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept; more are closed when they come back.
pub const MAX_IDLE: usize = 256;

pub struct UpConn {
    pub stream: TcpStream,
    idle_since: Instant,
    /// Taken from the pool (not fresh): a close before any response byte may be the server's
    /// keep-alive timeout racing the request, which may then be sent again once.
    pub reused: bool,
    open: Rc<Cell<usize>>,
}

impl Drop for UpConn {
    fn drop(&mut self) {
        self.open.set(self.open.get() - 1);
    }
}

pub type Connecting = Pin<Box<dyn Future<Output = io::Result<UpConn>>>>;

pub struct Pool {
    pub upstream: Upstream,
    idle: RefCell<Vec<UpConn>>,
    open: Rc<Cell<usize>>,
    /// The server refused `stream_options.include_usage` once: the proxy no longer adds it.
    pub usage_rejected: Cell<bool>,
}

impl Pool {
    pub fn new(upstream: Upstream) -> Pool {
        Pool { upstream, idle: RefCell::new(Vec::new()), open: Rc::new(Cell::new(0)), usage_rejected: Cell::new(false) }
    }

    pub fn open(&self) -> usize {
        self.open.get()
    }

    pub fn idle(&self) -> usize {
        self.idle.borrow().len()
    }

    /// An idle connection to reuse, or None (then [`Pool::connect`]).
    pub fn get(&self, now: Instant) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(mut c) = idle.pop() {
            if now.saturating_duration_since(c.idle_since) > POOL_IDLE || !quiet(&c.stream) {
                continue;
            }
            c.reused = true;
            return Some(c);
        }
        None
    }

    /// A new connection; fails with the OS error (refused, unreachable) or `TimedOut`.
    pub fn connect(&self) -> Connecting {
        let (host, port, open) = (self.upstream.host.clone(), self.upstream.port, self.open.clone());
        Box::pin(async move {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await {
                Ok(r) => r?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            };
            let _ = stream.set_nodelay(true);
            open.set(open.get() + 1);
            Ok(UpConn { stream, idle_since: Instant::now(), reused: false, open })
        })
    }

    /// Take back a connection whose last response ended cleanly and may be kept alive.
    pub fn put(&self, mut c: UpConn) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= MAX_IDLE {
            return;
        }
        c.reused = false;
        c.idle_since = Instant::now();
        idle.push(c);
    }

    /// Close idle connections past [`POOL_IDLE`] or closed by the server (about once a second).
    pub fn expire(&self, now: Instant) {
        self.idle.borrow_mut().retain(|c| now.saturating_duration_since(c.idle_since) <= POOL_IDLE && quiet(&c.stream));
    }

    pub fn close(&self) {
        self.idle.borrow_mut().clear();
    }
}

/// Nothing to read on an idle connection: no close from the server, no stray bytes. Costs a
/// syscall only when the event loop has seen the socket readable.
fn quiet(s: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match s.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
