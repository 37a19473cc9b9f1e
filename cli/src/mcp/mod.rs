//! `rdev mcp`: a Model Context Protocol server on stdin/stdout, so coding
//! agents can run commands in rdev. It is a client of the API like the
//! rest of the CLI (same configuration: URL, key, and a default project).
//!
//! stdout carries the protocol: nothing else in this module may print on it
//! (the follower is given a sink that collects chunks instead of writing
//! them). Every tool bounds what it returns (an output tail, a page of
//! chunks) and how long it waits, and says so in its answer when it cut
//! something, so a model can ask for the rest.

//!
//! Layout: this module holds the server and what every tool shares;
//! `commands` and `files` hold the tools (one `#[tool_router]` each,
//! added together in [`RdevMcp::new`]), `params` their arguments and
//! `text` how answers are worded for a model.

mod commands;
mod files;
mod params;
mod text;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolResult, ContentBlock as Content, Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::{ServerHandler, ServiceExt, tool_handler};
use serde_json::{Map, Value, json};

use self::params::RunParams;
use crate::args::McpArgs;
use crate::client::{Client, ClientError};
use crate::output::note;
use crate::units::seg;

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

impl RdevMcp {
    /// A server using `client`, with `project` as the default project.
    pub fn new(client: Client, project: Option<String>) -> Self {
        Self {
            client,
            project,
            tool_router: Self::command_tools() + Self::file_tools(),
        }
    }

    /// The project a tool names, else the default one.
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

    /// `POST …/commands` for `run_command` / `start_command`.
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
}

/// A tool's failure as the model sees it: an error result, with the API's words.
fn failed(e: &ClientError) -> CallToolResult {
    CallToolResult::error(vec![Content::text(e.to_string())])
}

fn ok(text: String) -> CallToolResult {
    CallToolResult::success(vec![Content::text(text)])
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RdevMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("rdev", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
