//! The command tools: run (and wait), start, read output, send input,
//! cancel, and list projects and commands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{tool, tool_router};
use serde_json::{Value, json};

use super::params::{
    IdParams, InputParams, ListCommandsParams, ListProjectsParams, ReadParams, RunParams,
};
use super::text::{Collected, OutputPage, describe, terminal};
use super::{RdevMcp, failed, ok};
use crate::events::Follower;
use crate::units::seg;

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

#[tool_router(router = command_tools, vis = "pub(super)")]
impl RdevMcp {
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
        let collected = Arc::new(Mutex::new(Collected::tails(keep)));
        let sink = collected.clone();
        let mut follower =
            Follower::new(self.client.clone(), id.clone()).with_sink(Box::new(move |piece| {
                if let Ok(mut c) = sink.lock() {
                    c.take(piece);
                }
            }));
        let end = tokio::time::timeout(wait, follower.run()).await;
        let Ok(c) = collected.lock() else {
            return ok(format!("command {id} started"));
        };
        match end {
            Ok(Ok(cmd)) => ok(format!("{}\n{}", describe(&cmd), c.render(&id))),
            Ok(Err(e)) => failed(&e),
            Err(_) => ok(format!(
                "command {id} is still running after {}s; it goes on. Output so far:\n{}\
                 Follow it with read_output id={id} from_seq={}, or stop it with cancel_command.\n",
                wait.as_secs(),
                c.render_tails(&id),
                follower.last_seq()
            )),
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
        let page = Arc::new(Mutex::new(OutputPage::new(p.from_seq, max)));
        let full = Arc::new(tokio::sync::Notify::new());
        let (sink, notify) = (page.clone(), full.clone());
        let mut follower = Follower::new(self.client.clone(), p.id.clone())
            .after(p.from_seq)
            .with_sink(Box::new(move |piece| {
                let Ok(mut pg) = sink.lock() else { return };
                if pg.take(piece) {
                    notify.notify_one();
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
        match page.lock() {
            Ok(pg) => ok(pg.render(&state, matches!(end, Some(Ok(_))))),
            Err(_) => ok(state),
        }
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
