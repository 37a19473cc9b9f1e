//! The forms of a secret value the redactor matches (see the parent
//! module's doc): the value, its lines, base64 at every alignment and as
//! `base64`/PEM wrap it, URL and form encoding, JSON string escapes. Pure
//! byte encodings, no matching.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use super::MIN_LINE;

/// Shortest encoded fragment matched (base64 at an alignment).
const MIN_FRAGMENT: usize = 6;

/// Every form of one value that is matched (see the module doc).
pub(super) fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![value.to_vec()];
    if value.contains(&b'\n') {
        for line in value.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() >= MIN_LINE {
                out.push(line.to_vec());
            }
        }
        let mut crlf = Vec::with_capacity(value.len() + 8);
        for (i, line) in value.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                crlf.extend_from_slice(b"\r\n");
            }
            crlf.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        }
        out.push(crlf);
    }
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(value).into_bytes());
    }
    // `base64` wraps at 76 columns, PEM and `openssl base64` at 64: the
    // lines of a long value's encoding.
    let encoded = STANDARD.encode(value).into_bytes();
    for width in [76, 64] {
        if encoded.len() > width {
            out.extend(encoded.chunks(width).map(<[u8]>::to_vec));
        }
    }
    for align in 0..3 {
        if let Some(f) = base64_fragment(value, align) {
            out.push(f.clone());
            out.push(
                f.iter()
                    .map(|&b| match b {
                        b'+' => b'-',
                        b'/' => b'_',
                        b => b,
                    })
                    .collect(),
            );
        }
    }
    out.push(percent_encode(value, false, false));
    out.push(percent_encode(value, true, false));
    out.push(percent_encode(value, false, true));
    if let Ok(text) = std::str::from_utf8(value) {
        let json = serde_json::to_string(text).unwrap_or_default();
        if let Some(inner) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) {
            out.push(inner.as_bytes().to_vec());
        }
        out.push(json_ascii(text).into_bytes());
    }
    out.retain(|f| f.len() >= MIN_FRAGMENT.min(value.len()));
    out
}

/// The base64 characters that depend only on `value` when it starts
/// `align` bytes into the encoded data (and whatever follows it): found
/// inside any longer encoded text at that alignment.
fn base64_fragment(value: &[u8], align: usize) -> Option<Vec<u8>> {
    let mut data = vec![0u8; align];
    data.extend_from_slice(value);
    data.extend_from_slice(&[0, 0, 0]);
    let encoded = STANDARD_NO_PAD.encode(&data).into_bytes();
    let start_bit = 8 * align;
    let end_bit = 8 * (align + value.len());
    // Character i covers bits [6i, 6i + 6).
    let first = start_bit.div_ceil(6);
    let last = end_bit / 6; // exclusive
    if last <= first || last - first < MIN_FRAGMENT {
        return None;
    }
    encoded.get(first..last).map(<[u8]>::to_vec)
}

pub(super) fn percent_encode(value: &[u8], lower: bool, form: bool) -> Vec<u8> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    let hex = if lower { LOWER } else { UPPER };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else if form && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    out
}

/// JSON string escaping with every non-ASCII character as `\uXXXX`
/// (surrogate pairs beyond the BMP), without the quotes.
pub(super) fn json_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}
