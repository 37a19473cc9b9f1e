//! `rdev logs`, `status`, `wait`, `cancel`, `ls`: looking at commands.

use std::io::Write;
use std::time::Instant;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use super::page_query;
use super::run::{exit_code, has_ended};
use crate::args::{IdArg, LogsArgs, LsArgs, StreamArg, WaitArgs};
use crate::client::{Client, ClientError};
use crate::events::Follower;
use crate::output::{
    Style, Table, ellipsize, field, note, print_done, print_json, print_list, print_object,
};
use crate::units::seg;

/// `rdev wait`'s exit code when its `--timeout` passes before the command
/// ends (sysexits' `EX_TEMPFAIL`: try again later).
pub const EXIT_STILL_RUNNING: i32 = 75;
/// The longest `wait` one request asks for (the API's most).
const WAIT_PER_REQUEST_S: u64 = 50;

/// Fields of a command shown by `rdev status`.
const COMMAND_FIELDS: &[&str] = &[
    "id",
    "project",
    "command",
    "argv",
    "status",
    "exit_code",
    "reason",
    "signal",
    "error",
    "priority",
    "timeout_s",
    "output_bytes",
    "truncated",
    "worker_id",
    "created_at",
    "started_at",
    "finished_at",
];

/// What a command runs, as one line: the shell command as given, an argv
/// quoted the way a POSIX shell would need it.
pub fn command_line(cmd: &Value) -> String {
    match (cmd.get("command"), cmd.get("argv")) {
        (Some(Value::String(c)), _) => c.clone(),
        (_, Some(Value::Array(a))) => a
            .iter()
            .map(|s| shell_quote(s.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `rdev logs ID [-f] [--stream S]`: stored bytes as they are, or the live stream.
pub async fn logs(client: &Client, args: &LogsArgs) -> Result<i32, ClientError> {
    let id = seg(&args.id);
    if args.follow {
        Follower::new(client.clone(), id).run().await?;
        return Ok(0);
    }
    let mut req = client.request(Method::GET, &format!("/v1/commands/{id}/output"));
    if let Some(s) = args.stream {
        let s = match s {
            StreamArg::Stdout => "stdout",
            StreamArg::Stderr => "stderr",
        };
        req = req.query(&[("stream", s)]);
    }
    let resp = client.send(req).await?;
    let mut body = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| client.transport(e))?;
        if out.write_all(&chunk).is_err() {
            break; // stdout closed (e.g. `| head`)
        }
    }
    let _ = out.flush();
    Ok(0)
}

/// `rdev status ID`.
pub async fn status(client: &Client, style: &Style, args: &IdArg) -> Result<i32, ClientError> {
    let cmd = client
        .get(&format!("/v1/commands/{}", seg(&args.id)), &[])
        .await?;
    show_command(style, &cmd);
    Ok(0)
}

/// `rdev wait ID [--timeout T]`: `GET /v1/commands/{id}?wait=` again and
/// again (each answered when the command ends, or after at most
/// [`WAIT_PER_REQUEST_S`]) until it has ended; shows it and exits with its
/// exit code, or [`EXIT_STILL_RUNNING`] when the timeout passes first.
pub async fn wait(client: &Client, style: &Style, args: &WaitArgs) -> Result<i32, ClientError> {
    let path = format!("/v1/commands/{}", seg(&args.id));
    let deadline = args.timeout.map(|t| Instant::now() + t);
    loop {
        // Whole seconds, rounded up: the wait lasts at least `--timeout`.
        let left = deadline.map_or(WAIT_PER_REQUEST_S, |d| {
            let ms = d.saturating_duration_since(Instant::now()).as_millis();
            u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX)
        });
        let wait_s = left.min(WAIT_PER_REQUEST_S);
        let cmd = client.get(&path, &[("wait", wait_s.to_string())]).await?;
        if has_ended(&cmd) {
            show_command(style, &cmd);
            return Ok(exit_code(&cmd));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || wait_s == 0 {
            if style.json {
                print_json(&cmd);
            }
            let status = cmd.get("status").and_then(Value::as_str).unwrap_or("?");
            note(&format!("{} is still {status}", args.id));
            return Ok(EXIT_STILL_RUNNING);
        }
    }
}

/// A command as `rdev status` shows it.
fn show_command(style: &Style, cmd: &Value) {
    if style.json {
        print_json(cmd);
    } else {
        // An argv reads better as the command line it stands for.
        let mut shown = cmd.clone();
        if let (Some(obj), Some(Value::Array(_))) = (shown.as_object_mut(), cmd.get("argv")) {
            obj.insert("argv".into(), Value::String(command_line(cmd)));
        }
        print_object(style, &shown, COMMAND_FIELDS);
    }
}

/// `rdev cancel ID`.
pub async fn cancel(client: &Client, style: &Style, args: &IdArg) -> Result<i32, ClientError> {
    let answer = client
        .post(
            &format!("/v1/commands/{}/cancel", seg(&args.id)),
            &json!({}),
        )
        .await?;
    print_done(style, &answer, &format!("cancel requested for {}", args.id));
    Ok(0)
}

/// `rdev ls`.
pub async fn ls(client: &Client, style: &Style, args: &LsArgs) -> Result<i32, ClientError> {
    let mut q = page_query(&args.page);
    if let Some(p) = &args.project {
        q.push(("project", p.clone()));
    }
    if let Some(s) = &args.status {
        q.push(("status", s.clone()));
    }
    let answer = client.get("/v1/commands", &q).await?;
    print_list(style, &answer, |items| {
        let mut t = Table::new(&[
            "ID", "PROJECT", "STATUS", "REASON", "EXIT", "CREATED", "COMMAND",
        ]);
        for c in items {
            t.row(vec![
                field(c, "id"),
                field(c, "project"),
                field(c, "status"),
                field(c, "reason"),
                field(c, "exit_code"),
                field(c, "created_at"),
                ellipsize(&command_line(c), 50),
            ]);
        }
        t
    });
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_shown_quoted_like_a_shell_would_need() {
        let c = json!({"argv": ["sh", "-c", "echo 'hi' there", ""]});
        assert_eq!(command_line(&c), r"sh -c 'echo '\''hi'\'' there' ''");
        assert_eq!(command_line(&json!({"command": "make test"})), "make test");
    }
}
