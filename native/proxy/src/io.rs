//! Buffers between the sockets and the exchange: what was read and not parsed yet, what is to be
//! written and not taken by the socket yet. Reads go through tokio's `poll_read`, which clears the
//! socket's readiness after a short read, so one chunk costs one `read` syscall, not two.

use crate::pool::UpConn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Read into `buf`'s spare room (keeping at least `room` of it); returns the bytes read, 0 at EOF.
fn poll_fill(stream: &mut TcpStream, cx: &mut Context<'_>, buf: &mut Vec<u8>, pos: &mut usize, room: usize)
             -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < room / 4 {
        if *pos > 0 {
            buf.drain(..*pos);
            *pos = 0;
        }
        buf.reserve(room);
    }
    let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
    match Pin::new(stream).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: poll_read initialised and filled these n bytes of the spare capacity
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// The client's side of a connection.
pub struct ClientIo {
    pub stream: TcpStream,
    /// Bytes read and not parsed yet start at `buf[pos]`.
    pub buf: Vec<u8>,
    pub pos: usize,
    /// When the last read returned (the first byte of a pipelined request arrived no later).
    pub last_read: Instant,
    pub out: Vec<u8>,
    out_pos: usize,
    /// The client closed, reset, or a write to it failed.
    pub lost: bool,
}

impl ClientIo {
    pub fn new(stream: TcpStream, now: Instant) -> ClientIo {
        ClientIo { stream, buf: Vec::new(), pos: 0, last_read: now, out: Vec::new(), out_pos: 0, lost: false }
    }

    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn has_pending(&self) -> bool {
        self.pos < self.buf.len()
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        self.compact();
    }

    pub fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    pub fn out_pending(&self) -> bool {
        self.out_pos < self.out.len()
    }

    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let r = poll_fill(&mut self.stream, cx, &mut self.buf, &mut self.pos, 16 * 1024);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.last_read = Instant::now();
            }
        }
        r
    }

    /// Write what is pending; Ready(Ok) once all of it went.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.out[self.out_pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out_pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Close after the answer: FIN after what was written, and what the client already sent is read
    /// first, so that the close is not a reset that could destroy the answer on its way.
    pub fn close_gracefully(&mut self) {
        shutdown_write(&self.stream);
        let mut scratch = [0u8; 4096];
        while matches!(self.stream.try_read(&mut scratch), Ok(n) if n > 0) {}
    }
}

/// shutdown(SHUT_WR): a FIN after what was written; reading goes on.
pub fn shutdown_write(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor tokio owns and keeps open
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
}

/// The upstream side of the exchange in progress: its connection (while attached), the response
/// bytes not parsed yet, and the request bytes not written yet (a head, then a shared body).
#[derive(Default)]
pub struct UpSide {
    pub conn: Option<UpConn>,
    pub buf: Vec<u8>,
    pub pos: usize,
    pub out: Vec<u8>,
    out_pos: usize,
    body: Option<Rc<Vec<u8>>>,
    body_pos: usize,
}

impl UpSide {
    pub fn attach(&mut self, conn: UpConn) {
        self.conn = Some(conn);
        self.buf.clear();
        self.pos = 0;
        self.out.clear();
        self.out_pos = 0;
        self.body = None;
        self.body_pos = 0;
    }

    /// Send `body` after what is in `out` (the captured request body, shared with the record).
    pub fn send_body(&mut self, body: Rc<Vec<u8>>) {
        self.body = Some(body);
        self.body_pos = 0;
    }

    pub fn unsent(&self) -> usize {
        self.out.len() - self.out_pos + self.body.as_ref().map_or(0, |b| b.len() - self.body_pos)
    }

    pub fn unparsed(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Take the connection away (to the pool or to be closed by the caller).
    pub fn detach(&mut self) -> Option<UpConn> {
        self.out.clear();
        self.out_pos = 0;
        self.body = None;
        self.conn.take()
    }

    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let conn = self.conn.as_mut().expect("reading an attached upstream");
        poll_fill(&mut conn.stream, cx, &mut self.buf, &mut self.pos, 64 * 1024)
    }

    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = self.conn.as_mut().expect("writing an attached upstream");
        loop {
            let head = &self.out[self.out_pos..];
            let body = self.body.as_ref().map_or(&[][..], |b| &b[self.body_pos..]);
            if head.is_empty() && body.is_empty() {
                self.out.clear();
                self.out_pos = 0;
                self.body = None;
                return Poll::Ready(Ok(()));
            }
            let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
            match Pin::new(&mut conn.stream).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(mut n)) => {
                    let h = n.min(head.len());
                    self.out_pos += h;
                    n -= h;
                    self.body_pos += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
