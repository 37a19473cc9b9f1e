//! Streaming redaction of secret values from a command's output (pure: no
//! I/O, no clock). The worker puts every byte a command writes through one
//! [`Redactor`] per stream before anything is stored or published, so every
//! consumer (stored output, SSE, the WebSocket attach, `/output`, webhooks,
//! the console) only ever sees redacted bytes.
//!
//! What is matched, for each value a command was given:
//! - the value itself, exactly, wherever the writes that carry it split it;
//! - a multi-line value line by line (lines of at least [`MIN_LINE`] bytes,
//!   without their `\r`), and whole with `\r\n` line ends (a terminal's
//!   output);
//! - its base64 (standard and URL-safe alphabets, with and without padding,
//!   and the part that stays the same at each of the three byte alignments,
//!   so the value is found inside a longer encoded text such as
//!   `base64("user:" + value)`; a long value's encoding also line by line
//!   as `base64` (76 columns) and PEM (64) wrap it);
//! - its URL encoding (upper- and lower-case hex, and form encoding with
//!   `+` for a space);
//! - its escaped form inside a JSON string (as `serde_json` writes it, and
//!   with every non-ASCII character as `\uXXXX`, as Python's `json.dumps`
//!   does).
//!
//! A match becomes `***NAME***`. Matching is leftmost-longest over the whole
//! stream, and a streamed result equals the result of redacting the whole
//! output at once (tested below at every split point).
//!
//! Latency and memory: the redactor holds back only the end of what it was
//! given that is the beginning of some form of some value (so at most the
//! longest form's length minus one byte), and emits everything before it at
//! once; [`Redactor::finish`] flushes the rest at the end of the output.
//! Nothing depends on time: a value written one byte per second is held back
//! byte by byte until it is complete (then replaced) or proven different
//! (then released).

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use self::forms::forms;

mod forms;

/// Shortest value accepted (shorter ones would redact noise).
pub const MIN_VALUE: usize = 6;
/// Shortest line of a multi-line value matched on its own.
pub const MIN_LINE: usize = 6;

/// The compiled forms of a set of named values.
pub struct Redaction {
    matcher: Option<AhoCorasick>,
    /// Per pattern: its bytes and the replacement.
    patterns: Vec<(Vec<u8>, Arc<[u8]>)>,
    /// Per first byte, the patterns that start with it.
    by_first: Vec<Vec<usize>>,
    max_len: usize,
}

impl std::fmt::Debug for Redaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the patterns: they are the secrets.
        f.debug_struct("Redaction")
            .field("patterns", &self.patterns.len())
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl Redaction {
    /// The forms of `values` (`(name, value)`); values shorter than
    /// [`MIN_VALUE`] bytes are ignored (the API refuses them).
    pub fn new<'a>(values: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut seen: HashMap<Vec<u8>, ()> = HashMap::new();
        let mut patterns: Vec<(Vec<u8>, Arc<[u8]>)> = Vec::new();
        for (name, value) in values {
            if value.len() < MIN_VALUE {
                continue;
            }
            let replacement: Arc<[u8]> = format!("***{name}***").into_bytes().into();
            for form in forms(value) {
                if seen.insert(form.clone(), ()).is_none() {
                    patterns.push((form, replacement.clone()));
                }
            }
        }
        let mut by_first: Vec<Vec<usize>> = vec![Vec::new(); 256];
        for (i, (p, _)) in patterns.iter().enumerate() {
            by_first[usize::from(p[0])].push(i);
        }
        let max_len = patterns.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns.iter().map(|(p, _)| p.as_slice()))
                .ok()
        };
        Self {
            matcher,
            patterns,
            by_first,
            max_len,
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Length of the longest form: a redactor holds back less than this.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Number of forms matched.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether `tail` (not empty) is the beginning (strictly shorter) of
    /// some form; only the forms starting with its first byte are compared.
    fn is_proper_prefix(&self, tail: &[u8]) -> bool {
        self.by_first[usize::from(tail[0])].iter().any(|&i| {
            let p = &self.patterns[i].0;
            p.len() > tail.len() && p.starts_with(tail)
        })
    }

    /// Redacts a whole buffer at once (what the stream equals).
    pub fn redact_all(self: &Arc<Self>, data: &[u8]) -> Vec<u8> {
        let mut r = Redactor::new(self.clone());
        let mut out = r.push(data);
        out.extend(r.finish());
        out
    }
}

/// The redaction state of one output stream.
pub struct Redactor {
    redaction: Arc<Redaction>,
    /// Bytes held back: the end of the input that may begin a match.
    pending: Vec<u8>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("held", &self.pending.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor of `redaction`'s values.
    pub fn new(redaction: Arc<Redaction>) -> Self {
        Self {
            redaction,
            pending: Vec::new(),
        }
    }

    /// Bytes currently held back (always less than
    /// [`Redaction::max_len`]).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Takes the next piece of the stream; returns what may be emitted now
    /// (redacted), holding back only a possible beginning of a value.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.redaction.matcher else {
            return chunk.to_vec();
        };
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        let hold = self.hold_point(&buf);
        let mut out = Vec::with_capacity(buf.len());
        let mut at = 0;
        for m in matcher.find_iter(&buf) {
            // A match starting at or after the hold point may still grow
            // (or be preceded by a longer one): decide it next time. One
            // that starts before is final (see the module tests).
            if m.start() >= hold {
                break;
            }
            out.extend_from_slice(&buf[at..m.start()]);
            out.extend_from_slice(&self.redaction.patterns[m.pattern().as_usize()].1);
            at = m.end();
        }
        let keep_from = at.max(hold);
        out.extend_from_slice(&buf[at..keep_from]);
        buf.drain(..keep_from);
        self.pending = buf;
        out
    }

    /// The end of the stream: redacts and returns what was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        let Some(matcher) = &self.redaction.matcher else {
            return rest;
        };
        let mut out = Vec::with_capacity(rest.len());
        let mut at = 0;
        for m in matcher.find_iter(&rest) {
            out.extend_from_slice(&rest[at..m.start()]);
            out.extend_from_slice(&self.redaction.patterns[m.pattern().as_usize()].1);
            at = m.end();
        }
        out.extend_from_slice(&rest[at..]);
        out
    }

    /// The first position whose suffix is a proper prefix of some form:
    /// everything from there on may still turn out to be (part of) a match.
    fn hold_point(&self, buf: &[u8]) -> usize {
        let r = &self.redaction;
        let from = buf.len().saturating_sub(r.max_len.saturating_sub(1));
        (from..buf.len())
            .find(|&s| r.is_proper_prefix(&buf[s..]))
            .unwrap_or(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};

    use super::forms::{json_ascii, percent_encode};
    use super::*;

    fn redaction(values: &[(&str, &str)]) -> Arc<Redaction> {
        Arc::new(Redaction::new(
            values.iter().map(|(n, v)| (*n, v.as_bytes())),
        ))
    }

    /// Feeds `input` split at the given points; checks the held-back bound
    /// after every push.
    fn stream(r: &Arc<Redaction>, input: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut red = Redactor::new(r.clone());
        let mut out = Vec::new();
        let mut at = 0;
        for &s in splits.iter().chain(std::iter::once(&input.len())) {
            out.extend(red.push(&input[at..s]));
            assert!(red.held() < r.max_len().max(1), "held {}", red.held());
            at = s;
        }
        out.extend(red.finish());
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    const TOKEN: &str = "s3cr3t-T0ken/+value";

    #[test]
    fn exact_values_are_replaced_with_their_name() {
        let r = redaction(&[("NPM_TOKEN", TOKEN)]);
        let out = r.redact_all(format!("token={TOKEN}; again {TOKEN}\n").as_bytes());
        assert_eq!(out, b"token=***NPM_TOKEN***; again ***NPM_TOKEN***\n");
    }

    #[test]
    fn a_value_split_at_every_byte_boundary_is_found() {
        let r = redaction(&[("T", TOKEN)]);
        let input = format!("before {TOKEN} after").into_bytes();
        let whole = r.redact_all(&input);
        assert_eq!(whole, b"before ***T*** after");
        for i in 0..=input.len() {
            for j in i..=input.len() {
                assert_eq!(stream(&r, &input, &[i, j]), whole, "split at {i},{j}");
            }
        }
        // One byte per write.
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(stream(&r, &input, &every), whole);
    }

    #[test]
    fn nothing_is_held_back_that_cannot_begin_a_value() {
        let r = redaction(&[("T", TOKEN)]);
        let mut red = Redactor::new(r.clone());
        assert_eq!(red.push(b"hello world\n"), b"hello world\n");
        assert_eq!(red.held(), 0);
        // A possible beginning is held, and released as soon as it differs.
        assert_eq!(red.push(b"prompt s3cr"), b"prompt ");
        assert_eq!(red.held(), 4);
        assert_eq!(red.push(b"atch"), b"s3cratch");
        assert_eq!(red.held(), 0);
        assert_eq!(red.push(b"s3c"), b"");
        assert_eq!(red.finish(), b"s3c");
    }

    #[test]
    fn multi_line_values_are_matched_whole_and_line_by_line() {
        let key = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ\n-----END KEY-----";
        let r = redaction(&[("KEY", key)]);
        let whole = r.redact_all(format!("x{key}y").as_bytes());
        assert_eq!(whole, b"x***KEY***y");
        // Printed line by line with other text in between, or through a
        // terminal (CRLF).
        let lines: Vec<&str> = key.lines().collect();
        let interleaved = format!("a {}\nb {}\n", lines[1], lines[2]);
        let out = r.redact_all(interleaved.as_bytes());
        assert_eq!(out, b"a ***KEY***\nb ***KEY***\n");
        let crlf = key.replace('\n', "\r\n");
        assert_eq!(r.redact_all(crlf.as_bytes()), b"***KEY***");
        for line in &lines {
            assert!(!contains(&r.redact_all(line.as_bytes()), line.as_bytes()));
        }
        let input = format!("<{crlf}>").into_bytes();
        let expected = r.redact_all(&input);
        for i in 0..=input.len() {
            assert_eq!(stream(&r, &input, &[i]), expected, "split at {i}");
        }
    }

    #[test]
    fn base64_forms_are_found_alone_and_inside_longer_encodings() {
        let r = redaction(&[("T", TOKEN)]);
        let b64 = STANDARD.encode(TOKEN);
        assert_eq!(r.redact_all(b64.as_bytes()), b"***T***");
        assert_eq!(
            r.redact_all(URL_SAFE_NO_PAD.encode(TOKEN).as_bytes()),
            b"***T***"
        );
        // As in `echo -n "user:$TOKEN" | base64` (and with a newline, and
        // at each alignment).
        for prefix in ["", "u", "us", "user:", "Authorization: Basic "] {
            for suffix in ["", "\n", "x", "xy"] {
                let text = format!("{prefix}{TOKEN}{suffix}");
                for engine in [&STANDARD, &URL_SAFE] {
                    let enc = engine.encode(&text);
                    let out = r.redact_all(enc.as_bytes());
                    assert!(out.windows(5).any(|w| w == b"***T*"), "{text:?} -> {enc}");
                    // What remains is the other text's characters and at
                    // most two value-touching ones on each side.
                    let left = String::from_utf8_lossy(&out).replace("***T***", "");
                    let fragment = 8 * TOKEN.len() / 6 - 2;
                    assert!(left.len() + fragment <= enc.len(), "{enc} left {left}");
                }
            }
        }
    }

    #[test]
    fn wrapped_base64_of_a_long_value_is_found_line_by_line() {
        let value =
            "a long secret value, longer than one line of base64 output: 0123456789 abcdefghij";
        let r = redaction(&[("LONG", value)]);
        let enc = STANDARD.encode(value);
        for width in [76, 64] {
            let wrapped: Vec<String> = enc
                .as_bytes()
                .chunks(width)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let text = wrapped.join("\n") + "\n";
            let out = r.redact_all(text.as_bytes());
            for line in &wrapped {
                assert!(!contains(&out, line.as_bytes()), "{line} in {out:?}");
            }
        }
    }

    #[test]
    fn url_and_json_encodings_are_found() {
        let value = "p@ss wörd\"\\/&=?\n2nd line!";
        let r = redaction(&[("V", value)]);
        let json = serde_json::to_string(value).expect("json");
        assert_eq!(r.redact_all(json.as_bytes()), b"\"***V***\"");
        let py = format!("\"{}\"", json_ascii(value));
        assert!(py.contains("\\u00f6"));
        assert_eq!(r.redact_all(py.as_bytes()), b"\"***V***\"");
        for form in [
            percent_encode(value.as_bytes(), false, false),
            percent_encode(value.as_bytes(), true, false),
            percent_encode(value.as_bytes(), false, true),
        ] {
            let text = format!("?q={}&x=1", String::from_utf8_lossy(&form));
            assert_eq!(r.redact_all(text.as_bytes()), b"?q=***V***&x=1");
        }
    }

    #[test]
    fn every_form_is_found_at_every_split_point() {
        let value = "line one, secret\nline two: t0k3n+/=";
        let r = redaction(&[("S", value)]);
        for form in forms(value.as_bytes()) {
            let mut input = b"<<".to_vec();
            input.extend_from_slice(&form);
            input.extend_from_slice(b">>");
            let expected = r.redact_all(&input);
            assert!(
                !contains(&expected, &form),
                "{}",
                String::from_utf8_lossy(&form)
            );
            for i in 0..=input.len() {
                assert_eq!(stream(&r, &input, &[i]), expected, "split at {i}");
            }
        }
    }

    #[test]
    fn the_longest_match_wins_even_when_it_arrives_later() {
        // One value is a prefix of another: the longer one must not leak
        // its tail because the shorter matched first.
        let r = redaction(&[("SHORT", "abcdef12"), ("LONG", "abcdef12345678")]);
        let input = b"xabcdef12345678y";
        for i in 0..=input.len() {
            assert_eq!(stream(&r, input, &[i]), b"x***LONG***y", "split at {i}");
        }
        assert_eq!(r.redact_all(b"abcdef12 "), b"***SHORT*** ");
    }

    #[test]
    fn several_values_and_overlaps() {
        let r = redaction(&[("A", "aaaaaaab"), ("B", "aaab-bbbbbb")]);
        let input = b"aaaaaaaaab-bbbbbb aaab-bbbbbb";
        let expected = r.redact_all(input);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                assert_eq!(stream(&r, input, &[i, j]), expected);
            }
        }
        assert!(!contains(&expected, b"aaab-bbbbbb"));
    }

    #[test]
    fn short_values_and_empty_sets_pass_everything_through() {
        let r = redaction(&[("X", "abc")]);
        assert!(r.is_empty());
        let mut red = Redactor::new(r);
        assert_eq!(red.push(b"abc abc"), b"abc abc");
        assert_eq!(red.finish(), b"");
    }

    #[test]
    fn debug_never_shows_values() {
        let r = redaction(&[("T", TOKEN)]);
        let red = Redactor::new(r.clone());
        assert!(!format!("{r:?} {red:?}").contains("T0ken"));
    }

    #[test]
    fn pseudo_random_streams_match_the_whole_at_random_splits() {
        // A small deterministic generator: no dependency, reproducible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let values = [("A", "Zq9!Zq9!x"), ("B", "9!x-Bee\nline-2-B")];
        let r = redaction(&values);
        let alphabet = b"Zq9!x-Be\nl2B ";
        for _ in 0..300 {
            let len = (next() % 80) as usize;
            let mut input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if next() % 2 == 0 {
                let at = (next() % (input.len() as u64 + 1)) as usize;
                let v = values[(next() % 2) as usize].1.as_bytes();
                input.splice(at..at, v.iter().copied());
            }
            let expected = r.redact_all(&input);
            let mut splits: Vec<usize> = (0..(next() % 6))
                .map(|_| (next() % (input.len() as u64 + 1)) as usize)
                .collect();
            splits.sort_unstable();
            assert_eq!(
                stream(&r, &input, &splits),
                expected,
                "{input:?} {splits:?}"
            );
            for (_, v) in values {
                assert!(!contains(&expected, v.as_bytes()));
            }
        }
    }
}
