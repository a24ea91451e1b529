//! The answer of an OpenAI SSE stream, reassembled after the response in a worker thread (never on the
//! event loop that forwards chunks), so the pipeline gets a few hundred bytes instead of replaying a
//! whole stream through `Capture` in Python.
//!
//! [`digest`] reads the stream exactly as `record_to_span` replays it through `capture.Capture`
//! (events split at the leftmost `\n\n` or `\r\n\r\n`, `data:` lines joined, `[DONE]` and non-object
//! JSON skipped; a content-bearing event is timed by the first chunk entry that completed it) and
//! returns what `Capture.apply_digest` needs: the output text and role per choice, finish reasons, the
//! last model and id, every `usage` and `timings` object as the server sent it (Python applies them
//! with the same code as on a replay), the number of content pieces and the chunk times that brought
//! content. Whenever a stream holds something this reader does not model exactly (an `error` object,
//! content parts, a non-string role, an odd index, JSON it cannot parse...), it returns None and the
//! record keeps the stream: Python replays it as before. Same answer both ways, by construction; a
//! parity test (`tests/test_fastproxy.py`) checks it on the dialect cases.
//!
//! [`Worker`]: the thread, fed through a bounded queue; a full queue sends the frame undigested.

use serde_json::Value;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Choice indices beyond this are left to the replay (`capture.MAX_CHOICE_INDEX`: it skips them).
const MAX_INDEX: u64 = 1024;

/// The whitespace of Python's `bytes.strip()`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn strip(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_space(*first) { s = rest } else { break }
    }
    while let [rest @ .., last] = s {
        if is_space(*last) { s = rest } else { break }
    }
    s
}

/// Python's truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The next event end at or after `from`: (event end, separator end), the leftmost of `\n\n` and
/// `\r\n\r\n` (`Capture.feed`).
fn next_event(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(p) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
        let at = i + p;
        let rest = &buf[at..];
        if rest.starts_with(b"\n\n") {
            return Some((at, at + 2));
        }
        if rest.starts_with(b"\r\n\r\n") {
            return Some((at, at + 4));
        }
        i = at + 1;
    }
    None
}

/// The data of one SSE event (`Capture._event`): one `data:` line stripped, or every `data:` line
/// (split as `bytes.splitlines` does) stripped and joined with `\n`.
fn event_data(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if event.starts_with(b"data:") && !event.contains(&b'\n') {
        return std::borrow::Cow::Borrowed(strip(&event[5..]));
    }
    let mut out: Vec<u8> = Vec::new();
    let mut first = true;
    let mut start = 0;
    let n = event.len();
    let mut i = 0;
    while i <= n {
        let end_here = i == n || event[i] == b'\n' || event[i] == b'\r';
        if end_here {
            let line = &event[start..i];
            if line.starts_with(b"data:") {
                if !first {
                    out.push(b'\n');
                }
                first = false;
                out.extend_from_slice(strip(&line[5..]));
            }
            if i < n && event[i] == b'\r' && i + 1 < n && event[i + 1] == b'\n' {
                i += 1;
            }
            start = i + 1;
            if i == n {
                break;
            }
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[derive(Default)]
struct Reader {
    model: Option<String>,
    id: Option<String>,
    output: Vec<String>,
    roles: Vec<String>,
    finish: Vec<String>,
    pieces: u64,
    usage: Vec<Value>,
    timings: Vec<Value>,
}

/// Why a stream is left to the Python replay.
struct Unmodelled;

impl Reader {
    /// One event; Ok(true) when it brought content.
    fn event(&mut self, event: &[u8]) -> Result<bool, Unmodelled> {
        let data = event_data(event);
        if data.is_empty() || &data[..] == b"[DONE]" {
            return Ok(false);
        }
        let obj: Value = serde_json::from_slice(&data).map_err(|_| Unmodelled)?;
        let Value::Object(o) = obj else { return Ok(false) };
        if o.contains_key("error") || o.get("object").and_then(Value::as_str) == Some("list") {
            return Err(Unmodelled);
        }
        for (key, slot) in [("model", &mut self.model), ("id", &mut self.id)] {
            match o.get(key) {
                Some(v) if truthy(v) => *slot = Some(v.as_str().ok_or(Unmodelled)?.to_owned()),
                _ => {}
            }
        }
        if let Some(u) = o.get("usage") {
            if u.is_object() {
                self.usage.push(u.clone());
            }
        }
        if let Some(t) = o.get("timings") {
            if t.is_object() {
                self.timings.push(t.clone());
            }
        }
        let mut content = false;
        let choices = match o.get("choices") {
            Some(Value::Array(a)) => a.as_slice(),
            Some(v) if truthy(v) => return Err(Unmodelled),
            _ => &[],
        };
        for choice in choices {
            let Value::Object(c) = choice else { continue };
            let idx = match c.get("index") {
                None | Some(Value::Null) | Some(Value::Bool(false)) => 0,
                Some(Value::Number(n)) if n.as_u64().is_some_and(|i| i <= MAX_INDEX) => n.as_u64().unwrap() as usize,
                Some(_) => return Err(Unmodelled),
            };
            while self.output.len() <= idx {
                self.output.push(String::new());
                self.roles.push("assistant".to_owned());
            }
            let text_of = |v: Option<&Value>| -> Result<String, Unmodelled> {
                match v {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(Value::Array(_)) => Err(Unmodelled), // content parts: the replay joins them
                    _ => Ok(String::new()),
                }
            };
            let text = if let Some(Value::Object(delta)) = c.get("delta") {
                match delta.get("role") {
                    Some(r) if truthy(r) => self.roles[idx] = r.as_str().ok_or(Unmodelled)?.to_owned(),
                    _ => {}
                }
                text_of(delta.get("content"))?
            } else if let Some(Value::Object(msg)) = c.get("message") {
                self.roles[idx] = match msg.get("role") {
                    Some(r) if truthy(r) => r.as_str().ok_or(Unmodelled)?.to_owned(),
                    _ => "assistant".to_owned(),
                };
                text_of(msg.get("content"))?
            } else {
                match c.get("text") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) if truthy(v) => return Err(Unmodelled),
                    _ => String::new(),
                }
            };
            if !text.is_empty() {
                self.output[idx].push_str(&text);
                self.pieces += 1;
                content = true;
            }
            match c.get("finish_reason") {
                Some(f) if truthy(f) => self.finish.push(f.as_str().ok_or(Unmodelled)?.to_owned()),
                _ => {}
            }
        }
        Ok(content)
    }
}

/// The digest of an SSE stream as JSON text, or None when the Python replay must read it. `chunks`:
/// the record's `(t_ns, offset)` entries.
pub fn digest(body: &[u8], chunks: &[(u64, u64)]) -> Option<String> {
    let mut r = Reader::default();
    let whole = [(0u64, body.len() as u64)];
    let entries: &[(u64, u64)] = if chunks.is_empty() { &whole } else { chunks };
    let mut content_t: Vec<u64> = Vec::new();
    let mut at = 0usize; // where the next event starts
    let mut pos = 0usize; // how far the replay has fed
    let run = |r: &mut Reader, at: &mut usize, upto: usize| -> Result<bool, Unmodelled> {
        let mut content = false;
        while let Some((end, next)) = next_event(body, *at) {
            if next > upto {
                break;
            }
            content |= r.event(&body[*at..end])?;
            *at = next;
        }
        Ok(content)
    };
    for &(t, offset) in entries {
        let offset = offset as usize;
        if offset <= pos {
            continue;
        }
        if offset > body.len() {
            return None; // a body cut at the capture limit: the replay reads it
        }
        pos = offset;
        if run(&mut r, &mut at, offset).ok()? {
            content_t.push(t);
        }
    }
    run(&mut r, &mut at, body.len()).ok()?;
    let rest = &body[at..];
    if !strip(rest).is_empty() {
        r.event(rest).ok()?; // the stream ended without a final separator (`Capture.flush`)
    }
    let mut out = serde_json::Map::new();
    out.insert("body_len".into(), body.len().into());
    if let Some(m) = r.model {
        out.insert("model".into(), m.into());
    }
    if let Some(i) = r.id {
        out.insert("id".into(), i.into());
    }
    out.insert("output".into(), r.output.into());
    out.insert("roles".into(), r.roles.into());
    out.insert("finish".into(), r.finish.into());
    out.insert("pieces".into(), r.pieces.into());
    out.insert("content_t".into(), content_t.into());
    out.insert("usage".into(), r.usage.into());
    out.insert("timings".into(), r.timings.into());
    serde_json::to_string(&Value::Object(out)).ok()
}

/// `frame` (a length-prefixed record frame of `record::encode` whose response body is an SSE stream)
/// with the digest in its header and, unless `keep_body`, without the stream; None when the stream is
/// left to the replay.
pub fn rewrite(frame: &[u8], chunks: &[(u64, u64)], keep_body: bool) -> Option<Vec<u8>> {
    let word = |at: usize| u32::from_le_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
    let (n_head, n_req, n_resp) = (word(5), word(9), word(13));
    let head = &frame[17..17 + n_head];
    let req = &frame[17 + n_head..17 + n_head + n_req];
    let resp = &frame[17 + n_head + n_req..17 + n_head + n_req + n_resp];
    let d = digest(resp, chunks)?;
    let kept: &[u8] = if keep_body { resp } else { b"" };
    let new_head_len = n_head + 10 + d.len(); // `,"digest":` + the object
    let payload = 13 + new_head_len + n_req + kept.len();
    let mut out = Vec::with_capacity(4 + payload);
    out.extend_from_slice(&(payload as u32).to_le_bytes());
    out.push(frame[4]);
    out.extend_from_slice(&(new_head_len as u32).to_le_bytes());
    out.extend_from_slice(&(n_req as u32).to_le_bytes());
    out.extend_from_slice(&(kept.len() as u32).to_le_bytes());
    out.extend_from_slice(&head[..n_head - 1]); // without the closing brace
    out.extend_from_slice(b",\"digest\":");
    out.extend_from_slice(d.as_bytes());
    out.push(b'}');
    out.extend_from_slice(req);
    out.extend_from_slice(kept);
    Some(out)
}

/// What the proxy does with SSE streams (`digest` in the config).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Mode {
    /// Records keep the stream; Python replays it.
    Off,
    /// The digest replaces the stream (the default).
    On,
    /// The digest and the stream (the parity test compares the two).
    Both,
}

struct Job {
    frame: Vec<u8>,
    chunks: Vec<(u64, u64)>,
}

/// The digest thread: jobs in through a bounded queue, frames (digested or not) back to the event loop.
pub struct Worker {
    jobs: std::cell::RefCell<Option<SyncSender<Job>>>,
    /// Frames sent back undigested because the queue was full.
    pub skipped: std::cell::Cell<u64>,
}

impl Worker {
    /// The worker and the receiver of finished frames (drained by a task on the event loop).
    pub fn start(mode: Mode, capacity: usize) -> (Worker, UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let (done_tx, done_rx): (UnboundedSender<Vec<u8>>, _) = unbounded_channel();
        std::thread::Builder::new()
            .name("digest".into())
            .spawn(move || {
                for job in rx {
                    let digested = std::panic::catch_unwind(|| rewrite(&job.frame, &job.chunks, mode == Mode::Both));
                    let frame = match digested {
                        Ok(Some(f)) => f,
                        _ => job.frame,
                    };
                    if done_tx.send(frame).is_err() {
                        break;
                    }
                }
            })
            .expect("a digest thread");
        (Worker { jobs: std::cell::RefCell::new(Some(tx)), skipped: std::cell::Cell::new(0) }, done_rx)
    }

    /// Hand `frame` to the thread; Err(frame) when it cannot take it now (send it as it is).
    pub fn submit(&self, frame: Vec<u8>, chunks: Vec<(u64, u64)>) -> Result<(), Vec<u8>> {
        let jobs = self.jobs.borrow();
        let Some(tx) = jobs.as_ref() else { return Err(frame) };
        match tx.try_send(Job { frame, chunks }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
                self.skipped.set(self.skipped.get() + 1);
                Err(j.frame)
            }
        }
    }

    /// No more jobs: the thread finishes the queued ones, then the receiver ends.
    pub fn close(&self) {
        self.jobs.borrow_mut().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> String {
        format!("data: {s}\n\n")
    }

    #[test]
    fn reassembles_a_chat_stream_with_its_times() {
        let parts = [
            ev(r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#),
            ev(r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#),
            ev(r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#),
            ev(r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2},"timings":{"prompt_ms":1.5}}"#),
            "data: [DONE]\n\n".to_owned(),
        ];
        let body: String = parts.concat();
        let mut chunks = Vec::new();
        let mut off = 0;
        for (i, p) in parts.iter().enumerate() {
            off += p.len() as u64;
            chunks.push(((i as u64 + 1) * 10, off));
        }
        let d: Value = serde_json::from_str(&digest(body.as_bytes(), &chunks).unwrap()).unwrap();
        assert_eq!(d["output"], serde_json::json!(["Hello"]));
        assert_eq!(d["roles"], serde_json::json!(["assistant"]));
        assert_eq!(d["finish"], serde_json::json!(["stop"]));
        assert_eq!(d["content_t"], serde_json::json!([20, 30]));
        assert_eq!(d["pieces"], 2);
        assert_eq!(d["model"], "m");
        assert_eq!(d["usage"][0]["completion_tokens"], 2);
        assert_eq!(d["timings"][0]["prompt_ms"], 1.5);
    }

    #[test]
    fn what_it_does_not_model_is_left_to_the_replay() {
        for s in [r#"{"error":{"message":"x"}}"#, r#"{"choices":[{"index":"1","text":"a"}]}"#,
                  r#"{"choices":[{"delta":{"content":[{"type":"text","text":"a"}]}}]}"#, "{not json"] {
            assert!(digest(ev(s).as_bytes(), &[]).is_none(), "{s}");
        }
    }

    #[test]
    fn crlf_events_and_a_missing_last_separator() {
        let body = b"data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r\ndata: {\"choices\":[{\"text\":\"b\"}]}";
        let d: Value = serde_json::from_str(&digest(body, &[(7, 20), (9, body.len() as u64)]).unwrap()).unwrap();
        assert_eq!(d["output"], serde_json::json!(["ab"]));
        assert_eq!(d["content_t"], serde_json::json!([9])); // the first event ends after entry 20; the last has no end
    }
}
