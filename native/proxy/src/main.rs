//! `monitor-proxy`: llm-monitor's capture proxy request path, native.
//!
//! The same behaviour as `monitor/sidecar/proxy/fastproxy.py` (the Python path stays the fallback):
//! an HTTP/1.1 reverse proxy in front of one model server that forwards every byte, keeps a copy of
//! each captured exchange and sends it as a `CaptureRecord` frame over the pipeline's Unix socket.
//!
//!     monitor-proxy --config-json '{"upstream": "http://127.0.0.1:8000", "port": 8080, ...}'
//!     monitor-proxy --config-json - < config.json
//!
//! Prints one line `{"ready": true, "port": N, "metrics_port": M}` once it listens; serves
//! `/metrics` (Prometheus text) and `/stats` (JSON) on the metrics port; on SIGTERM or SIGINT stops
//! accepting, lets streams in flight finish for `drain_s`, sends the records it holds, exits 0.
//! Exit 2: bad configuration; 1: cannot listen.

mod client;
mod config;
mod digest;
mod ending;
mod exchange;
mod io;
mod metrics;
mod pool;
mod proxy;
mod record;
mod request;
mod response;
mod routing;
mod sender;
mod trace;
mod usage;
mod wire;

use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// One line on stderr (the parent's log shows it as the proxy's).
pub fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr(), "monitor-proxy: {msg}");
}

fn config_text() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => read_stdin(),
        [flag, v] if flag == "--config-json" => if v == "-" { read_stdin() } else { Ok(v.clone()) },
        [v] if v == "--version" => {
            println!("monitor-proxy {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        _ => Err("usage: monitor-proxy [--config-json JSON|-] (no argument: the JSON on stdin)".into()),
    }
}

fn read_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading the config from stdin: {e}"))?;
    Ok(s)
}

fn main() {
    // SIGTERM when the process that started us dies, so no proxy outlives its parent (Linux)
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    let cfg = match config_text().and_then(|t| config::Config::from_json(&t)) {
        Ok(c) => c,
        Err(e) => {
            warn(&format!("config: {e}"));
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let code = tokio::task::LocalSet::new().block_on(&rt, run(cfg));
    std::process::exit(code);
}

async fn run(cfg: config::Config) -> i32 {
    let listeners = match proxy::listen(&cfg.host, cfg.port, cfg.reuse_port, 2048) {
        Ok(l) => l,
        Err(e) => {
            warn(&format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port));
            return 1;
        }
    };
    let metrics_listener = match proxy::listen(&cfg.metrics_host, cfg.metrics_port, false, 64) {
        Ok(mut l) => l.remove(0),
        Err(e) => {
            warn(&format!("cannot listen on {}:{} for /metrics: {e}", cfg.metrics_host, cfg.metrics_port));
            return 1;
        }
    };
    let port = listeners[0].local_addr().map(|a| a.port()).unwrap_or(0);
    let metrics_port = metrics_listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let rng = Rc::new(trace::Rng::new());
    let sender = sender::Sender::new(cfg.capture_socket.clone(), cfg.capture_buffer_bytes);
    let (digest, mut digested) = match cfg.digest {
        digest::Mode::Off => (None, None),
        mode => {
            // frames waiting for the digest: at most a quarter of what the sender may buffer
            let (w, rx) = digest::Worker::start(mode, 4096, cfg.capture_buffer_bytes / 4);
            (Some(w), Some(rx))
        }
    };
    let sh = Rc::new(proxy::Shared::new(cfg, sender.clone(), digest, rng.clone()));
    // the digest thread's frames back into the sender, on this loop (the sender is not thread-safe)
    let relay = digested.take().map(|mut rx| {
        let sh = sh.clone();
        tokio::task::spawn_local(async move {
            while let Some(frame) = rx.recv().await {
                sh.send_record(frame);
            }
        })
    });

    let writer = tokio::task::spawn_local(sender.clone().run(rng));
    // records of the first requests should not be lost to the connect: wait a little for it
    let t = Instant::now();
    while sh.cfg.capture_socket.is_some() && !sender.connected() && t.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let stats_of = sh.clone();
    tokio::task::spawn_local(metrics::serve(metrics_listener, sh.metrics.clone(),
                                            Rc::new(move || stats_of.stats_json())));
    let accepting: Vec<_> = listeners.into_iter().map(|l| tokio::task::spawn_local(proxy::accept(sh.clone(), l))).collect();
    let expiring = {
        let sh = sh.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = Instant::now();
                for p in &sh.pools {
                    p.expire(now);
                }
            }
        })
    };

    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            warn("cannot install the SIGTERM/SIGINT handlers");
            return 1;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{{\"ready\": true, \"port\": {port}, \"metrics_port\": {metrics_port}}}");
        let _ = out.flush();
    }
    std::future::poll_fn(|cx| {
        if term.poll_recv(cx).is_ready() || int.poll_recv(cx).is_ready() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;

    for a in &accepting {
        a.abort(); // the listening sockets close: new connections are refused
    }
    proxy::drain(&sh).await;
    expiring.abort();
    if let (Some(w), Some(relay)) = (&sh.digest, relay) {
        w.close(); // the thread finishes what is queued, then the relay ends
        let _ = tokio::time::timeout(Duration::from_secs(2), relay).await;
    }
    sender.close(Duration::from_secs(2)).await;
    writer.abort();
    0
}
