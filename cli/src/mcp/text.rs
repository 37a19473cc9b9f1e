//! How answers are worded for a model: a command's state in one line, the
//! tails of its streams, and a page of its output.

use serde_json::Value;

use crate::events::Piece;

/// The last `keep` bytes of a stream, and how many were dropped before them.
struct Tail {
    keep: usize,
    text: String,
    dropped: usize,
}

impl Tail {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            text: String::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, data: &str) {
        self.text.push_str(data);
        if self.text.len() > self.keep {
            let mut cut = self.text.len() - self.keep;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.dropped += cut;
            self.text.drain(..cut);
        }
    }

    fn render(&self, name: &str, id: &str) -> String {
        if self.text.is_empty() && self.dropped == 0 {
            return format!("--- {name}: (empty)\n");
        }
        let mut s = if self.dropped > 0 {
            format!(
                "--- {name}: last {} bytes; the first {} bytes are not shown \
                 (read_output id={id} from_seq=0 pages through all of it)\n",
                self.text.len(),
                self.dropped
            )
        } else {
            format!("--- {name}:\n")
        };
        s.push_str(&self.text);
        if !self.text.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// What `run_command` keeps of a command's output: the tail of each
/// stream and the gaps the project's `max_output_bytes` made.
pub(super) struct Collected {
    stdout: Tail,
    stderr: Tail,
    gaps: Vec<(i64, i64)>,
}

impl Collected {
    /// Keeps the last `keep` bytes of each stream.
    pub(super) fn tails(keep: usize) -> Self {
        Self {
            stdout: Tail::new(keep),
            stderr: Tail::new(keep),
            gaps: Vec::new(),
        }
    }

    /// Takes one piece of the stream.
    pub(super) fn take(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Output {
                stream: "stderr",
                data,
                ..
            } => self.stderr.push(data),
            Piece::Output { data, .. } => self.stdout.push(data),
            Piece::Gap { from_seq, to_seq } => self.gaps.push((from_seq, to_seq)),
        }
    }

    /// Both tails, each under its name.
    pub(super) fn render_tails(&self, id: &str) -> String {
        let mut s = self.stdout.render("stdout", id);
        s.push_str(&self.stderr.render("stderr", id));
        s
    }

    /// The tails, then a line per gap.
    pub(super) fn render(&self, id: &str) -> String {
        let mut s = self.render_tails(id);
        for (a, b) in &self.gaps {
            s.push_str(&format!(
                "(the project's max_output_bytes cut chunks {a}-{b} from the stored output)\n"
            ));
        }
        s
    }
}

/// One answer of `read_output`: the chunks after `from_seq`, at most `max`
/// bytes (a first chunk larger than that is cut), and notes on what was
/// skipped.
pub(super) struct OutputPage {
    from_seq: i64,
    max: usize,
    text: String,
    next_seq: i64,
    full: bool,
    notes: Vec<String>,
}

impl OutputPage {
    pub(super) fn new(from_seq: i64, max: usize) -> Self {
        Self {
            from_seq,
            max,
            text: String::new(),
            next_seq: from_seq,
            full: false,
            notes: Vec::new(),
        }
    }

    /// Takes one piece of the stream; true when the page just became full
    /// (later pieces are ignored).
    pub(super) fn take(&mut self, piece: Piece<'_>) -> bool {
        if self.full {
            return false;
        }
        match piece {
            Piece::Output { seq, data, .. } => {
                if self.text.len() + data.len() <= self.max {
                    self.text.push_str(data);
                    self.next_seq = seq;
                    return false;
                }
                if self.text.is_empty() {
                    // One chunk larger than the page: its start, and move on.
                    let mut cut = self.max;
                    while !data.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    self.text.push_str(&data[..cut]);
                    self.notes.push(format!(
                        "chunk {seq} was cut at max_bytes ({cut} of {} bytes shown)",
                        data.len()
                    ));
                    self.next_seq = seq;
                }
                self.full = true;
                true
            }
            Piece::Gap { from_seq, to_seq } => {
                self.notes.push(format!(
                    "chunks {from_seq}-{to_seq} were not kept (the project's max_output_bytes)"
                ));
                self.next_seq = to_seq;
                false
            }
        }
    }

    /// The answer: `state` (the command's line), `next_seq`, the notes and
    /// the text. `ended`: the stream reached the command's end.
    pub(super) fn render(&self, state: &str, ended: bool) -> String {
        let more = if self.full {
            "more output follows"
        } else if ended {
            "this is the end of the output"
        } else {
            "no more output yet"
        };
        let mut s = format!(
            "{state}\nnext_seq: {} ({more})\n",
            self.next_seq.max(self.from_seq)
        );
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        if self.text.is_empty() {
            s.push_str("--- output: (none)\n");
        } else {
            s.push_str("--- output:\n");
            s.push_str(&self.text);
            if !self.text.ends_with('\n') {
                s.push('\n');
            }
        }
        s
    }
}

/// One line describing a command's state for a model.
pub(super) fn describe(cmd: &Value) -> String {
    let field = |k: &str| cmd.get(k).filter(|v| !v.is_null());
    let id = field("id").and_then(Value::as_str).unwrap_or("?");
    let project = field("project").and_then(Value::as_str).unwrap_or("?");
    let status = field("status").and_then(Value::as_str).unwrap_or("?");
    let mut s = format!("command {id} in project {project}: {status}");
    let mut facts = Vec::new();
    if let Some(code) = field("exit_code").and_then(Value::as_i64) {
        facts.push(format!("exit code {code}"));
    }
    if let Some(reason) = field("reason").and_then(Value::as_str) {
        facts.push(format!("reason {reason}"));
    }
    if let Some(signal) = field("signal").and_then(Value::as_i64) {
        facts.push(format!("signal {signal}"));
    }
    if let Some(error) = field("error").and_then(Value::as_str) {
        facts.push(format!("error: {error}"));
    }
    if field("truncated").and_then(Value::as_bool) == Some(true) {
        facts.push("stored output truncated".into());
    }
    if !facts.is_empty() {
        s.push_str(&format!(" ({})", facts.join(", ")));
    }
    s
}

/// Whether the command has ended.
pub(super) fn terminal(cmd: &Value) -> bool {
    !matches!(
        cmd.get("status").and_then(Value::as_str),
        Some("queued" | "running") | None
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_tail_keeps_the_end_and_counts_what_it_dropped() {
        let mut t = Tail::new(4);
        t.push("abc");
        // "abcdéfgh" is 9 bytes; keeping 4 would cut é (two bytes) in half,
        // so the cut moves on to the next character.
        t.push("défgh");
        assert_eq!(t.text, "fgh");
        assert_eq!(t.dropped, 6);
        let shown = t.render("stdout", "c1");
        assert!(shown.contains("the first 6 bytes are not shown"), "{shown}");
        assert!(shown.contains("read_output id=c1 from_seq=0"), "{shown}");
    }

    #[test]
    fn a_command_is_described_with_what_a_model_needs() {
        let c = json!({"id": "c1", "project": "web", "status": "failed", "exit_code": 3,
                       "reason": "exited", "signal": null, "error": null, "truncated": false});
        assert_eq!(
            describe(&c),
            "command c1 in project web: failed (exit code 3, reason exited)"
        );
    }

    #[test]
    fn a_page_stops_at_max_bytes_and_cuts_only_a_first_oversized_chunk() {
        let out = |seq, data| Piece::Output {
            seq,
            stream: "stdout",
            data,
        };
        let mut pg = OutputPage::new(3, 5);
        assert!(!pg.take(out(4, "abc")));
        assert!(pg.take(out(5, "def")), "6 bytes do not fit in 5");
        assert!(!pg.take(out(6, "g")), "a full page takes nothing more");
        let shown = pg.render("command c1: running", false);
        assert!(
            shown.contains("next_seq: 4 (more output follows)"),
            "{shown}"
        );
        assert!(shown.ends_with("--- output:\nabc\n"), "{shown}");

        let mut big = OutputPage::new(0, 4);
        assert!(big.take(out(1, "abcdéf")));
        let shown = big.render("command c1: succeeded", true);
        assert!(
            shown.contains("chunk 1 was cut at max_bytes (4 of 7 bytes shown)"),
            "{shown}"
        );
        assert!(shown.contains("next_seq: 1"), "{shown}");
    }
}
