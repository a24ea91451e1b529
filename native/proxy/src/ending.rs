//! How an exchange ends (`_exchange.py`): complete, cut mid-body (the client sees a truncated
//! response, never a clean end), answered with the proxy's JSON error, or given up because the
//! client left or the proxy stopped; and the record each captured exchange leaves.

use crate::exchange::{wall_ns, Exchange};
use crate::io::{ClientIo, UpSide};
use crate::proxy::Shared;
use crate::record::{encode, Record};
use crate::wire::error_response;
use std::time::Instant;

impl Exchange {
    // -- endings -----------------------------------------------------------------------------------
    /// The upstream connection ended (EOF, reset, failed write) while serving this exchange.
    pub(crate) fn upstream_closed(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide) {
        let reused = up.conn.as_ref().is_some_and(|c| c.reused);
        up.detach();
        if self.done {
            return;
        }
        if self.head_sent {
            if self.until_close {
                self.end_body(io, Instant::now()); // a body delimited by the close: complete
                self.finish(sh, "");
            } else {
                self.cut(sh, "upstream_disconnected");
            }
        } else if !self.resp_begun && self.replayable && !self.stale_retried && reused {
            self.stale_retried = true; // the keep-alive race: the server closed as the request went out
            self.send(sh, up, Instant::now(), false);
        } else {
            self.error(sh, io, up, 502, "upstream_disconnected", "the model server closed the connection without an answer");
        }
    }

    /// The upstream sent something that is not HTTP.
    pub(crate) fn upstream_broken(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide) {
        up.detach();
        if self.head_sent {
            self.cut(sh, "upstream_protocol_error");
        } else {
            self.error(sh, io, up, 502, "upstream_protocol_error", "the model server sent an invalid HTTP response");
        }
    }

    /// Nothing from the upstream for `upstream_timeout_s`.
    pub(crate) fn upstream_timeout(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide) {
        up.detach();
        if self.head_sent {
            self.cut(sh, "timeout");
        } else {
            self.error(sh, io, up, 504, "timeout", "the model server did not answer in time");
        }
    }

    /// Mid-body failure: the client's connection closes without a proper end of the response.
    pub(crate) fn cut(&mut self, sh: &Shared, error: &str) {
        self.keep_alive = false;
        self.finish(sh, error);
    }

    /// A failure before any byte went to the client: a JSON error of the proxy.
    pub(crate) fn error(&mut self, sh: &Shared, io: &mut ClientIo, up: &mut UpSide, status: u16, code: &str, message: &str) {
        if self.done {
            return;
        }
        up.detach();
        self.connecting = None;
        if !self.req_done {
            self.keep_alive = false;
        }
        io.out.extend_from_slice(&error_response(status, "upstream_error", code, message, !self.keep_alive));
        self.client_status = status;
        self.finish(sh, code);
    }

    pub(crate) fn finish(&mut self, sh: &Shared, error: &str) {
        self.done = true;
        let status = if self.client_status != 0 { self.client_status } else { 499 };
        sh.metrics.count(&self.route_label(), status);
        if self.capture {
            self.emit(sh, error);
        }
    }

    // -- the record --------------------------------------------------------------------------------
    /// Build the record and hand it to the sender; never fails the request.
    pub(crate) fn emit(&mut self, sh: &Shared, error: &str) {
        if !self.traced {
            self.trace(sh);
        }
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let route = &sh.cfg.routes[self.route.expect("captured")];
            let body: &[u8] = &self.body;
            let limit = sh.cfg.max_capture.min(body.len());
            let u = &sh.pools[self.pool].upstream;
            // the identity headers, as `_exchange.py` keeps them: lower-case name, the first of a repeated one
            let mut client_headers: Vec<(Vec<u8>, &[u8])> = Vec::new();
            if !sh.cfg.client_headers.is_empty() {
                for i in 0..self.head.headers.len() {
                    let name = self.head.name(i).to_ascii_lowercase();
                    if sh.cfg.client_headers.contains(&name) && !client_headers.iter().any(|(n, _)| *n == name) {
                        client_headers.push((name, self.head.value(i)));
                    }
                }
            }
            encode(&Record {
                api: &route.api,
                operation: &route.operation,
                path: self.path(),
                trace_id: self.trace_id,
                span_id: self.span_id,
                parent_span_id: self.parent_span_id,
                trace_state: &self.trace_state,
                start_ns: self.start_ns,
                end_ns: wall_ns(),
                request_body: &body[..limit],
                request_size: self.req_size,
                status: self.status,
                content_type: &self.content_type,
                response_body: &self.parts,
                response_size: self.resp_size,
                chunks: &self.chunks,
                headers_ns: self.headers_ns,
                usage_requested: self.usage_added,
                error_type: error,
                upstream: &u.base,
                server_address: &u.host,
                server_port: u.port,
                client_status: (self.client_status != 0 && self.client_status != self.status).then_some(self.client_status),
                client_headers: &client_headers,
                client_address: &self.client_address,
            })
        }));
        let Ok(frame) = built else {
            sh.capture_failed("building or handing off the capture record");
            return;
        };
        // An OpenAI SSE or Ollama NDJSON stream is reassembled by the digest thread, off this loop (its frame comes back
        // to `send_record` through main's relay); the rest goes as it is.
        let route = &sh.cfg.routes[self.route.expect("captured")];
        let ct = &self.content_type;
        let stream = match route.api.as_str() {
            _ if route.operation == "embeddings" => None,
            "openai" if crate::usage::find(ct, b"event-stream").is_some() => Some(false),
            "ollama" if crate::usage::find(ct, b"ndjson").is_some() => Some(true),
            _ => None,
        };
        let frame = match (&sh.digest, stream) {
            (Some(w), Some(ndjson)) => {
                match w.submit(frame, ndjson, self.chunks.clone()) {
                    Ok(()) => return,
                    Err(frame) => {
                        let m = &sh.metrics;
                        m.undigested.set(m.undigested.get() + 1);
                        frame
                    }
                }
            }
            _ => frame,
        };
        sh.send_record(frame);
    }
}
