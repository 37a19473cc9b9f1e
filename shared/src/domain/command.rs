//! A command as stored, its one JSON shape, and the lifecycle event that
//! carries it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{CommandStatus, EndReason};
use crate::interactive::{StdinMode, TtySize};

/// What a command runs: a shell line or an argument vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandSpec {
    /// Run with `/bin/sh -c`.
    Shell(String),
    /// Run directly, `argv[0]` looked up on `PATH`.
    Argv(Vec<String>),
}

/// A command as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// uuid v7.
    pub id: Uuid,
    /// Owning project's id.
    pub project_id: Uuid,
    /// Owning project's name.
    pub project: String,
    /// Key that created it.
    pub api_key_id: Option<Uuid>,
    /// What to run.
    pub spec: CommandSpec,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Where its standard input comes from.
    pub stdin: StdinMode,
    /// Its pseudo-terminal, if it has one.
    pub tty: Option<TtySize>,
    /// 0 (lowest) – 9 (highest).
    pub priority: i16,
    /// Lifecycle state.
    pub status: CommandStatus,
    /// Exit code once finished (128 + signal when killed by one).
    pub exit_code: Option<i32>,
    /// Why it failed, when it did not simply exit non-zero.
    pub error: Option<String>,
    /// Why it ended, once terminal.
    pub reason: Option<EndReason>,
    /// The signal that ended it, when `reason` is `signaled` (or a limit
    /// enforced by a signal).
    pub signal: Option<i32>,
    /// Wall-clock limit.
    pub timeout_s: i32,
    /// Worker that claimed it.
    pub worker_id: Option<String>,
    /// Claims so far.
    pub attempt: i32,
    /// Bytes of output produced (stored or not).
    pub output_bytes: i64,
    /// Whether the stored output lacks a middle part.
    pub truncated: bool,
    /// Acceptance time.
    pub created_at: DateTime<Utc>,
    /// Claim time.
    pub started_at: Option<DateTime<Utc>>,
    /// Terminal time.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The priority of a command that sets none (0 lowest, 9 highest); also
/// the AMQP priority of a run message that carries none.
pub const DEFAULT_PRIORITY: u8 = 5;

// The JSON of [`Command`] (its `Serialize`), and its OpenAPI schema
// (`Command`), shared by the API, SSE events and webhook payloads so they
// never disagree.
/// A command (the same shape in API answers, SSE `status`/`end` events and
/// webhook payloads). Exactly one of `command` and `argv` is present.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "utoipa", schema(as = Command))]
#[derive(Serialize)]
pub struct CommandJson<'a> {
    id: Uuid,
    /// Project name.
    project: &'a str,
    /// Shell command line (run with `sh -c`).
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    /// Program and arguments, run without a shell.
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<&'a [String]>,
    /// Where its standard input comes from: `closed`, `fixed` (the
    /// `stdin` string given at enqueue, never shown) or `pipe`.
    #[cfg_attr(feature = "utoipa", schema(value_type = String))]
    stdin: StdinMode,
    /// Its pseudo-terminal, if it has one.
    tty: Option<TtySize>,
    status: CommandStatus,
    exit_code: Option<i32>,
    error: Option<&'a str>,
    /// Why it ended (null until it is terminal).
    reason: Option<EndReason>,
    /// The signal that ended it (with `reason` `signaled`, or a limit
    /// enforced by a signal).
    signal: Option<i32>,
    priority: i16,
    timeout_s: i32,
    output_bytes: i64,
    truncated: bool,
    worker_id: Option<&'a str>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (command, argv) = match &self.spec {
            CommandSpec::Shell(c) => (Some(c.as_str()), None),
            CommandSpec::Argv(a) => (None, Some(a.as_slice())),
        };
        CommandJson {
            id: self.id,
            project: &self.project,
            command,
            argv,
            stdin: self.stdin,
            tty: self.tty,
            status: self.status,
            exit_code: self.exit_code,
            error: self.error.as_deref(),
            reason: self.reason,
            signal: self.signal,
            priority: self.priority,
            timeout_s: self.timeout_s,
            output_bytes: self.output_bytes,
            truncated: self.truncated,
            worker_id: self.worker_id.as_deref(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
        .serialize(s)
    }
}

/// A lifecycle event as published on the events exchange and delivered to
/// webhooks: `{"id","type","timestamp","data":{...command...}}`.
pub fn command_event(event_type: &str, command: &Command) -> serde_json::Value {
    serde_json::json!({
        "id": Uuid::now_v7(),
        "type": event_type,
        "timestamp": Utc::now(),
        "data": command,
    })
}

/// `Command`'s OpenAPI schema is its JSON's ([`CommandJson`]).
#[cfg(feature = "utoipa")]
impl utoipa::PartialSchema for Command {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <CommandJson<'static> as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::ToSchema for Command {
    fn name() -> std::borrow::Cow<'static, str> {
        <CommandJson<'static> as utoipa::ToSchema>::name()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <CommandJson<'static> as utoipa::ToSchema>::schemas(schemas);
    }
}
