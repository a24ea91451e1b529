//! The answer of an OpenAI SSE or Ollama NDJSON stream, reassembled after the response in a worker thread
//! (never on the event loop that forwards chunks), so the pipeline gets a few hundred bytes instead of
//! replaying a whole stream through `Capture` in Python.
//!
//! [`digest`] reads the stream exactly as `record_to_span` replays it through `capture.Capture`
//! (SSE events split at the leftmost `\n\n` or `\r\n\r\n`, `data:` lines joined, `[DONE]` and non-object
//! JSON skipped; NDJSON at each `\n`; a content-bearing event is timed by the first chunk entry that
//! completed it) and
//! returns what `Capture.apply_digest` needs: the output text and role per choice, finish reasons, the
//! last model and id, every `usage` and `timings` object (OpenAI, llama.cpp) and the fields of Ollama's
//! `done` object as the server sent them (Python applies them with the same code as on a replay), the number of content pieces and the chunk times that brought
//! content. Whenever a stream holds something this reader does not model exactly (an `error` object,
//! content parts, a non-string role, an odd index, JSON it cannot parse...), it returns None and the
//! record keeps the stream: Python replays it as before. Same answer both ways, by construction; a
//! parity test (`tests/test_fastproxy.py`) checks it on the dialect cases.
//!
//! [`Worker`]: the thread, fed through a bounded queue; a full queue sends the frame undigested.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// The next event end at or after `from`: (event end, separator end), the leftmost of `\n\n` and
/// `\r\n\r\n` (`Capture.feed`).
fn next_event(buf: &[u8], from: usize, ndjson: bool) -> Option<(usize, usize)> {
    if ndjson {
        return memchr::memchr(b'\n', &buf[from..]).map(|p| (from + p, from + p + 1));
    }
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
fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    if event.starts_with(b"data:") && !event.contains(&b'\n') {
        return Cow::Borrowed(strip(&event[5..]));
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
    Cow::Owned(out)
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
    /// Ollama's last object: the fields `Capture._ollama_done` reads, as sent.
    done: Vec<Value>,
}

/// Why a stream is left to the Python replay.
struct Unmodelled;

impl Reader {
    /// One NDJSON line of Ollama (`Capture._ollama_object`); Ok(true) when it brought content.
    fn ollama_line(&mut self, line: &[u8]) -> Result<bool, Unmodelled> {
        let line = strip(line);
        if line.is_empty() {
            return Ok(false);
        }
        let OTop(obj) = serde_json::from_slice::<OTop>(line).map_err(|_| Unmodelled)?;
        let Some(o) = obj else { return Ok(false) };
        match o.model {
            Some(Loose::Str(s)) if !s.is_empty() => self.model = Some(s),
            Some(v) if v.truthy() => return Err(Unmodelled),
            _ => {}
        }
        let text = match (&o.message, &o.response) {
            (Some(Part::Obj { content, .. }), _) => content.as_ref(),
            (_, r) => r.as_ref(),
        };
        let mut content = false;
        if let Some(Loose::Str(t)) = text {
            if !t.is_empty() {
                if self.output.is_empty() {
                    self.output.push(String::new());
                    self.roles.push("assistant".to_owned());
                }
                self.output[0].push_str(t);
                self.pieces += 1;
                content = true;
            }
        }
        if o.done.as_ref().is_some_and(Loose::truthy) {
            self.done.push(Value::Object(o.fields));
        }
        Ok(content)
    }

    /// One event; Ok(true) when it brought content.
    fn event(&mut self, event: &[u8]) -> Result<bool, Unmodelled> {
        let data = event_data(event);
        if data.is_empty() || &data[..] == b"[DONE]" {
            return Ok(false);
        }
        let Top(obj) = serde_json::from_slice::<Top>(&data).map_err(|_| Unmodelled)?;
        let Some(o) = obj else { return Ok(false) }; // not an object: the replay skips it too
        if o.error || o.object.as_ref().is_some_and(|v| v.is_str("list")) {
            return Err(Unmodelled);
        }
        for (v, slot) in [(o.model, &mut self.model), (o.id, &mut self.id)] {
            match v {
                Some(Loose::Str(s)) if !s.is_empty() => *slot = Some(s), // moved, not copied
                Some(v) if v.truthy() => return Err(Unmodelled),
                _ => {}
            }
        }
        self.usage.extend(o.usage.filter(Value::is_object));
        self.timings.extend(o.timings.filter(Value::is_object));
        let choices = match o.choices {
            Some(Choices::List(c)) => c,
            Some(Choices::Other(truthy)) if truthy => return Err(Unmodelled),
            _ => Vec::new(),
        };
        let mut content = false;
        for c in choices.into_iter().flatten() {
            let idx = match &c.index {
                None => 0,
                Some(v) if !v.truthy() => 0,
                Some(Loose::Num { index: Some(i), .. }) if *i <= MAX_INDEX => *i as usize,
                Some(_) => return Err(Unmodelled),
            };
            while self.output.len() <= idx {
                self.output.push(String::new());
                self.roles.push("assistant".to_owned());
            }
            fn text_of(v: &Option<Loose>) -> Result<&str, Unmodelled> {
                match v {
                    Some(Loose::Str(s)) => Ok(s),
                    Some(Loose::Array { .. }) => Err(Unmodelled), // content parts: the replay joins them
                    _ => Ok(""),
                }
            }
            let text = if let Some(Part::Obj { role, content }) = &c.delta {
                if let Some(r) = role.as_ref().filter(|r| r.truthy()) {
                    self.roles[idx] = r.string().ok_or(Unmodelled)?;
                }
                text_of(content)?
            } else if let Some(Part::Obj { role, content }) = &c.message {
                self.roles[idx] = match role.as_ref().filter(|r| r.truthy()) {
                    Some(r) => r.string().ok_or(Unmodelled)?,
                    None => "assistant".to_owned(),
                };
                text_of(content)?
            } else {
                match &c.text {
                    Some(Loose::Str(s)) => s.as_str(),
                    _ => "", // the replay takes a text that is not a string for none
                }
            };
            if !text.is_empty() {
                self.output[idx].push_str(text);
                self.pieces += 1;
                content = true;
            }
            if let Some(f) = c.finish.as_ref().filter(|f| f.truthy()) {
                self.finish.push(f.string().ok_or(Unmodelled)?);
            }
        }
        Ok(content)
    }
}

// -- reading an event: only what the replay reads, every other value skipped unparsed -----------------------
//
// Hand-written serde visitors (the crate has no proc-macro dependencies): a value becomes a `Loose` (what
// Python's truthiness and the strings need), `usage` / `timings` a `Value` (handed to Python as sent). A key
// the replay reads that appears twice fails the read (orjson keeps the last; the replay is left to do so).

/// A JSON value as far as the replay looks at it.
enum Loose {
    Null,
    Bool(bool),
    /// A number: whether it is non-zero, and its value when it is an unsigned integer.
    Num { truthy: bool, index: Option<u64> },
    Str(String),
    Array { empty: bool },
    Object { empty: bool },
}

impl Loose {
    fn truthy(&self) -> bool {
        match self {
            Loose::Null => false,
            Loose::Bool(b) => *b,
            Loose::Num { truthy, .. } => *truthy,
            Loose::Str(s) => !s.is_empty(),
            Loose::Array { empty } | Loose::Object { empty } => !empty,
        }
    }

    fn is_str(&self, s: &str) -> bool {
        matches!(self, Loose::Str(v) if v == s)
    }

    fn string(&self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// The scalar visits every visitor below shares: `$ret` for anything that is not its own shape.
macro_rules! others {
    ($ret:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($ret(Loose::Null))
        }
        fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
            Ok($ret(Loose::Bool(b)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok($ret(Loose::Num { truthy: v != 0, index: Some(v) }))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok($ret(Loose::Num { truthy: v != 0, index: u64::try_from(v).ok() }))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok($ret(Loose::Num { truthy: v != 0.0, index: None }))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok($ret(Loose::Str(s.to_owned())))
        }
        fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
            Ok($ret(Loose::Str(s)))
        }
    };
}

/// The visits of a visitor that reads objects only: every other value (skipped unparsed) is `$none`.
macro_rules! not_an_object {
    ($none:expr) => {
        others!(|_| $none);
        fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
            skip_seq(a)?;
            Ok($none)
        }
    };
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut a: A) -> Result<bool, A::Error> {
    let mut empty = true;
    while a.next_element::<IgnoredAny>()?.is_some() {
        empty = false;
    }
    Ok(empty)
}

struct LooseV;

impl<'de> Visitor<'de> for LooseV {
    type Value = Loose;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    others!(|l| l);
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Loose, A::Error> {
        Ok(Loose::Array { empty: skip_seq(a)? })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
        let mut empty = true;
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            empty = false;
        }
        Ok(Loose::Object { empty })
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseV)
    }
}

/// A key of an object: its position in `names`, None for another key.
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|n| *n == s))
    }
}

/// The known keys of an object, each at most once, every value through `take(position, map)`.
fn read_keys<'de, A: MapAccess<'de>>(mut a: A, names: &'static [&'static str],
                                    mut take: impl FnMut(usize, &mut A) -> Result<(), A::Error>) -> Result<(), A::Error> {
    let mut seen = 0u32;
    while let Some(k) = a.next_key_seed(Key(names))? {
        match k {
            Some(i) => {
                if seen & (1 << i) != 0 {
                    return Err(de::Error::custom("a key the replay reads, twice"));
                }
                seen |= 1 << i;
                take(i, &mut a)?;
            }
            None => {
                a.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

/// `delta` or `message` of a choice.
enum Part {
    NotObject,
    Obj { role: Option<Loose>, content: Option<Loose> },
}

struct PartV;

impl<'de> Visitor<'de> for PartV {
    type Value = Part;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a delta or message")
    }
    not_an_object!(Part::NotObject);
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Part, A::Error> {
        let (mut role, mut content) = (None, None);
        read_keys(a, &["role", "content"], |i, a| {
            let v = Some(a.next_value::<Loose>()?);
            if i == 0 { role = v } else { content = v }
            Ok(())
        })?;
        Ok(Part::Obj { role, content })
    }
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PartV)
    }
}

#[derive(Default)]
struct Choice {
    index: Option<Loose>,
    delta: Option<Part>,
    message: Option<Part>,
    text: Option<Loose>,
    finish: Option<Loose>,
}

/// One element of `choices`: None when it is not an object (the replay skips it).
struct ChoiceV;

impl<'de> Visitor<'de> for ChoiceV {
    type Value = Option<Choice>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a choice")
    }
    not_an_object!(None);
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Option<Choice>, A::Error> {
        let mut c = Choice::default();
        read_keys(a, &["index", "delta", "message", "text", "finish_reason"], |i, a| {
            match i {
                0 => c.index = Some(a.next_value()?),
                1 => c.delta = Some(a.next_value()?),
                2 => c.message = Some(a.next_value()?),
                3 => c.text = Some(a.next_value()?),
                _ => c.finish = Some(a.next_value()?),
            }
            Ok(())
        })?;
        Ok(Some(c))
    }
}

struct ChoiceD(Option<Choice>);

impl<'de> Deserialize<'de> for ChoiceD {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ChoiceV).map(ChoiceD)
    }
}

/// `choices`: a list, or something else (whether it is truthy).
enum Choices {
    List(Vec<Option<Choice>>),
    Other(bool),
}

struct ChoicesV;

impl<'de> Visitor<'de> for ChoicesV {
    type Value = Choices;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("choices")
    }
    others!(|l: Loose| Choices::Other(l.truthy()));
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Choices, A::Error> {
        let mut out = Vec::new();
        while let Some(ChoiceD(c)) = a.next_element()? {
            out.push(c);
        }
        Ok(Choices::List(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Choices, A::Error> {
        Ok(Choices::Other(!matches!(LooseV.visit_map(a)?, Loose::Object { empty: true })))
    }
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ChoicesV)
    }
}

#[derive(Default)]
struct TopObj {
    model: Option<Loose>,
    id: Option<Loose>,
    usage: Option<Value>,
    timings: Option<Value>,
    error: bool,
    object: Option<Loose>,
    choices: Option<Choices>,
}

/// An event's JSON: its object, None when it is not one.
struct Top(Option<TopObj>);

struct TopV;

impl<'de> Visitor<'de> for TopV {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event")
    }
    not_an_object!(Top(None));
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Top, A::Error> {
        let mut o = TopObj::default();
        read_keys(a, &["model", "id", "usage", "timings", "error", "object", "choices"], |i, a| {
            match i {
                0 => o.model = Some(a.next_value()?),
                1 => o.id = Some(a.next_value()?),
                2 => o.usage = Some(a.next_value()?),
                3 => o.timings = Some(a.next_value()?),
                4 => {
                    a.next_value::<IgnoredAny>()?;
                    o.error = true;
                }
                5 => o.object = Some(a.next_value()?),
                _ => o.choices = Some(a.next_value()?),
            }
            Ok(())
        })?;
        Ok(Top(Some(o)))
    }
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopV)
    }
}

#[derive(Default)]
struct OObj {
    model: Option<Loose>,
    message: Option<Part>,
    response: Option<Loose>,
    done: Option<Loose>,
    fields: serde_json::Map<String, Value>,
}

/// One Ollama line's JSON: its object, None when it is not one.
struct OTop(Option<OObj>);

struct OTopV;

/// The keys of an Ollama object the replay reads: from the fifth on, those of its last (`done`) object
/// that `Capture._ollama_done` reads (the rest, such as `context`, is skipped unparsed).
const OLLAMA_KEYS: &[&str] = &["model", "message", "response", "done", "done_reason", "prompt_eval_count",
                               "eval_count", "total_duration", "load_duration", "prompt_eval_duration",
                               "eval_duration"];

impl<'de> Visitor<'de> for OTopV {
    type Value = OTop;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an Ollama object")
    }
    not_an_object!(OTop(None));
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<OTop, A::Error> {
        let mut o = OObj::default();
        read_keys(a, OLLAMA_KEYS, |i, a| {
            match i {
                0 => o.model = Some(a.next_value()?),
                1 => o.message = Some(a.next_value()?),
                2 => o.response = Some(a.next_value()?),
                3 => o.done = Some(a.next_value()?),
                _ => {
                    o.fields.insert(OLLAMA_KEYS[i].to_owned(), a.next_value::<Value>()?);
                }
            }
            Ok(())
        })?;
        Ok(OTop(Some(o)))
    }
}

impl<'de> Deserialize<'de> for OTop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OTopV)
    }
}

/// The digest of an SSE stream as JSON text, or None when the Python replay must read it. `chunks`:
/// the record's `(t_ns, offset)` entries.
pub fn digest(ndjson: bool, body: &[u8], chunks: &[(u64, u64)]) -> Option<String> {
    let mut r = Reader::default();
    let whole = [(0u64, body.len() as u64)];
    let entries: &[(u64, u64)] = if chunks.is_empty() { &whole } else { chunks };
    let mut content_t: Vec<u64> = Vec::new();
    let mut at = 0usize; // where the next event starts
    let mut pos = 0usize; // how far the replay has fed
    let run = |r: &mut Reader, at: &mut usize, upto: usize| -> Result<bool, Unmodelled> {
        let mut content = false;
        while let Some((end, next)) = next_event(body, *at, ndjson) {
            if next > upto {
                break;
            }
            let one = &body[*at..end];
            content |= if ndjson { r.ollama_line(one)? } else { r.event(one)? };
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
        // the stream ended without a final separator (`Capture.flush`)
        if ndjson { r.ollama_line(rest).ok()? } else { r.event(rest).ok()? };
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
    out.insert("done".into(), r.done.into());
    serde_json::to_string(&Value::Object(out)).ok()
}

/// `frame` (a length-prefixed record frame of `record::encode` whose response body is an SSE stream)
/// with the digest in its header and, unless `keep_body`, without the stream; None when the stream is
/// left to the replay.
pub fn rewrite(frame: &[u8], ndjson: bool, chunks: &[(u64, u64)], keep_body: bool) -> Option<Vec<u8>> {
    let word = |at: usize| u32::from_le_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
    let (n_head, n_req, n_resp) = (word(5), word(9), word(13));
    let head = &frame[17..17 + n_head];
    let req = &frame[17 + n_head..17 + n_head + n_req];
    let resp = &frame[17 + n_head + n_req..17 + n_head + n_req + n_resp];
    let d = digest(ndjson, resp, chunks)?;
    let kept: &[u8] = if keep_body { resp } else { b"" };
    let head = if keep_body { Cow::Borrowed(head) } else { without_chunks(head) };
    let n_head = head.len();
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

/// `head` (a record's JSON header) with `"chunks":[]`: a record that carries the digest instead of the
/// stream has no body for the chunk offsets to point into, and the digest holds the times that brought
/// content (a 32-chunk stream's pairs are ~600 of a ~2,300-byte record, parsed again in Python).
/// The first `"chunks":[` is the key: every string before it is JSON-escaped, so holds no bare `"`.
fn without_chunks(head: &[u8]) -> Cow<'_, [u8]> {
    const KEY: &[u8] = b"\"chunks\":[";
    let Some(at) = memchr::memmem::find(head, KEY) else { return Cow::Borrowed(head) };
    let from = at + KEY.len();
    // pairs of integers: the array ends at the first "]]" (its last pair's, then its own); "[]" is empty
    let end = match memchr::memmem::find(&head[from..], b"]]") {
        Some(p) if head[from] != b']' => from + p + 1,
        _ => return Cow::Borrowed(head),
    };
    let mut out = Vec::with_capacity(head.len() - (end - from));
    out.extend_from_slice(&head[..from]);
    out.extend_from_slice(&head[end..]);
    Cow::Owned(out)
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
    /// Ollama's NDJSON (else OpenAI's SSE).
    ndjson: bool,
    chunks: Vec<(u64, u64)>,
}

/// The digest thread: jobs in through a queue bounded in jobs and in bytes, frames (digested or not) back
/// to the event loop.
pub struct Worker {
    jobs: std::cell::RefCell<Option<SyncSender<Job>>>,
    /// Bytes of the frames queued or being read (the thread takes off what it finished).
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Worker {
    /// The worker and the receiver of finished frames (drained by a task on the event loop). At most
    /// `capacity` frames and `max_bytes` of them wait; past that a frame goes on as it is (the sender's
    /// own bound then applies to it).
    pub fn start(mode: Mode, capacity: usize, max_bytes: usize) -> (Worker, UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let (done_tx, done_rx): (UnboundedSender<Vec<u8>>, _) = unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let in_thread = queued.clone();
        std::thread::Builder::new()
            .name("digest".into())
            .spawn(move || {
                for job in rx {
                    let n = job.frame.len();
                    let digested = std::panic::catch_unwind(|| rewrite(&job.frame, job.ndjson, &job.chunks, mode == Mode::Both));
                    let frame = match digested {
                        Ok(Some(f)) => f,
                        _ => job.frame,
                    };
                    in_thread.fetch_sub(n, Ordering::Relaxed);
                    if done_tx.send(frame).is_err() {
                        break;
                    }
                }
            })
            .expect("a digest thread");
        let w = Worker { jobs: std::cell::RefCell::new(Some(tx)), queued, max_bytes };
        (w, done_rx)
    }

    /// Hand `frame` to the thread; Err(frame) when it cannot take it now (send it as it is).
    pub fn submit(&self, frame: Vec<u8>, ndjson: bool, chunks: Vec<(u64, u64)>) -> Result<(), Vec<u8>> {
        let jobs = self.jobs.borrow();
        let Some(tx) = jobs.as_ref() else { return Err(frame) };
        let n = frame.len();
        if self.queued.load(Ordering::Relaxed) + n > self.max_bytes {
            return Err(frame);
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        match tx.try_send(Job { frame, ndjson, chunks }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
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
    fn a_digested_record_drops_its_chunk_pairs_and_nothing_else() {
        let head = br#"{"api":"openai","path":"/v1/\"chunks\":[[9,9]]","chunks":[[1,10],[2,20]],"headers_ns":5}"#;
        assert_eq!(&*super::without_chunks(head),
                   br#"{"api":"openai","path":"/v1/\"chunks\":[[9,9]]","chunks":[],"headers_ns":5}"#);
        let empty = br#"{"chunks":[],"x":1}"#;
        assert_eq!(&*super::without_chunks(empty), &empty[..]);
        let none = br#"{"x":1}"#;
        assert_eq!(&*super::without_chunks(none), &none[..]);
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
        let d: Value = serde_json::from_str(&digest(false, body.as_bytes(), &chunks).unwrap()).unwrap();
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
            assert!(digest(false, ev(s).as_bytes(), &[]).is_none(), "{s}");
        }
    }

    #[test]
    fn an_ollama_stream_and_its_done_fields() {
        let body = concat!(
            "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
            "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\" there\"},\"done\":false}\n",
            "{\"model\":\"llama3\",\"message\":{\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",",
            "\"eval_count\":2,\"eval_duration\":2000,\"context\":[1,2,3]}\n");
        let chunks = [(5, 60), (6, 130), (7, body.len() as u64)];
        let d: Value = serde_json::from_str(&digest(true, body.as_bytes(), &chunks).unwrap()).unwrap();
        assert_eq!(d["output"], serde_json::json!(["Hi there"]));
        assert_eq!(d["model"], "llama3");
        assert_eq!(d["done"], serde_json::json!([{"done_reason": "stop", "eval_count": 2, "eval_duration": 2000}]));
        assert_eq!(d["pieces"], 2);
    }

    #[test]
    fn a_full_queue_hands_the_frame_back_undigested() {
        let (w, _rx) = Worker::start(Mode::On, 4, 100);
        assert!(w.submit(vec![0; 101], false, vec![]).is_err()); // over the byte bound
        assert!(w.submit(vec![0; 60], false, vec![]).is_ok());
        w.close();
        assert_eq!(w.submit(vec![0; 10], false, vec![]).unwrap_err().len(), 10); // closed: goes on as it is
    }

    #[test]
    fn crlf_events_and_a_missing_last_separator() {
        let body = b"data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r\ndata: {\"choices\":[{\"text\":\"b\"}]}";
        let d: Value = serde_json::from_str(&digest(false, body, &[(7, 20), (9, body.len() as u64)]).unwrap()).unwrap();
        assert_eq!(d["output"], serde_json::json!(["ab"]));
        assert_eq!(d["content_t"], serde_json::json!([9])); // the first event ends after entry 20; the last has no end
    }
}

#[cfg(test)]
mod timing {
    /// What a 35-event stream costs the digest thread:
    /// `cargo test --release -- --ignored --nocapture time_a` (~60-80 us on the 2-core test machine; the
    /// Python replay it saves, ~180 us).
    #[test]
    #[ignore]
    fn time_a_32_chunk_stream() {
        let mut body = String::new();
        let mut chunks = Vec::new();
        for i in 0..35 {
            body.push_str(&format!("data: {{\"id\":\"chatcmpl-000000000001\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench-model-8b\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i} caf\\u00e9\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"));
            chunks.push((i as u64 * 1000, body.len() as u64));
        }
        let t = std::time::Instant::now();
        let n = 20000;
        for _ in 0..n {
            std::hint::black_box(super::digest(false, body.as_bytes(), &chunks));
        }
        eprintln!("digest of {} bytes: {:.1} us", body.len(), t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
}
