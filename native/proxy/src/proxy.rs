//! The proxy's shared state and lifecycle: listen, accept, drain on SIGTERM (`FastProxy.start/stop`).

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::routing::Router;
use crate::sender::Sender;
use crate::trace::Rng;
use std::cell::Cell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;

pub const RUNNING: u8 = 0;
/// No new connections; idle ones closed; exchanges in flight finish, then their connection closes.
pub const STOPPING: u8 = 1;
/// The drain time is over: exchanges still in flight end (`proxy_stopped`) and their client is cut.
pub const HARD_STOP: u8 = 2;

pub struct Shared {
    pub cfg: Config,
    /// Upstream pools: 0 is `upstream`, then one per other upstream of `proxy.routes`.
    pub pools: Vec<Pool>,
    pub router: Router,
    pub metrics: Rc<Metrics>,
    pub sender: Rc<Sender>,
    /// The thread that reassembles SSE streams off this loop (`crate::digest`); None: `digest: off`.
    pub digest: Option<crate::digest::Worker>,
    pub rng: Rc<Rng>,
    state: Cell<u8>,
    /// Woken (notify_waiters) at each state change.
    pub stop: Notify,
    pub connections: Cell<usize>,
    pub in_flight: Cell<usize>,
    errors_logged_at: Cell<Option<Instant>>,
}

impl Shared {
    pub fn new(mut cfg: Config, sender: Rc<Sender>, digest: Option<crate::digest::Worker>, rng: Rc<Rng>) -> Shared {
        let mut pools = vec![Pool::new(cfg.upstream.clone())];
        let routes = std::mem::take(&mut cfg.model_routes);
        let mut pool_of = Vec::with_capacity(routes.len());
        for r in &routes {
            let at = match pools.iter().position(|p| p.upstream.base == r.upstream.base) {
                Some(i) => i,
                None => {
                    pools.push(Pool::new(r.upstream.clone()));
                    pools.len() - 1
                }
            };
            pool_of.push(at);
        }
        Shared {
            pools,
            router: Router::new(routes, pool_of),
            cfg,
            metrics: Rc::new(Metrics::default()),
            sender,
            digest,
            rng,
            state: Cell::new(RUNNING),
            stop: Notify::new(),
            connections: Cell::new(0),
            in_flight: Cell::new(0),
            errors_logged_at: Cell::new(None),
        }
    }

    pub fn state(&self) -> u8 {
        self.state.get()
    }

    pub fn stopping(&self) -> bool {
        self.state.get() != RUNNING
    }

    fn set_state(&self, s: u8) {
        self.state.set(s);
        self.stop.notify_waiters();
    }

    /// Hand a record frame to the sender and count it (sent, or dropped by a full or absent sink).
    pub fn send_record(&self, frame: Vec<u8>) {
        let m = &self.metrics;
        if self.sender.send(frame) {
            m.records.set(m.records.get() + 1);
        } else {
            m.capture_dropped.set(m.capture_dropped.get() + 1);
        }
    }

    /// Count a failed capture step; log it at most once a minute (the request went on unmonitored).
    pub fn capture_failed(&self, what: &str) {
        let m = &self.metrics;
        m.capture_errors.set(m.capture_errors.get() + 1);
        let now = Instant::now();
        if self.errors_logged_at.get().is_none_or(|t| now - t > Duration::from_secs(60)) {
            self.errors_logged_at.set(Some(now));
            crate::warn(&format!("capture failed while {what}; the request went on unmonitored ({} so far, logged \
                                  at most once a minute)", m.capture_errors.get()));
        }
    }

    /// Upstream `pool` refused `stream_options.include_usage` (400/422) and took the request without it.
    pub fn usage_refused(&self, pool: usize) {
        let pool = &self.pools[pool];
        if !pool.usage_rejected.replace(true) {
            crate::warn(&format!("the model server at {} refused stream_options.include_usage (400/422) and \
                accepted the request without it; the proxy no longer adds it (token usage of streams whose clients \
                did not ask for it is then counted from the stream)", pool.upstream.base));
        }
    }

    /// `FastProxy.stats()` as JSON, plus the record sender's.
    pub fn stats_json(&self) -> String {
        let m = &self.metrics;
        let s = &self.sender;
        serde_json::json!({
            "connections": self.connections.get(),
            "in_flight": self.in_flight.get(),
            "requests": m.n_requests.get(),
            "records": m.records.get(),
            "records_dropped": m.capture_dropped.get(),
            "records_undigested": m.undigested.get(),
            "capture_errors": m.capture_errors.get(),
            "upstream_connections": self.pools.iter().map(Pool::open).sum::<usize>(),
            "upstream_idle": self.pools.iter().map(Pool::idle).sum::<usize>(),
            "request_usage": self.cfg.request_usage && !self.pools[0].usage_rejected.get(),
            "sender": {"connected": s.connected(), "sent": s.sent.get(), "dropped": s.dropped.get(),
                       "disconnects": s.disconnects.get(), "buffered_bytes": s.buffered_bytes()},
        })
        .to_string()
    }
}

/// Bind `host:port` (every address the name resolves to; with port 0 they share the first one's).
pub fn listen(host: &str, port: u16, reuse_port: bool, backlog: u32) -> std::io::Result<Vec<TcpListener>> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let mut out = Vec::new();
    let mut bound_port = port;
    for mut addr in addrs {
        addr.set_port(bound_port);
        let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        sock.set_reuseaddr(true)?;
        if reuse_port {
            sock.set_reuseport(true)?;
        }
        sock.bind(addr)?;
        let l = sock.listen(backlog)?;
        bound_port = l.local_addr()?.port();
        out.push(l);
    }
    if out.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, format!("{host} has no address")));
    }
    Ok(out)
}

/// Accept clients until the proxy stops.
pub async fn accept(sh: Rc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if sh.stopping() {
                    return;
                }
                tokio::task::spawn_local(crate::client::serve(sh.clone(), stream));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await, // EMFILE and the like
        }
    }
}

/// Stop: refuse new connections (the caller dropped the listeners), close idle ones, let exchanges in
/// flight end for up to `drain_s`, then end what is left (records say `proxy_stopped`).
pub async fn drain(sh: &Shared) {
    sh.set_state(STOPPING);
    let deadline = Instant::now() + sh.cfg.drain;
    while sh.connections.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sh.set_state(HARD_STOP);
    let deadline = Instant::now() + Duration::from_secs(1);
    while sh.connections.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in &sh.pools {
        p.close();
    }
}
