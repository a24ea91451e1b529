//! The proxy's counters, served as Prometheus text (`GET /metrics`) and its state as JSON
//! (`GET /stats`, the keys of `FastProxy.stats()`) on a loopback port of their own.
//!
//! The names are those `SelfMetrics` gives the Python proxy's counters, so the Python parent
//! re-exposes them unchanged: `monitor_proxy_requests_total{route,status}`,
//! `monitor_proxy_capture_errors_total`, `monitor_proxy_capture_dropped_total`; and the binary's own
//! `monitor_proxy_records_undigested_total` (`crate::digest`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Metrics {
    requests: RefCell<Vec<(String, u16, u64)>>,
    pub n_requests: Cell<u64>,
    pub capture_errors: Cell<u64>,
    pub capture_dropped: Cell<u64>,
    pub records: Cell<u64>,
    /// OpenAI streams sent whole because the digest thread's queue was full (the pipeline replays them).
    pub undigested: Cell<u64>,
}

impl Metrics {
    /// One request answered (or ended) with `status` on `route` (`-`: refused before routing).
    pub fn count(&self, route: &str, status: u16) {
        self.n_requests.set(self.n_requests.get() + 1);
        let mut rows = self.requests.borrow_mut();
        match rows.iter_mut().find(|(r, s, _)| *s == status && r == route) {
            Some(row) => row.2 += 1,
            None => rows.push((route.to_string(), status, 1)),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("# HELP monitor_proxy_requests_total Requests through the capture proxy by route and HTTP status\n");
        out.push_str("# TYPE monitor_proxy_requests_total counter\n");
        for (route, status, n) in self.requests.borrow().iter() {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            out.push_str(&format!("monitor_proxy_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}.0\n"));
        }
        for (name, help, v) in [
            ("monitor_proxy_capture_errors", "Capture steps that failed (the request itself went on unmonitored)",
             self.capture_errors.get()),
            ("monitor_proxy_capture_dropped", "Capture records the sink refused (its buffer full or the pipeline \
              away): the request itself went on, its record was lost", self.capture_dropped.get()),
            ("monitor_proxy_records_undigested", "OpenAI streams sent whole because the digest thread was \
              behind (the pipeline reassembles them instead: more of its CPU, nothing lost)", self.undigested.get()),
        ] {
            out.push_str(&format!("# HELP {name}_total {help}\n# TYPE {name}_total counter\n{name}_total {v}.0\n"));
        }
        out
    }
}

/// Serve `/metrics` and `/stats` on `listener` until the process ends; one request per connection.
pub async fn serve(listener: TcpListener, metrics: Rc<Metrics>, stats: Rc<dyn Fn() -> String>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (metrics, stats) = (metrics.clone(), stats.clone());
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &metrics, &*stats)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, stats: &dyn Fn() -> String) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while memchr::memmem::find(&buf, b"\r\n\r\n").is_none() && buf.len() < 16384 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or(b"");
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or(b"");
    let path = &path[..path.iter().position(|&b| b == b'?').unwrap_or(path.len())];
    let (status, ctype, body) = match path {
        b"/metrics" | b"/" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        b"/stats" => ("200 OK", "application/json", stats()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                       body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
