//! W3C trace context: the client's `traceparent` when it is valid, new ids otherwise.

use std::cell::Cell;

/// (trace id, span id) of a valid W3C `traceparent`, else None (as `_exchange.parse_traceparent`).
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8])> {
    let v = trim_ascii(value);
    let parts: Vec<&[u8]> = v.split(|&b| b == b'-').collect();
    if parts.len() < 4 || parts[0].len() != 2 || parts[0] == b"ff" || (parts[0] == b"00" && parts.len() != 4) {
        return None;
    }
    let (version, trace, span, flags) = (parts[0], parts[1], parts[2], parts[3]);
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let mut t = [0u8; 16];
    let mut s = [0u8; 8];
    let mut vf = [0u8; 1];
    // lowercase hex only (W3C); an uppercase digit fails like Python's `.lower() != value` check
    if !unhex(trace, &mut t) || !unhex(span, &mut s) || !unhex(version, &mut vf) || !unhex(flags, &mut vf) {
        return None;
    }
    if t == [0; 16] || s == [0; 8] {
        return None;
    }
    Some((t, s))
}

fn trim_ascii(v: &[u8]) -> &[u8] {
    // Python's bytes.strip(): space, \t, \n, \v, \f, \r
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

fn unhex(src: &[u8], dst: &mut [u8]) -> bool {
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (i, pair) in src.chunks(2).enumerate() {
        match (nib(pair[0]), nib(pair[1])) {
            (Some(h), Some(l)) => dst[i] = h << 4 | l,
            _ => return false,
        }
    }
    true
}

pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

/// wyrand: ids need to be unique, not secret (Python's `random.getrandbits` is no better).
pub struct Rng(Cell<u64>);

impl Rng {
    pub fn new() -> Rng {
        let mut seed = [0u8; 8];
        let from_os = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .is_ok();
        let mut s = u64::from_le_bytes(seed);
        if !from_os {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            s = t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32);
        }
        Rng(Cell::new(s))
    }

    pub fn next(&self) -> u64 {
        let s = self.0.get().wrapping_add(0xa076_1d64_78bd_642f);
        self.0.set(s);
        let t = (s as u128).wrapping_mul((s ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) ^ t) as u64
    }

    /// A new trace id (never all zero).
    pub fn trace_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&self.next().to_be_bytes());
        if id == [0; 16] {
            id[15] = 1;
        }
        id
    }

    /// A new span id (never all zero).
    pub fn span_id(&self) -> [u8; 8] {
        let id = self.next().max(1);
        id.to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        let ok = b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ";
        let (t, s) = parse_traceparent(ok).unwrap();
        assert_eq!((t[0], s[7]), (0x4b, 0xb7));
        for bad in [
            &b"00-zz-bad-01"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
        // a later version may carry more fields
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }
}
