//! Several upstreams behind one proxy, chosen by the model a request asks for (`_routes.py`).
//!
//! `proxy.routes` arrive as `model_routes`: in order, each a requested model name or shell-style glob
//! (`fnmatch.fnmatchcase`: `*`, `?`, `[seq]`, `[!seq]`), its upstream, and, for a managed route, the
//! `Authorization` value that replaces the client's on the way there. A request no route matches goes
//! to `upstream`. Per captured request this costs one search of the buffered body for `"model"` and
//! one look-up of the name (each name is matched against the globs once, then remembered).

use crate::config::ModelRoute;
use memchr::memmem;
use std::cell::RefCell;
use std::collections::HashMap;

/// Distinct requested model names remembered with their route; past it names are matched each time.
const MAX_NAMES: usize = 4096;
/// Longest model name read by the quick scan (the Python proxy's regex takes at most 512 characters).
const MAX_NAME: usize = 512;

/// The route table and the names already matched.
pub struct Router {
    pub routes: Vec<ModelRoute>,
    /// Upstream pool index of each route (0 is `upstream`; routes sharing an upstream share a pool).
    pub pool_of: Vec<usize>,
    seen: RefCell<HashMap<String, Option<usize>>>,
}

impl Router {
    pub fn new(routes: Vec<ModelRoute>, pool_of: Vec<usize>) -> Router {
        Router { routes, pool_of, seen: RefCell::new(HashMap::new()) }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route index for the request whose body is `body`; None: the default upstream.
    pub fn route(&self, body: &[u8]) -> Option<usize> {
        let model = model_of(body)?;
        if let Some(hit) = self.seen.borrow().get(&model) {
            return *hit;
        }
        let found = self.routes.iter().position(|r| r.pattern == model || glob_match(&r.pattern, &model));
        let mut seen = self.seen.borrow_mut();
        if seen.len() < MAX_NAMES {
            seen.insert(model, found);
        }
        found
    }
}

/// The top-level `model` of a JSON request body, as `_routes.model_of`: one `"model": "..."` without
/// escapes is taken as it is; a body holding the key more than once (a tool's schema) or a name with
/// escapes is parsed.
pub fn model_of(body: &[u8]) -> Option<String> {
    let mut hits = Vec::new();
    for at in memmem::find_iter(body, b"\"model\"") {
        if let Some(v) = string_after(body, at + 7) {
            hits.push(v);
            if hits.len() > 1 {
                break;
            }
        }
    }
    match hits.as_slice() {
        [] => None,
        [one] if !one.contains(&b'\\') => std::str::from_utf8(one).ok().map(str::to_string),
        _ => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => m.get("model").and_then(|v| v.as_str()).map(str::to_string),
            _ => None,
        },
    }
}

/// `\s*:\s*"(...)"` after a `"model"` key: the raw bytes of the string (escapes kept), at most
/// [`MAX_NAME`] characters; None when what follows is not a colon and a string.
fn string_after(body: &[u8], mut i: usize) -> Option<&[u8]> {
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    while i < body.len() && ws(body[i]) {
        i += 1;
    }
    if body.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < body.len() && ws(body[i]) {
        i += 1;
    }
    if body.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    let mut chars = 0;
    while j < body.len() {
        match body[j] {
            b'"' => return Some(&body[start..j]),
            b'\\' => j += 2,
            _ => j += 1,
        }
        chars += 1;
        if chars > MAX_NAME {
            return None;
        }
    }
    None
}

/// `fnmatch.fnmatchcase(name, pattern)`: `*` any run, `?` one character, `[seq]` / `[!seq]` a set
/// (ranges `a-z`; a `]` first in the set is literal); an unclosed `[` is a literal `[`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The set starting at `p[at] == '['` against `c`: (matched, index after the set), or None when the
/// set is not closed (then `[` is literal, as in fnmatch).
fn class(p: &[char], at: usize, c: char) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let first = i;
    let mut hit = false;
    while i < p.len() && (p[i] != ']' || i == first) {
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            hit |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((hit != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_fnmatchcase() {
        for (pat, name, want) in [
            ("gpt-4o*", "gpt-4o-mini", true), ("gpt-4o*", "gpt-4", false), ("llama", "llama", true),
            ("llama", "Llama", false), ("*", "", true), ("a?c", "abc", true), ("a?c", "ac", false),
            ("m-[0-9]", "m-7", true), ("m-[0-9]", "m-x", false), ("m-[!0-9]", "m-x", true),
            ("m-[]]", "m-]", true), ("a[b", "a[b", true), ("*-v2", "llama-3-v2", true),
            ("*a*b*", "xaxxbx", true), ("*a*b", "xaxxbx", false), ("é*", "été", true),
        ] {
            assert_eq!(glob_match(pat, name), want, "{pat} {name}");
        }
    }

    #[test]
    fn the_model_of_a_body() {
        assert_eq!(model_of(br#"{"model": "llama-v2", "messages": []}"#).as_deref(), Some("llama-v2"));
        assert_eq!(model_of(br#"{"messages":[],"model" :"m"}"#).as_deref(), Some("m"));
        assert_eq!(model_of(br#"{"messages": []}"#), None);
        assert_eq!(model_of(b"not json"), None);
        // a tool's schema names "model" too: parsed, the top-level one wins
        let body = br#"{"tools":[{"parameters":{"model":"inner"}}],"model":"outer"}"#;
        assert_eq!(model_of(body).as_deref(), Some("outer"));
        assert_eq!(model_of(br#"{"model": "a\"b"}"#).as_deref(), Some("a\"b"));
        assert_eq!(model_of(br#"{"model": 7}"#), None);
    }

    #[test]
    fn the_first_matching_route_wins_and_names_are_remembered() {
        let up = crate::config::parse_upstream("http://127.0.0.1:9").unwrap();
        let r = Router::new(vec![
            ModelRoute { pattern: "gpt*".into(), upstream: up.clone(), auth: Some(b"Bearer k".to_vec()) },
            ModelRoute { pattern: "gpt-4o".into(), upstream: up.clone(), auth: None },
            ModelRoute { pattern: "llama-v2".into(), upstream: up, auth: None },
        ], vec![1, 1, 2]);
        assert_eq!(r.route(br#"{"model":"gpt-4o"}"#), Some(0));
        assert_eq!(r.route(br#"{"model":"llama-v2"}"#), Some(2));
        assert_eq!(r.route(br#"{"model":"llama"}"#), None);
        assert_eq!(r.route(br#"{"model":"llama"}"#), None);
        assert_eq!(r.seen.borrow().len(), 3);
    }
}
