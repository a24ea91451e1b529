//! Records out of the proxy: length-prefixed frames over the pipeline's Unix socket, as
//! `channel.RecordSender` sends them.
//!
//! Never blocks the request path: a frame is written at once when the socket takes it, else kept in
//! a bounded buffer that a writer task drains. While the socket is down, or when the buffer would
//! pass its bound, the frame is dropped and counted (the request it describes has long been served).
//! The writer reconnects with backoff (50 ms doubling to 2 s, jittered down to [d/2, d]).

use crate::trace::Rng;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// Frames larger than this are refused by both ends (`channel.MAX_FRAME_BYTES`).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

#[derive(Default)]
struct State {
    stream: Option<Rc<UnixStream>>,
    pending: VecDeque<Vec<u8>>,
    /// Bytes of the first pending frame already written.
    written: usize,
    pending_bytes: usize,
    broken: bool,
    closing: bool,
}

pub struct Sender {
    path: Option<String>,
    max_buffer: usize,
    st: RefCell<State>,
    wake: Notify,
    pub sent: Cell<u64>,
    pub dropped: Cell<u64>,
    pub disconnects: Cell<u64>,
}

impl Sender {
    /// `path` None: a null sink (frames are accepted and discarded).
    pub fn new(path: Option<String>, max_buffer: usize) -> Rc<Sender> {
        Rc::new(Sender {
            path,
            max_buffer,
            st: RefCell::new(State::default()),
            wake: Notify::new(),
            sent: Cell::new(0),
            dropped: Cell::new(0),
            disconnects: Cell::new(0),
        })
    }

    pub fn connected(&self) -> bool {
        self.st.borrow().stream.is_some()
    }

    pub fn buffered_bytes(&self) -> usize {
        let st = self.st.borrow();
        st.pending_bytes - st.written
    }

    /// Queue one frame (length prefix included) and write what the socket takes now; false (counted
    /// in `dropped`) when it was dropped. Never blocks.
    pub fn send(&self, frame: Vec<u8>) -> bool {
        if self.path.is_none() {
            self.sent.set(self.sent.get() + 1);
            return true;
        }
        let mut st = self.st.borrow_mut();
        let n = frame.len();
        if st.stream.is_none() || st.broken || st.closing || n - 4 > MAX_FRAME_BYTES
            || st.pending_bytes - st.written + n > self.max_buffer
        {
            self.dropped.set(self.dropped.get() + 1);
            return false;
        }
        st.pending_bytes += n;
        st.pending.push_back(frame);
        if st.pending.len() == 1 {
            self.write_now(&mut st, false);
        }
        true
    }

    /// Write pending frames while the socket takes them; what is left waits for the writer task
    /// (woken here unless it is the caller: it then waits for the socket to take more).
    fn write_now(&self, st: &mut State, writer: bool) {
        let Some(stream) = st.stream.clone() else { return };
        while !st.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut k = 0;
            for (i, f) in st.pending.iter().take(64).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &f[st.written..] } else { f });
                k += 1;
            }
            match stream.try_write_vectored(&slices[..k]) {
                Ok(mut n) => {
                    while n > 0 {
                        let left = st.pending[0].len() - st.written;
                        if n >= left {
                            n -= left;
                            let f = st.pending.pop_front().expect("a frame was pending");
                            st.pending_bytes -= f.len();
                            st.written = 0;
                            self.sent.set(self.sent.get() + 1);
                        } else {
                            st.written += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !writer {
                        self.wake.notify_one(); // the writer task waits for the socket
                    }
                    return;
                }
                Err(_) => {
                    st.broken = true;
                    self.wake.notify_one();
                    return;
                }
            }
        }
    }

    /// The writer task: connects, drains the buffer when the socket blocks, notices the receiver
    /// going away, reconnects. Ends when `close` was called.
    pub async fn run(self: Rc<Sender>, rng: Rc<Rng>) {
        let Some(path) = self.path.clone() else { return };
        let mut attempt = 0u32;
        let mut down_logged: Option<Instant> = None;
        while !self.st.borrow().closing {
            let stream = match UnixStream::connect(&path).await {
                Ok(s) => Rc::new(s),
                Err(e) => {
                    if down_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        down_logged = Some(Instant::now());
                        crate::warn(&format!("capture socket {path}: {e}; records are dropped until it is back"));
                    }
                    let d = (0.05 * 2f64.powi(attempt.min(60) as i32)).min(2.0);
                    attempt += 1;
                    let jitter = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                    tokio::time::sleep(Duration::from_secs_f64(d / 2.0 + jitter * d / 2.0)).await;
                    continue;
                }
            };
            attempt = 0;
            self.st.borrow_mut().stream = Some(stream.clone());
            self.serve(&stream).await;
            let mut st = self.st.borrow_mut();
            st.stream = None;
            st.broken = false;
            let lost = st.pending.len() as u64; // frames it held are lost
            st.pending.clear();
            st.pending_bytes = 0;
            st.written = 0;
            self.dropped.set(self.dropped.get() + lost);
            if !st.closing {
                self.disconnects.set(self.disconnects.get() + 1);
                crate::warn(&format!("capture socket {path} closed; reconnecting (frames it held are lost)"));
            }
        }
    }

    async fn serve(&self, stream: &UnixStream) {
        let mut scratch = [0u8; 256];
        loop {
            let notified = self.wake.notified();
            let mut notified = std::pin::pin!(notified);
            let gone = poll_fn(|cx| {
                {
                    let st = self.st.borrow();
                    if st.broken || (st.closing && st.pending.is_empty()) {
                        return Poll::Ready(true);
                    }
                }
                // the receiver never writes: readable means it closed (or broke the protocol)
                while stream.poll_read_ready(cx).is_ready() {
                    match stream.try_read(&mut scratch) {
                        Ok(0) => return Poll::Ready(true),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Poll::Ready(true),
                    }
                }
                if !self.st.borrow().pending.is_empty() && stream.poll_write_ready(cx).is_ready() {
                    return Poll::Ready(false);
                }
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                Poll::Pending
            })
            .await;
            if gone {
                return;
            }
            let mut st = self.st.borrow_mut();
            self.write_now(&mut st, true);
        }
    }

    /// Send what is buffered for up to `timeout`, then stop; later sends are dropped.
    pub async fn close(&self, timeout: Duration) {
        self.st.borrow_mut().closing = true;
        self.wake.notify_one();
        let deadline = Instant::now() + timeout;
        while self.st.borrow().stream.is_some() && !self.st.borrow().pending.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
