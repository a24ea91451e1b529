//! The usage event the proxy asks for on a client's behalf, and keeps from it (`_usage.py`). Pure.
//!
//! For an OpenAI stream whose client did not ask for `stream_options.include_usage` the proxy adds
//! it ([`with_usage_option`]) and takes exactly that one usage-only SSE event out of what the client
//! receives ([`UsageStripper`]); every other byte goes through as the server sent it.

use serde_json::Value;
use std::borrow::Cow;

pub const USAGE_KEY: &[u8] = b"\"usage\"";
const OPTION: &[u8] = b"\"stream_options\":{\"include_usage\":true},";

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Whether `"usage"` is in `hay`: looked for in every piece of every stream, with a searcher built
/// once (`find` builds one per call: ~1.5 % of the request path's CPU at 128 streams, perf).
fn has_usage_key(hay: &[u8]) -> bool {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(USAGE_KEY)).find(hay).is_some()
}

/// `body` asking for the usage event, or None when it needs no change: not a JSON object with
/// `"stream": true`, or the client asked for usage itself. Without `stream_options` the option is
/// inserted after the opening brace (every byte the client sent reaches the server as it was);
/// otherwise the merged object is serialised again (keys in their order, compact, like orjson).
pub fn with_usage_option(body: &[u8]) -> Option<Vec<u8>> {
    find(body, b"\"stream\"")?; // substring first: most bodies end here without a parse
    let mut req: Value = serde_json::from_slice(body).ok()?;
    let obj = req.as_object_mut()?;
    if obj.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    match obj.get("stream_options") {
        None => {
            let brace = body.iter().position(|&b| b == b'{')?;
            let mut out = Vec::with_capacity(body.len() + OPTION.len());
            out.extend_from_slice(&body[..brace + 1]);
            out.extend_from_slice(OPTION);
            out.extend_from_slice(&body[brace + 1..]);
            Some(out)
        }
        Some(Value::Object(o)) if o.get("include_usage") == Some(&Value::Bool(true)) => None,
        Some(opts) => {
            let mut merged = match opts {
                Value::Object(o) => o.clone(),
                _ => serde_json::Map::new(),
            };
            merged.insert("include_usage".into(), Value::Bool(true));
            obj.insert("stream_options".into(), Value::Object(merged));
            serde_json::to_vec(&req).ok()
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) // the bytes regex's \s
}

/// `"choices"\s*:\s*\[\s*\]` somewhere in `buf`.
fn has_empty_choices(buf: &[u8]) -> bool {
    let key = b"\"choices\"";
    let mut from = 0;
    while let Some(p) = find(&buf[from..], key) {
        let mut i = from + p + key.len();
        let skip = |mut i: usize| {
            while i < buf.len() && is_space(buf[i]) {
                i += 1;
            }
            i
        };
        i = skip(i);
        if i < buf.len() && buf[i] == b':' {
            i = skip(i + 1);
            if i < buf.len() && buf[i] == b'[' {
                i = skip(i + 1);
                if i < buf.len() && buf[i] == b']' {
                    return true;
                }
            }
        }
        from += p + 1;
    }
    false
}

pub fn ends_with_event_end(piece: &[u8]) -> bool {
    piece.ends_with(b"\n\n") || piece.ends_with(b"\r\r")
}

/// The next event terminator at or after `from`: (start, end), leftmost, `\r\n\r\n` before `\n\n`
/// before `\r\r` at one position (the regex alternation of `_EVENT_END`).
fn next_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 1 < buf.len() {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
        if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            return Some((i, i + 2));
        }
        i += 1;
    }
    None
}

/// Offset just past the last complete event in `buf` (0 when there is none).
fn last_event_end(buf: &[u8]) -> usize {
    let rfind = |n: &[u8]| buf.windows(n.len()).rposition(|w| w == n).map_or(0, |p| p + n.len());
    rfind(b"\n\n").max(rfind(b"\r\n\r\n")).max(rfind(b"\r\r"))
}

/// An SSE event whose data is a JSON object with `"choices": []` and a `usage` object.
fn is_usage_only(event: &[u8]) -> bool {
    let mut data: Vec<u8> = Vec::new();
    let mut any = false;
    let mut start = 0;
    let mut push_line = |line: &[u8], data: &mut Vec<u8>| {
        if let Some(rest) = line.strip_prefix(b"data:") {
            if any {
                data.push(b'\n');
            }
            any = true;
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    };
    let mut i = 0;
    while i < event.len() {
        match event[i] {
            b'\r' => {
                push_line(&event[start..i], &mut data);
                i += if event.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                start = i;
            }
            b'\n' => {
                push_line(&event[start..i], &mut data);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_line(&event[start..], &mut data);
    if !any {
        return false;
    }
    match serde_json::from_slice::<Value>(&data) {
        Ok(Value::Object(o)) => {
            matches!(o.get("choices"), Some(Value::Array(a)) if a.is_empty())
                && matches!(o.get("usage"), Some(Value::Object(_)))
        }
        _ => false,
    }
}

/// Feeds an SSE stream through, minus the first usage-only event. Holds back at most the bytes of
/// one incomplete event (until its terminator arrives); once the event is out, nothing is held.
#[derive(Default)]
pub struct UsageStripper {
    /// Bytes of an incomplete event, not passed on yet.
    pub held: Vec<u8>,
    /// The usage event was removed: nothing more to look for.
    pub done: bool,
}

impl UsageStripper {
    /// The bytes to pass on now: `piece` (after what was held), less the usage event and the
    /// trailing incomplete event.
    pub fn feed<'a>(&mut self, piece: &'a [u8]) -> Cow<'a, [u8]> {
        if self.done {
            return Cow::Borrowed(piece);
        }
        if self.held.is_empty() {
            if !has_usage_key(piece) || !has_empty_choices(piece) {
                if ends_with_event_end(piece) {
                    return Cow::Borrowed(piece); // whole events, none of them the usage event
                }
                let end = last_event_end(piece);
                self.held = piece[end..].to_vec();
                return Cow::Borrowed(&piece[..end]);
            }
            return Cow::Owned(self.scan(piece.to_vec()));
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(piece);
        Cow::Owned(self.scan(buf))
    }

    /// At the end of the stream: whatever was held (an unterminated last event).
    pub fn flush(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    fn scan(&mut self, mut buf: Vec<u8>) -> Vec<u8> {
        let mut start = 0;
        while let Some((m_start, m_end)) = next_event_end(&buf, start) {
            let ev = &buf[start..m_end];
            if has_usage_key(ev) && has_empty_choices(ev) && is_usage_only(&buf[start..m_start]) {
                self.done = true;
                buf.drain(start..m_end); // nothing more is held once the event is out
                return buf;
            }
            start = m_end;
        }
        self.held = buf[start..].to_vec();
        buf.truncate(start);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5}}\n\n";

    #[test]
    fn option_is_inserted_or_merged() {
        assert_eq!(with_usage_option(b"{\"stream\":true}").unwrap(), b"{\"stream_options\":{\"include_usage\":true},\"stream\":true}");
        assert!(with_usage_option(b"{\"stream\":false}").is_none());
        assert!(with_usage_option(b"[\"stream\"]").is_none());
        assert!(with_usage_option(b"{\"stream\":true,\"stream_options\":{\"include_usage\":true}}").is_none());
        assert_eq!(with_usage_option(b"{\"a\":1.5,\"stream_options\":{\"x\":false},\"stream\":true}").unwrap(),
                   b"{\"a\":1.5,\"stream_options\":{\"x\":false,\"include_usage\":true},\"stream\":true}");
        assert_eq!(with_usage_option(b"{\"stream_options\":null,\"stream\":true}").unwrap(),
                   b"{\"stream_options\":{\"include_usage\":true},\"stream\":true}");
    }

    #[test]
    fn only_the_usage_event_goes_at_any_split() {
        for (sep, usage) in [("\n\n", USAGE.to_vec()), ("\r\n\r\n", USAGE.to_vec()), ("\r\r", USAGE.to_vec())] {
            let usage = String::from_utf8(usage).unwrap().replace("\n\n", sep).into_bytes();
            let a = format!("data: {{\"choices\":[{{\"index\":0}}],\"usage\":null}}{sep}: c{sep}").into_bytes();
            let done = format!("data: [DONE]{sep}").into_bytes();
            let stream = [a.clone(), usage.clone(), done.clone()].concat();
            let want = [a.clone(), done.clone()].concat();
            for k in 0..stream.len() {
                let mut st = UsageStripper::default();
                let mut got = st.feed(&stream[..k]).into_owned();
                got.extend_from_slice(&st.feed(&stream[k..]));
                got.extend(st.flush());
                assert_eq!(got, want, "split at {k} with {sep:?}");
            }
        }
    }

    #[test]
    fn not_usage_only_events_stay() {
        let s = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"prompt_filter_results\":[]}\n\n";
        let mut st = UsageStripper::default();
        assert_eq!(&*st.feed(s), &s[..]);
        assert!(!st.done);
    }
}
