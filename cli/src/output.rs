//! How results are shown: aligned tables and key/value blocks for people,
//! JSON for scripts, colours only on a terminal and never with `NO_COLOR`.

use std::io::{IsTerminal, Write};

use serde_json::Value;

/// Presentation settings.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Print JSON instead of tables.
    pub json: bool,
    /// Use ANSI colours.
    pub color: bool,
}

impl Style {
    /// Colours when stdout is a terminal and `NO_COLOR` is unset or empty
    /// (<https://no-color.org>).
    pub fn detect(json: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            json,
            color: !json && !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color && !code.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// ANSI colour of a command status.
fn status_color(status: &str) -> &'static str {
    match status {
        "succeeded" => "32",
        "failed" | "timed_out" | "dead" => "31",
        "cancelled" | "pending" => "33",
        "running" => "36",
        "queued" => "2",
        _ => "",
    }
}

/// A field of a JSON object as table text: strings bare, `null`/absent as
/// `-`, lists comma-joined, objects as compact JSON.
pub fn field(v: &Value, key: &str) -> String {
    text(v.get(key).unwrap_or(&Value::Null))
}

/// A JSON value as table text.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".to_owned(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Shortens `s` to `max` characters with an ellipsis.
pub fn ellipsize(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// An aligned table; a `STATUS` column is coloured.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (one cell per header).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders to a string.
    pub fn render(&self, style: &Style) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(String, &str)>, out: &mut String| {
            let last = cells.len().saturating_sub(1);
            for (i, (cell, code)) in cells.into_iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(&style.paint(code, &cell));
                if i < last {
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push('\n');
        };
        line(
            self.headers.iter().map(|h| (h.to_string(), "1")).collect(),
            &mut out,
        );
        for r in &self.rows {
            let cells = r
                .iter()
                .enumerate()
                .take(n)
                .map(|(i, c)| {
                    let code = if self.headers[i] == "STATUS" {
                        status_color(c)
                    } else {
                        ""
                    };
                    (c.clone(), code)
                })
                .collect();
            line(cells, &mut out);
        }
        out
    }
}

/// Writes to stdout, ignoring a closed pipe (`rdev ls | head` must not
/// panic the way `println!` would).
pub fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    out(&format!("{text}\n"));
}

/// Prints an object as `key: value` lines (or JSON).
pub fn print_object(style: &Style, v: &Value, keys: &[&str]) {
    if style.json {
        return print_json(v);
    }
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for k in keys {
        let Some(val) = v.get(*k) else { continue };
        let t = text(val);
        let code = if *k == "status" { status_color(&t) } else { "" };
        out.push_str(&format!(
            "{:width$}  {}\n",
            format!("{k}:"),
            style.paint(code, &t),
            width = width + 1
        ));
    }
    self::out(&out);
}

/// Prints a list answer: the table for people (with a hint to the next
/// page on stderr), the whole `{items, next_cursor}` answer as JSON.
pub fn print_list(style: &Style, answer: &Value, table: impl FnOnce(&[Value]) -> Table) {
    if style.json {
        return print_json(answer);
    }
    let empty = Vec::new();
    let items = answer
        .get("items")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    out(&table(items).render(style));
    if let Some(c) = answer.get("next_cursor").and_then(Value::as_str) {
        let _ = writeln!(std::io::stderr(), "(more: --cursor {c})");
    }
}

/// The answer to an action: the API's JSON answer with `--json`, else a
/// note for people on stderr (`message`, e.g. "deleted webhook …").
pub fn print_done(style: &Style, answer: &Value, message: &str) {
    if style.json {
        print_json(answer);
    } else {
        note(message);
    }
}

/// A note for people on stderr, e.g. "cancel requested".
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "rdev: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_without_colour() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["a".into(), "succeeded".into()]);
        t.row(vec!["longer".into(), "failed".into()]);
        let s = t.render(&Style {
            json: false,
            color: false,
        });
        assert_eq!(s, "ID      STATUS\na       succeeded\nlonger  failed\n");
    }

    #[test]
    fn fields_render_for_people() {
        let v = json!({"a": null, "b": ["x", "y"], "c": 3, "d": "s"});
        assert_eq!(field(&v, "a"), "-");
        assert_eq!(field(&v, "b"), "x,y");
        assert_eq!(field(&v, "c"), "3");
        assert_eq!(field(&v, "d"), "s");
        assert_eq!(field(&v, "missing"), "-");
        assert_eq!(ellipsize("abcdef", 4), "abc…");
    }
}
