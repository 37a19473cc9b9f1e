//! `rdev mcp`: a Model Context Protocol server on stdin/stdout, so coding
//! agents can run commands in rdev. It is a client of the API like the
//! rest of the CLI (same configuration: URL, key, and a default project).
//!
//! stdout carries the protocol: nothing else in this module may print on it
//! (the follower is given a sink that collects chunks instead of writing
//! them). Every tool bounds what it returns (an output tail, a page of
//! chunks) and how long it waits, and says so in its answer when it cut
//! something, so a model can ask for the rest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock as Content, Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::args::McpArgs;
use crate::client::{Client, ClientError};
use crate::commands::seg;
use crate::events::{Follower, Piece};
use crate::output::note;

/// `run_command` waits this long unless told otherwise, and at most `MAX_WAIT_S`.
const DEFAULT_WAIT_S: u64 = 50;
const MAX_WAIT_S: u64 = 600;
/// Bytes of each stream's tail `run_command` returns by default / at most.
const DEFAULT_TAIL_BYTES: usize = 4_000;
const MAX_TAIL_BYTES: usize = 32_000;
/// `read_output`: bytes per call by default / at most, and its wait.
const DEFAULT_READ_BYTES: usize = 16_000;
const MAX_READ_BYTES: usize = 64_000;
const DEFAULT_READ_WAIT_S: u64 = 2;
const MAX_READ_WAIT_S: u64 = 60;

const INSTRUCTIONS: &str = "\
rdev runs shell commands in remote development environments called projects \
(a checkout on a build machine, or a Kubernetes pod). Use run_command for \
anything that finishes within a few minutes (tests, builds, git, ls): it \
waits and returns the exit code and the end of stdout and stderr. For long \
jobs use start_command, then read_output with the next_seq it returns to \
page through the output, and cancel_command to stop it. list_projects shows \
where commands can run; list_commands shows recent commands and their ids. \
Commands run in a fresh process each time: cd or export in one command does \
not carry over to the next (chain them with && in one command line).";

/// The MCP server: tools over one API client.
#[derive(Clone)]
pub struct RdevMcp {
    client: Client,
    project: Option<String>,
    tool_router: ToolRouter<Self>,
}

/// Serves MCP on stdin/stdout until the client closes it; returns the exit code.
/// The default project: `--project`/`RDEV_PROJECT`, else the profile's.
pub async fn serve(client: Client, profile_project: Option<String>, args: &McpArgs) -> i32 {
    let project = args.project.clone().or(profile_project);
    let server = RdevMcp::new(client, project);
    let running = match server.serve(rmcp::transport::stdio()).await {
        Ok(r) => r,
        Err(e) => {
            note(&format!("mcp: the client did not initialize: {e}"));
            return crate::EXIT_API;
        }
    };
    match running.waiting().await {
        Ok(_) => 0,
        Err(e) => {
            note(&format!("mcp: {e}"));
            crate::EXIT_API
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct RunParams {
    /// Project to run in (see list_projects). Optional when the server was
    /// started with a default project.
    #[serde(default)]
    project: Option<String>,
    /// The command line, run by /bin/sh -c in the project's working
    /// directory, e.g. "cargo test 2>&1 | tail -50" or "cd api && make lint".
    command: String,
    /// Kill the command after this many seconds (default: the project's timeout).
    #[serde(default)]
    timeout_s: Option<u32>,
    /// Extra environment variables for this command.
    #[serde(default)]
    env: Option<std::collections::BTreeMap<String, String>>,
    /// run_command only: seconds to wait for the end (default 50, at most
    /// 600). If the command is still running then, you get its id to
    /// follow with read_output; it keeps running.
    #[serde(default)]
    wait_s: Option<u64>,
    /// run_command only: bytes of the end of stdout and of stderr to return
    /// (default 4000, at most 32000).
    #[serde(default)]
    tail_bytes: Option<usize>,
    /// start_command only: keep the command's standard input open, to
    /// answer prompts or drive a REPL with send_input (default false: its
    /// input is closed, so nothing ever waits for it).
    #[serde(default)]
    interactive: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct InputParams {
    /// Id of a command started with interactive=true.
    id: String,
    /// Text to write to its standard input. End a line with "\n", as if
    /// Enter was pressed.
    #[serde(default)]
    text: Option<String>,
    /// Close its standard input after the text (the end of input: `cat`,
    /// `wc` and read loops finish).
    #[serde(default)]
    eof: bool,
    /// Instead of text: send a signal, one of INT (like Ctrl-C), TERM, HUP,
    /// QUIT, KILL, USR1, USR2.
    #[serde(default)]
    signal: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ReadParams {
    /// Command id (from start_command, run_command or list_commands).
    id: String,
    /// Return output after this chunk number: 0 for the start, then the
    /// next_seq of the previous answer.
    #[serde(default)]
    from_seq: i64,
    /// Most bytes to return (default 16000, at most 64000).
    #[serde(default)]
    max_bytes: Option<usize>,
    /// Seconds to wait for output of a running command (default 2, at most 60).
    #[serde(default)]
    wait_s: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct IdParams {
    /// Command id.
    id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ListProjectsParams {
    /// Most projects to list (1-200, default 50).
    #[serde(default)]
    limit: Option<u32>,
    /// next_cursor of the previous answer, for the next page.
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ListCommandsParams {
    /// Only this project's commands.
    #[serde(default)]
    project: Option<String>,
    /// Only commands in this status: queued, running, succeeded, failed,
    /// timed_out or cancelled.
    #[serde(default)]
    status: Option<String>,
    /// Most commands to list, newest first (1-200, default 20).
    #[serde(default)]
    limit: Option<u32>,
    /// next_cursor of the previous answer, for the next page.
    #[serde(default)]
    cursor: Option<String>,
}

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

#[derive(Default)]
struct Collected {
    stdout: Option<Tail>,
    stderr: Option<Tail>,
    gaps: Vec<(i64, i64)>,
}

/// One line describing a command's state for a model.
fn describe(cmd: &Value) -> String {
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

fn terminal(cmd: &Value) -> bool {
    !matches!(
        cmd.get("status").and_then(Value::as_str),
        Some("queued" | "running") | None
    )
}

/// A tool's failure as the model sees it: an error result, with the API's words.
fn failed(e: &ClientError) -> CallToolResult {
    CallToolResult::error(vec![Content::text(e.to_string())])
}

fn ok(text: String) -> CallToolResult {
    CallToolResult::success(vec![Content::text(text)])
}

#[tool_router]
impl RdevMcp {
    /// A server using `client`, with `project` as the default project.
    pub fn new(client: Client, project: Option<String>) -> Self {
        Self {
            client,
            project,
            tool_router: Self::tool_router(),
        }
    }

    fn project(&self, given: Option<String>) -> Result<String, CallToolResult> {
        given
            .filter(|p| !p.is_empty())
            .or_else(|| self.project.clone())
            .ok_or_else(|| {
                CallToolResult::error(vec![Content::text(
                    "no project given and no default configured: pass `project` \
                     (list_projects shows them)",
                )])
            })
    }

    async fn enqueue(&self, p: &RunParams) -> Result<Value, CallToolResult> {
        let project = self.project(p.project.clone())?;
        let mut body = Map::new();
        body.insert("command".into(), json!(p.command));
        if let Some(t) = p.timeout_s {
            body.insert("timeout_s".into(), json!(t));
        }
        if let Some(env) = &p.env {
            body.insert("env".into(), json!(env));
        }
        if p.interactive {
            body.insert("stdin".into(), json!("pipe"));
        }
        let path = format!("/v1/projects/{}/commands", seg(&project));
        let req = self
            .client
            .request(reqwest::Method::POST, &path)
            .header(
                "Idempotency-Key",
                format!("rdev-mcp-{}", uuid::Uuid::now_v7()),
            )
            .json(&Value::Object(body));
        self.client.send_json(req).await.map_err(|e| failed(&e))
    }

    #[tool(
        description = "Run a shell command in an rdev project and wait for it to finish \
        (up to wait_s, default 50 s). Returns the exit code, the status (succeeded, failed, \
        timed_out, cancelled), the end reason, and the last bytes of stdout and stderr; \
        a note says when earlier output was cut from the answer. A non-zero exit is \
        reported, not an error. If the command outlives wait_s it keeps running: you get \
        its id, and read_output / cancel_command take it from there."
    )]
    async fn run_command(&self, Parameters(p): Parameters<RunParams>) -> CallToolResult {
        let created = match self.enqueue(&p).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let id = created
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let keep = p
            .tail_bytes
            .unwrap_or(DEFAULT_TAIL_BYTES)
            .clamp(1, MAX_TAIL_BYTES);
        let wait = Duration::from_secs(p.wait_s.unwrap_or(DEFAULT_WAIT_S).min(MAX_WAIT_S));
        let collected = Arc::new(Mutex::new(Collected {
            stdout: Some(Tail::new(keep)),
            stderr: Some(Tail::new(keep)),
            gaps: Vec::new(),
        }));
        let sink = collected.clone();
        let mut follower =
            Follower::new(self.client.clone(), id.clone()).with_sink(Box::new(move |piece| {
                let Ok(mut c) = sink.lock() else { return };
                match piece {
                    Piece::Output { stream, data, .. } => {
                        let tail = if stream == "stderr" {
                            &mut c.stderr
                        } else {
                            &mut c.stdout
                        };
                        if let Some(t) = tail {
                            t.push(data);
                        }
                    }
                    Piece::Gap { from_seq, to_seq } => c.gaps.push((from_seq, to_seq)),
                }
            }));
        let end = tokio::time::timeout(wait, follower.run()).await;
        let Ok(c) = collected.lock() else {
            return ok(format!("command {id} started"));
        };
        let outputs = |s: &mut String| {
            for (name, tail) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
                if let Some(t) = tail {
                    s.push_str(&t.render(name, &id));
                }
            }
        };
        match end {
            Ok(Ok(cmd)) => {
                let mut s = describe(&cmd);
                s.push('\n');
                outputs(&mut s);
                for (a, b) in &c.gaps {
                    s.push_str(&format!(
                        "(the project's max_output_bytes cut chunks {a}-{b} from the stored output)\n"
                    ));
                }
                ok(s)
            }
            Ok(Err(e)) => failed(&e),
            Err(_) => {
                let mut s = format!(
                    "command {id} is still running after {}s; it goes on. Output so far:\n",
                    wait.as_secs()
                );
                outputs(&mut s);
                s.push_str(&format!(
                    "Follow it with read_output id={id} from_seq={}, or stop it with cancel_command.\n",
                    follower.last_seq()
                ));
                ok(s)
            }
        }
    }

    #[tool(
        description = "Start a shell command in an rdev project and return at once with its id, \
        for long-running jobs (servers, long test suites). Then call read_output with the id \
        (from_seq 0, then each answer's next_seq) to see its output, and cancel_command to stop \
        it. Takes the same arguments as run_command (wait_s and tail_bytes are ignored)."
    )]
    async fn start_command(&self, Parameters(p): Parameters<RunParams>) -> CallToolResult {
        match self.enqueue(&p).await {
            Ok(cmd) => {
                let id = cmd.get("id").and_then(Value::as_str).unwrap_or_default();
                ok(format!(
                    "{}\nRead its output with read_output id={id} from_seq=0.",
                    describe(&cmd)
                ))
            }
            Err(e) => e,
        }
    }

    #[tool(
        description = "Read a command's output after chunk number from_seq (0 = from the start), \
        at most max_bytes (default 16000), stdout and stderr interleaved as they were written. \
        Returns the command's status and next_seq: pass next_seq as from_seq to continue. For a \
        running command it waits up to wait_s (default 2 s) for new output; a finished command \
        answers at once."
    )]
    async fn read_output(&self, Parameters(p): Parameters<ReadParams>) -> CallToolResult {
        let max = p
            .max_bytes
            .unwrap_or(DEFAULT_READ_BYTES)
            .clamp(1, MAX_READ_BYTES);
        let wait =
            Duration::from_secs(p.wait_s.unwrap_or(DEFAULT_READ_WAIT_S).min(MAX_READ_WAIT_S));
        #[derive(Default)]
        struct Page {
            text: String,
            next_seq: i64,
            full: bool,
            notes: Vec<String>,
        }
        let page = Arc::new(Mutex::new(Page {
            next_seq: p.from_seq,
            ..Default::default()
        }));
        let full = Arc::new(tokio::sync::Notify::new());
        let (sink, notify) = (page.clone(), full.clone());
        let mut follower = Follower::new(self.client.clone(), p.id.clone())
            .after(p.from_seq)
            .with_sink(Box::new(move |piece| {
                let Ok(mut pg) = sink.lock() else { return };
                if pg.full {
                    return;
                }
                match piece {
                    Piece::Output { seq, data, .. } => {
                        if pg.text.len() + data.len() > max {
                            if pg.text.is_empty() {
                                // One chunk larger than the page: its start, and move on.
                                let mut cut = max;
                                while !data.is_char_boundary(cut) {
                                    cut -= 1;
                                }
                                pg.text.push_str(&data[..cut]);
                                pg.notes.push(format!(
                                    "chunk {seq} was cut at max_bytes ({} of {} bytes shown)",
                                    cut,
                                    data.len()
                                ));
                                pg.next_seq = seq;
                            }
                            pg.full = true;
                            notify.notify_one();
                            return;
                        }
                        pg.text.push_str(data);
                        pg.next_seq = seq;
                    }
                    Piece::Gap { from_seq, to_seq } => {
                        pg.notes.push(format!(
                            "chunks {from_seq}-{to_seq} were not kept (the project's max_output_bytes)"
                        ));
                        pg.next_seq = to_seq;
                    }
                }
            }));
        let end = tokio::select! {
            end = follower.run() => Some(end),
            () = full.notified() => None,
            () = tokio::time::sleep(wait) => None,
        };
        let state = match end {
            Some(Ok(ref cmd)) => describe(cmd),
            Some(Err(e)) => return failed(&e),
            None => match self
                .client
                .get(&format!("/v1/commands/{}", seg(&p.id)), &[])
                .await
            {
                Ok(cmd) => describe(&cmd),
                Err(e) => return failed(&e),
            },
        };
        let Ok(pg) = page.lock() else {
            return ok(state);
        };
        let more = if pg.full {
            "more output follows"
        } else if matches!(end, Some(Ok(_))) {
            "this is the end of the output"
        } else {
            "no more output yet"
        };
        let mut s = format!(
            "{state}\nnext_seq: {} ({more})\n",
            pg.next_seq.max(p.from_seq)
        );
        for n in &pg.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        if pg.text.is_empty() {
            s.push_str("--- output: (none)\n");
        } else {
            s.push_str("--- output:\n");
            s.push_str(&pg.text);
            if !pg.text.ends_with('\n') {
                s.push('\n');
            }
        }
        ok(s)
    }

    #[tool(
        description = "Write to the standard input of a running command started with \
        start_command interactive=true (answer a prompt, drive a REPL such as `python3 -i`), \
        close it (eof=true), or send it a signal (signal=INT is Ctrl-C). Input arrives in the \
        order sent. Then read the reply with read_output. Fails once the command has ended."
    )]
    async fn send_input(&self, Parameters(p): Parameters<InputParams>) -> CallToolResult {
        let id = seg(&p.id);
        let sent = if let Some(signal) = &p.signal {
            let path = format!("/v1/commands/{id}/signal");
            self.client.post(&path, &json!({ "signal": signal })).await
        } else {
            let path = format!("/v1/commands/{id}/stdin");
            let req = self
                .client
                .request(reqwest::Method::POST, &path)
                .query(&[("eof", p.eof)])
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(p.text.clone().unwrap_or_default());
            self.client.send_json(req).await
        };
        match sent {
            Ok(_) if p.signal.is_some() => ok(format!(
                "sent {} to {}",
                p.signal.as_deref().unwrap_or_default(),
                p.id
            )),
            Ok(_) if p.eof => ok(format!(
                "sent; the standard input of {} is now closed",
                p.id
            )),
            Ok(_) => ok(format!("sent; read the reply with read_output id={}", p.id)),
            Err(e) => failed(&e),
        }
    }

    #[tool(
        description = "Cancel a queued or running command: it gets SIGTERM, then SIGKILL after a \
        grace period, and ends with status cancelled. Fails when the command already ended."
    )]
    async fn cancel_command(&self, Parameters(p): Parameters<IdParams>) -> CallToolResult {
        let path = format!("/v1/commands/{}/cancel", seg(&p.id));
        match self.client.post(&path, &json!({})).await {
            Ok(cmd) if terminal(&cmd) => ok(describe(&cmd)),
            Ok(cmd) => ok(format!(
                "{}; cancellation requested, it stops within seconds",
                describe(&cmd)
            )),
            Err(e) => failed(&e),
        }
    }

    #[tool(
        description = "List the projects (environments) commands can run in, with their \
        description and executor."
    )]
    async fn list_projects(&self, Parameters(p): Parameters<ListProjectsParams>) -> CallToolResult {
        let mut q = Vec::new();
        if let Some(l) = p.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = p.cursor {
            q.push(("cursor", c));
        }
        let page = match self.client.get("/v1/projects", &q).await {
            Ok(v) => v,
            Err(e) => return failed(&e),
        };
        let mut s = String::new();
        for pr in page["items"].as_array().into_iter().flatten() {
            let name = pr["name"].as_str().unwrap_or("?");
            let kind = pr["executor"]["kind"].as_str().unwrap_or("?");
            let default = if self.project.as_deref() == Some(name) {
                " [default]"
            } else {
                ""
            };
            s.push_str(&format!("{name}{default} ({kind})"));
            if let Some(d) = pr["description"].as_str().filter(|d| !d.is_empty()) {
                s.push_str(&format!(": {d}"));
            }
            s.push('\n');
        }
        if s.is_empty() {
            s.push_str("no projects\n");
        }
        if let Some(c) = page["next_cursor"].as_str() {
            s.push_str(&format!("more: list_projects cursor={c}\n"));
        }
        ok(s)
    }

    #[tool(
        description = "List recent commands, newest first, with id, status, exit code and \
        command line; filter by project and status."
    )]
    async fn list_commands(&self, Parameters(p): Parameters<ListCommandsParams>) -> CallToolResult {
        let mut q = vec![("limit", p.limit.unwrap_or(20).to_string())];
        if let Some(v) = p.project {
            q.push(("project", v));
        }
        if let Some(v) = p.status {
            q.push(("status", v));
        }
        if let Some(v) = p.cursor {
            q.push(("cursor", v));
        }
        let page = match self.client.get("/v1/commands", &q).await {
            Ok(v) => v,
            Err(e) => return failed(&e),
        };
        let mut s = String::new();
        for c in page["items"].as_array().into_iter().flatten() {
            let line = c["command"].as_str().map(str::to_owned).unwrap_or_else(|| {
                c["argv"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            });
            s.push_str(&format!(
                "{} [{}]: {line}\n",
                describe(c),
                c["created_at"].as_str().unwrap_or("")
            ));
        }
        if s.is_empty() {
            s.push_str("no commands\n");
        }
        if let Some(cur) = page["next_cursor"].as_str() {
            s.push_str(&format!("more: list_commands cursor={cur}\n"));
        }
        ok(s)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RdevMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("rdev", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

#[cfg(test)]
mod tests {
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
}
