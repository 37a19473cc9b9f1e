//! `rdev run`: enqueue, stream, and exit like the remote command did.

use serde_json::{Map, Value, json};

use crate::args::RunArgs;
use crate::client::{Client, ClientError};
use crate::events::Follower;
use crate::output::{Style, note, print_json};
use crate::spinner::Spinner;

/// Exit code for a command that timed out (as coreutils `timeout`).
pub const EXIT_TIMED_OUT: i32 = 124;
/// Exit code for a cancelled command, or after a second Ctrl-C (as shells: 128 + SIGINT).
pub const EXIT_CANCELLED: i32 = 130;
/// Exit code when the worker could not contain the command (as `docker run`
/// answers 125 when the container could not be run).
pub const EXIT_SANDBOX_UNAVAILABLE: i32 = 125;

/// The JSON body of `POST /v1/projects/{name}/commands`: one argument is a
/// shell command line, several are an argv.
pub fn request_body(args: &RunArgs) -> Value {
    let mut body = Map::new();
    match args.cmd.as_slice() {
        [one] => body.insert("command".into(), json!(one)),
        many => body.insert("argv".into(), json!(many)),
    };
    if let Some(p) = args.priority {
        body.insert("priority".into(), json!(p));
    }
    if let Some(t) = args.timeout {
        body.insert("timeout_s".into(), json!(t));
    }
    if !args.env.is_empty() {
        let env: Map<String, Value> = args
            .env
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        body.insert("env".into(), Value::Object(env));
    }
    if !args.secrets.is_empty() {
        body.insert("secrets".into(), json!(args.secrets));
    }
    if !args.secret_files.is_empty() {
        let files: Map<String, Value> = args
            .secret_files
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        body.insert("secret_files".into(), Value::Object(files));
    }
    if args.interactive {
        body.insert("stdin".into(), json!("pipe"));
    }
    if args.tty {
        let (cols, rows) = crate::attach::terminal_size().unwrap_or((80, 24));
        body.insert("tty".into(), json!({"cols": cols, "rows": rows}));
        if !args.interactive {
            // A terminal for its output only: its input is closed.
            body.insert("stdin".into(), json!("closed"));
        }
    }
    Value::Object(body)
}

/// Whether a command (as the API answers it) has ended.
pub fn has_ended(cmd: &Value) -> bool {
    matches!(
        cmd.get("status").and_then(Value::as_str),
        Some("succeeded" | "failed" | "timed_out" | "cancelled")
    )
}

/// The process exit code for a finished command.
pub fn exit_code(cmd: &Value) -> i32 {
    match cmd.get("status").and_then(Value::as_str) {
        Some("succeeded") => 0,
        Some("timed_out") => EXIT_TIMED_OUT,
        Some("cancelled") => EXIT_CANCELLED,
        _ if cmd.get("reason").and_then(Value::as_str) == Some("sandbox_unavailable") => {
            EXIT_SANDBOX_UNAVAILABLE
        }
        _ => cmd
            .get("exit_code")
            .and_then(Value::as_i64)
            .and_then(|c| i32::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(1),
    }
}

/// How a command that did not succeed ended, for stderr:
/// `failed (memory_limit, signal 9): stopped at its memory limit`.
pub fn end_note(cmd: &Value) -> Option<String> {
    let status = cmd.get("status").and_then(Value::as_str)?;
    if status == "succeeded" {
        return None;
    }
    let mut why = Vec::new();
    if let Some(reason) = cmd.get("reason").and_then(Value::as_str)
        && reason != status
    {
        why.push(reason.to_owned());
    }
    if let Some(code) = cmd.get("exit_code").and_then(Value::as_i64)
        && cmd.get("reason").and_then(Value::as_str) == Some("exited")
    {
        why.push(format!("exit code {code}"));
    }
    if let Some(signal) = cmd.get("signal").and_then(Value::as_i64) {
        why.push(format!("signal {signal}"));
    }
    let mut line = status.to_owned();
    if !why.is_empty() {
        line.push_str(&format!(" ({})", why.join(", ")));
    }
    if let Some(err) = cmd.get("error").and_then(Value::as_str) {
        line.push_str(&format!(": {err}"));
    }
    Some(line)
}

/// Attempts of the enqueue request when the answer is lost on the way.
const CREATE_ATTEMPTS: u32 = 4;

/// Whether a failed enqueue may be retried: the request may have been
/// lost, or the server asked us to come back. A refused connection is
/// not retried: the API is down and the user should hear that at once.
fn retry_create(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        _ => false,
    }
}

/// `POST /v1/projects/{name}/commands`. Every attempt carries the same
/// `Idempotency-Key` (the user's, or one made up here), so a retry after a
/// lost answer gets the original command back instead of running it twice.
async fn create(client: &Client, args: &RunArgs) -> Result<Value, ClientError> {
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("rdev-cli-{}", uuid::Uuid::now_v7()));
    let body = request_body(args);
    let path = format!("/v1/projects/{}/commands", crate::units::seg(&args.project));
    let mut delay = std::time::Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let req = client
            .request(reqwest::Method::POST, &path)
            .header("Idempotency-Key", &key)
            .json(&body);
        match client.send_json(req).await {
            Err(e) if attempt < CREATE_ATTEMPTS && retry_create(&e) => {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    note(&format!("{e}; retrying"));
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Runs `rdev run`; returns the exit code.
pub async fn run(client: &Client, style: &Style, args: &RunArgs) -> Result<i32, ClientError> {
    // From here on Ctrl-C is ours. Before the API has confirmed the command
    // there is nothing to cancel: stop waiting, and say where to look.
    let mut interrupts = Interrupts::new();
    let cmd = tokio::select! {
        cmd = create(client, args) => cmd?,
        () = interrupts.next() => {
            note(&format!(
                "interrupted before rdev confirmed the command; see `rdev ls -p {}`",
                args.project
            ));
            return Ok(EXIT_CANCELLED);
        }
    };
    let id = cmd
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if args.detach {
        if style.json {
            print_json(&cmd);
        } else {
            crate::output::out(&format!("{id}\n"));
        }
        return Ok(0);
    }
    if args.interactive || args.tty {
        let mode = match (args.interactive, args.tty) {
            (true, true) => crate::attach::Mode::Terminal,
            (true, false) => crate::attach::Mode::Pipe,
            (false, _) => crate::attach::Mode::Watch,
        };
        let end = crate::attach::attach(client, &id, mode).await?;
        return Ok(finish(style, &id, &end));
    }

    let spinner = Spinner::default();
    if cmd.get("status").and_then(Value::as_str) == Some("queued") {
        spinner.start(format!("queued {id}"));
    }
    let mut follower = Follower::new(client.clone(), id.clone()).with_spinner(spinner.clone());
    let follow = follower.run();
    tokio::pin!(follow);
    let mut cancelling = false;
    let end = loop {
        tokio::select! {
            end = &mut follow => break end?,
            () = interrupts.next() => {
                spinner.stop();
                if cancelling {
                    note(&format!(
                        "left {id} running; follow it with `rdev logs -f {id}`"
                    ));
                    return Ok(EXIT_CANCELLED);
                }
                cancelling = true;
                note(&format!("cancelling {id} (Ctrl-C again to leave it running)"));
                let client = client.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let path = format!("/v1/commands/{id}/cancel");
                    if let Err(e) = client.post(&path, &json!({})).await {
                        note(&format!("could not cancel {id}: {e}"));
                    }
                });
            }
        }
    };
    spinner.stop();
    Ok(finish(style, &id, &end))
}

/// Prints how a command ended (JSON with `--json`, a note when it did not
/// succeed) and returns the exit code.
fn finish(style: &Style, id: &str, end: &Value) -> i32 {
    if style.json {
        print_json(end);
    }
    if let Some(line) = end_note(end) {
        note(&format!("command {id} {line}"));
    }
    exit_code(end)
}

/// `rdev attach ID`: output here; this terminal's input there when the
/// command takes input (raw when both sides are terminals).
pub async fn attach(
    client: &Client,
    style: &Style,
    args: &crate::args::IdArg,
) -> Result<i32, ClientError> {
    let cmd = client
        .get(
            &format!("/v1/commands/{}", crate::units::seg(&args.id)),
            &[],
        )
        .await?;
    let mode = match (
        cmd.get("stdin").and_then(Value::as_str),
        cmd.get("tty").is_some_and(|t| !t.is_null()),
    ) {
        // Only a person at a terminal types into a running command: a
        // script's empty stdin would close the command's input.
        (Some("pipe"), true) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            crate::attach::Mode::Terminal
        }
        (Some("pipe"), false) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            crate::attach::Mode::Pipe
        }
        _ => crate::attach::Mode::Watch,
    };
    let end = crate::attach::attach(client, &args.id, mode).await?;
    Ok(finish(style, &args.id, &end))
}

/// SIGINT notifications.
struct Interrupts {
    #[cfg(unix)]
    sig: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    fn new() -> Self {
        #[cfg(unix)]
        {
            Self {
                sig: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the next Ctrl-C (never, when signals are unavailable).
    async fn next(&mut self) {
        #[cfg(unix)]
        match &mut self.sig {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> RunArgs {
        let cli = crate::args::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            crate::args::Command::Run(r) => r,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn one_argument_is_a_shell_command_several_are_argv() {
        let shell = request_body(&parse(&["rdev", "run", "-p", "x", "--", "make test"]));
        assert_eq!(shell, json!({"command": "make test"}));
        let argv = request_body(&parse(&[
            "rdev",
            "run",
            "-p",
            "x",
            "--priority",
            "9",
            "--timeout",
            "5",
            "-e",
            "A=b",
            "--",
            "make",
            "test",
        ]));
        assert_eq!(
            argv,
            json!({"argv": ["make", "test"], "priority": 9, "timeout_s": 5, "env": {"A": "b"}})
        );
    }

    #[test]
    fn exit_codes_follow_shell_conventions() {
        assert_eq!(
            exit_code(&json!({"status": "succeeded", "exit_code": 0})),
            0
        );
        assert_eq!(exit_code(&json!({"status": "failed", "exit_code": 3})), 3);
        assert_eq!(
            exit_code(&json!({"status": "failed", "exit_code": null})),
            1
        );
        assert_eq!(
            exit_code(&json!({"status": "timed_out", "exit_code": 143})),
            124
        );
        assert_eq!(exit_code(&json!({"status": "cancelled"})), 130);
        assert_eq!(
            exit_code(&json!({"status": "failed", "reason": "sandbox_unavailable"})),
            125
        );
        assert_eq!(
            exit_code(&json!({"status": "failed", "reason": "memory_limit", "exit_code": 137})),
            137
        );
    }

    #[test]
    fn the_end_note_names_the_reason() {
        assert_eq!(
            end_note(&json!({"status": "succeeded", "reason": "exited"})),
            None
        );
        assert_eq!(
            end_note(&json!({"status": "failed", "reason": "exited", "exit_code": 3})).as_deref(),
            Some("failed (exited, exit code 3)")
        );
        assert_eq!(
            end_note(
                &json!({"status": "failed", "reason": "memory_limit", "exit_code": 137,
                "signal": 9, "error": "stopped at its memory limit"})
            )
            .as_deref(),
            Some("failed (memory_limit, signal 9): stopped at its memory limit")
        );
        assert_eq!(
            end_note(&json!({"status": "timed_out", "reason": "timed_out", "error": "timed out after 1s"}))
                .as_deref(),
            Some("timed_out: timed out after 1s")
        );
    }
}
