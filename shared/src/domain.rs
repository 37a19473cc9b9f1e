//! Domain types and their rules: statuses and their state machine, scopes,
//! executor configuration and the validation of names and paths.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::containment::{
    ExecutorKind, ExecutorKinds, NetworkMode, ResourceLimits, env_name_denied,
};
use crate::interactive::{StdinMode, TtySize};

/// Lifecycle of a command: `queued → running → succeeded | failed | timed_out |
/// cancelled`, or `queued → cancelled`. Terminal states are final.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// Claimed by a worker and executing.
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Exited non-zero, could not start, or its worker was lost.
    Failed,
    /// Killed because it exceeded its timeout.
    TimedOut,
    /// Cancelled by a client.
    Cancelled,
}

impl CommandStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [CommandStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The webhook event type announcing a transition into this status.
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            Self::Queued => None,
            Self::Running => Some("command.started"),
            Self::Succeeded => Some("command.succeeded"),
            Self::Failed => Some("command.failed"),
            Self::TimedOut => Some("command.timed_out"),
            Self::Cancelled => Some("command.cancelled"),
        }
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names no known value.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct UnknownValue {
    /// What was being parsed.
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
}

impl FromStr for CommandStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "status",
                value: s.to_owned(),
            })
    }
}

/// Why a command ended (its `reason`), finer than its status: `failed` can
/// mean a non-zero exit, a signal, a resource limit, a lost worker, …
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The main process exited (`exit_code` says how).
    Exited,
    /// The main process was killed by a signal (`signal` says which).
    Signaled,
    /// Killed at its timeout.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
    /// Killed, or failed, at its memory limit.
    MemoryLimit,
    /// Failed at its process limit.
    PidsLimit,
    /// Killed at its CPU time limit.
    CpuLimit,
    /// Killed at its file size limit.
    FileSizeLimit,
    /// Its worker stopped heart-beating.
    WorkerLost,
    /// Its worker shut down and the drain period ran out.
    WorkerShutdown,
    /// The connection to where it ran (a Kubernetes exec stream) was lost;
    /// the remote processes were stopped.
    ExecutorLost,
    /// It never ran: unknown program, bad workdir, deleted project, …
    FailedToStart,
    /// The local sandbox cannot run on its worker.
    SandboxUnavailable,
    /// An interactive command with no input, output or attached client
    /// for `RDEV_INTERACTIVE_IDLE`.
    Idle,
}

impl EndReason {
    /// Every reason.
    pub const ALL: [EndReason; 14] = [
        Self::Exited,
        Self::Signaled,
        Self::TimedOut,
        Self::Cancelled,
        Self::MemoryLimit,
        Self::PidsLimit,
        Self::CpuLimit,
        Self::FileSizeLimit,
        Self::WorkerLost,
        Self::WorkerShutdown,
        Self::ExecutorLost,
        Self::FailedToStart,
        Self::SandboxUnavailable,
        Self::Idle,
    ];

    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Signaled => "signaled",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::MemoryLimit => "memory_limit",
            Self::PidsLimit => "pids_limit",
            Self::CpuLimit => "cpu_limit",
            Self::FileSizeLimit => "file_size_limit",
            Self::WorkerLost => "worker_lost",
            Self::WorkerShutdown => "worker_shutdown",
            Self::ExecutorLost => "executor_lost",
            Self::FailedToStart => "failed_to_start",
            Self::SandboxUnavailable => "sandbox_unavailable",
            Self::Idle => "idle",
        }
    }

    /// The reason of a command finished before reasons were recorded,
    /// inferred from its status, exit code and error text.
    pub fn infer(
        status: CommandStatus,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> Option<Self> {
        Some(match status {
            CommandStatus::Queued | CommandStatus::Running => return None,
            CommandStatus::Succeeded => Self::Exited,
            CommandStatus::TimedOut => Self::TimedOut,
            CommandStatus::Cancelled => Self::Cancelled,
            CommandStatus::Failed => match (exit_code, error) {
                (_, Some("worker_lost")) => Self::WorkerLost,
                (Some(_), Some(e)) if e.starts_with("terminated by signal") => Self::Signaled,
                (Some(_), _) => Self::Exited,
                (None, _) => Self::FailedToStart,
            },
        })
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EndReason {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "reason",
                value: s.to_owned(),
            })
    }
}

/// Which output stream a chunk came from.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

impl FromStr for OutputStream {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            _ => Err(UnknownValue {
                kind: "stream",
                value: s.to_owned(),
            }),
        }
    }
}

/// Permissions an API key can hold. `admin` implies all others.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Everything.
    #[serde(rename = "admin")]
    Admin,
    /// Read projects.
    #[serde(rename = "projects:read")]
    ProjectsRead,
    /// Create, change and delete projects.
    #[serde(rename = "projects:write")]
    ProjectsWrite,
    /// Set what contains a project's commands: its executor,
    /// `allowed_commands`, `limits` and `network`.
    #[serde(rename = "projects:admin")]
    ProjectsAdmin,
    /// Run and cancel commands.
    #[serde(rename = "commands:run")]
    CommandsRun,
    /// Send input, terminal sizes and signals to running commands, and
    /// attach to them.
    #[serde(rename = "commands:input")]
    CommandsInput,
    /// Read commands and their output.
    #[serde(rename = "commands:read")]
    CommandsRead,
    /// Manage webhook endpoints and deliveries.
    #[serde(rename = "webhooks:manage")]
    WebhooksManage,
    /// Manage API keys.
    #[serde(rename = "keys:manage")]
    KeysManage,
    /// Read the audit log.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Set, list and delete a project's secrets (never read their values).
    #[serde(rename = "secrets:manage")]
    SecretsManage,
    /// Read, list and download a project's files.
    #[serde(rename = "files:read")]
    FilesRead,
    /// Upload and delete a project's files.
    #[serde(rename = "files:write")]
    FilesWrite,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 13] = [
        Self::Admin,
        Self::ProjectsRead,
        Self::ProjectsWrite,
        Self::ProjectsAdmin,
        Self::CommandsRun,
        Self::CommandsInput,
        Self::CommandsRead,
        Self::WebhooksManage,
        Self::KeysManage,
        Self::AuditRead,
        Self::SecretsManage,
        Self::FilesRead,
        Self::FilesWrite,
    ];

    /// The scope's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::ProjectsRead => "projects:read",
            Self::ProjectsWrite => "projects:write",
            Self::ProjectsAdmin => "projects:admin",
            Self::CommandsRun => "commands:run",
            Self::CommandsInput => "commands:input",
            Self::CommandsRead => "commands:read",
            Self::WebhooksManage => "webhooks:manage",
            Self::KeysManage => "keys:manage",
            Self::AuditRead => "audit:read",
            Self::SecretsManage => "secrets:manage",
            Self::FilesRead => "files:read",
            Self::FilesWrite => "files:write",
        }
    }

    /// Whether holding `held` grants `self`: `admin` grants every scope,
    /// `projects:admin` also grants `projects:write` and `projects:read`,
    /// `commands:run` also grants `commands:input`.
    pub fn granted_by(self, held: &[Scope]) -> bool {
        held.iter().any(|&s| {
            s == Scope::Admin
                || s == self
                || (s == Scope::ProjectsAdmin
                    && matches!(self, Scope::ProjectsWrite | Scope::ProjectsRead))
                || (s == Scope::CommandsRun && self == Scope::CommandsInput)
        })
    }
}

impl FromStr for Scope {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "scope",
                value: s.to_owned(),
            })
    }
}

/// Where a project's commands run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecutorConfig {
    /// A child process of the worker, in a directory under `RDEV_WORKSPACE_ROOT`.
    Local(LocalExecutor),
    /// `exec` into a pod chosen by label selector.
    Kubernetes(KubernetesExecutor),
}

/// Settings of the `local` executor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalExecutor {
    /// Directory relative to the workspace root; defaults to the project's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// Settings of the `kubernetes` executor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesExecutor {
    /// Namespace of the project's pods.
    pub namespace: String,
    /// Label selector, e.g. `app=web`.
    pub selector: String,
    /// Container to exec into; the pod's first container when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self::Local(LocalExecutor::default())
    }
}

/// One field-level validation failure.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path of the field, e.g. `executor.workdir`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks a project name against `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn validate_project_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("must match ^[a-z0-9][a-z0-9-]{0,62}$".into())
    }
}

/// Checks a workdir is a plain relative path: no `..`, not absolute, no NUL.
/// Symlink escapes are checked again by the worker on the real filesystem.
pub fn validate_workdir(dir: &str) -> Result<(), String> {
    if dir.is_empty() || dir.len() > 255 {
        return Err("must be 1-255 characters".into());
    }
    if dir.starts_with('/') || dir.contains('\0') || dir.contains('\\') {
        return Err("must be a relative path".into());
    }
    if dir.split('/').any(|part| part == "..") {
        return Err("must not contain `..`".into());
    }
    Ok(())
}

/// Checks an environment variable name (`^[A-Za-z_][A-Za-z0-9_]*$`, ≤ 128).
pub fn validate_env_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err("must match ^[A-Za-z_][A-Za-z0-9_]*$".into())
    }
}

/// Secrets a project may hold (and names an `allowed_secrets` list may have).
pub const MAX_SECRETS_PER_PROJECT: usize = 256;
/// Secrets one command may name (`secrets` and `secret_files` together).
pub const MAX_SECRETS_PER_COMMAND: usize = 64;
/// Longest secret value, in bytes.
pub const MAX_SECRET_VALUE: usize = 32 * 1024;

/// Checks a secret's name: it is also the environment variable a command
/// sees, so an environment variable name that no command or project may
/// set (`LD_PRELOAD`, `PATH`, …; see [`crate::containment::env_name_denied`]).
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    validate_env_name(name)?;
    if crate::containment::env_name_denied(name, true) {
        return Err(format!("`{name}` is a reserved environment variable"));
    }
    Ok(())
}

/// Checks a secret's value: [`crate::redact::MIN_VALUE`] to
/// [`MAX_SECRET_VALUE`] bytes without NUL (a shorter value would make
/// redaction hide ordinary output).
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    let min = crate::redact::MIN_VALUE;
    if value.len() < min {
        return Err(format!(
            "must be at least {min} bytes: a shorter value would be redacted from ordinary output"
        ));
    }
    if value.len() > MAX_SECRET_VALUE || value.contains('\0') {
        return Err(format!(
            "must be at most {MAX_SECRET_VALUE} bytes without NUL"
        ));
    }
    Ok(())
}

/// Checks where a secret file goes: a relative path under the secrets
/// directory, 1-255 bytes, no empty, `.` or `..` component.
pub fn validate_secret_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 255 {
        return Err("must be 1-255 characters".into());
    }
    if path.starts_with('/') || path.contains('\0') || path.contains('\\') {
        return Err("must be a relative path".into());
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("must not contain empty, `.` or `..` components".into());
    }
    Ok(())
}

/// Validates an environment map; `field` is the JSON name of the map.
pub fn validate_env(field: &str, env: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    const MAX_VARS: usize = 256;
    const MAX_VALUE: usize = 32 * 1024;
    if env.len() > MAX_VARS {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_VARS} variables"),
        ));
    }
    for (k, v) in env {
        if let Err(m) = validate_env_name(k) {
            errors.push(FieldError::new(format!("{field}.{k}"), m));
        }
        if v.len() > MAX_VALUE || v.contains('\0') {
            errors.push(FieldError::new(
                format!("{field}.{k}"),
                format!("value must be at most {MAX_VALUE} bytes without NUL"),
            ));
        }
    }
}

/// Validates an executor configuration.
pub fn validate_executor(exec: &ExecutorConfig, errors: &mut Vec<FieldError>) {
    match exec {
        ExecutorConfig::Local(l) => {
            if let Some(dir) = &l.workdir
                && let Err(m) = validate_workdir(dir)
            {
                errors.push(FieldError::new("executor.workdir", m));
            }
        }
        ExecutorConfig::Kubernetes(k) => {
            if validate_project_name(&k.namespace).is_err() {
                errors.push(FieldError::new(
                    "executor.namespace",
                    "must be a DNS-1123 label",
                ));
            }
            if k.selector.trim().is_empty() || k.selector.len() > 1024 {
                errors.push(FieldError::new(
                    "executor.selector",
                    "must be a label selector",
                ));
            }
            if let Some(dir) = &k.workdir
                && (!dir.starts_with('/') || dir.contains('\0'))
            {
                errors.push(FieldError::new(
                    "executor.workdir",
                    "must be an absolute path",
                ));
            }
        }
    }
}

impl ExecutorConfig {
    /// The kind of executor.
    pub fn kind(&self) -> ExecutorKind {
        match self {
            Self::Local(_) => ExecutorKind::Local,
            Self::Kubernetes(_) => ExecutorKind::Kubernetes,
        }
    }
}

/// Checks an executor against the kinds the deployment runs (a field error
/// naming the allowed ones).
pub fn validate_executor_kind(
    exec: &ExecutorConfig,
    enabled: &ExecutorKinds,
    errors: &mut Vec<FieldError>,
) {
    if !enabled.allows(exec.kind()) {
        errors.push(FieldError::new(
            "executor.kind",
            format!(
                "`{}` is disabled on this deployment; allowed: {enabled}",
                exec.kind().as_str()
            ),
        ));
    }
}

/// Checks a project's resource limits against the server's ceilings.
pub fn validate_limits(
    limits: &ResourceLimits,
    max: &ResourceLimits,
    errors: &mut Vec<FieldError>,
) {
    errors.extend(
        limits
            .violations(max)
            .into_iter()
            .map(|(field, message)| FieldError::new(field, message)),
    );
}

/// Refuses environment variables that change what programs load or run
/// ([`crate::containment::DENIED_ENV`]); `with_policy` (the project has
/// `allowed_commands`) also refuses `PATH`.
pub fn validate_env_denylist(
    field: &str,
    env: &BTreeMap<String, String>,
    with_policy: bool,
    errors: &mut Vec<FieldError>,
) {
    for name in env.keys().filter(|n| env_name_denied(n, with_policy)) {
        errors.push(FieldError::new(
            format!("{field}.{name}"),
            "may not be set: it changes what programs load or run \
             (docs/API.md, \"Environment variables\")",
        ));
    }
}

/// A project: a named development environment commands run in.
#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    /// Internal id.
    pub id: Uuid,
    /// Unique slug.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Where its commands run.
    pub executor: ExecutorConfig,
    /// Variables given to every command.
    pub env: BTreeMap<String, String>,
    /// Timeout of a command that sets none.
    pub default_timeout_s: i32,
    /// Cap on stored output per command.
    pub max_output_bytes: i64,
    /// Commands of this project running at once across all workers; none = unlimited.
    pub max_concurrency: Option<i32>,
    /// Allowed command patterns; none = any.
    pub allowed_commands: Option<Vec<String>>,
    /// Network of its local commands.
    pub network: NetworkMode,
    /// Resource limits of its commands (absent ones: the server's defaults).
    pub limits: ResourceLimits,
    /// Secrets its commands may name; none = any of its secrets.
    pub allowed_secrets: Option<Vec<String>>,
    /// Seconds its finished commands are kept; none = the server's default
    /// (`RDEV_COMMAND_RETENTION`).
    pub command_retention_s: Option<i64>,
    /// Seconds its finished commands' output is kept; none = the server's
    /// default (`RDEV_OUTPUT_RETENTION`).
    pub output_retention_s: Option<i64>,
    /// Largest file (or archive's contents) one upload through the files
    /// API may write; none = the server's `RDEV_FILES_MAX_BYTES`, which
    /// also caps it.
    pub max_file_bytes: Option<i64>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

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

/// A request budget: at most `requests` per sliding window of `window_s` seconds.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: i32,
    /// Window length in seconds.
    pub window_s: i32,
}

impl RateLimit {
    /// Largest accepted window: one day (retention keeps two windows of rows).
    pub const MAX_WINDOW_S: i32 = 86_400;
    /// Largest accepted budget per window.
    pub const MAX_REQUESTS: i32 = 1_000_000;

    /// Checks the bounds; the message names the failing part.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_REQUESTS).contains(&self.requests) {
            return Err(format!("requests must be 1-{}", Self::MAX_REQUESTS));
        }
        if !(1..=Self::MAX_WINDOW_S).contains(&self.window_s) {
            return Err(format!("window_s must be 1-{}", Self::MAX_WINDOW_S));
        }
        Ok(())
    }
}

impl FromStr for RateLimit {
    type Err = String;
    /// Parses `N/<duration>`, e.g. `600/60s` or `100/1m`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, d) = s
            .split_once('/')
            .ok_or_else(|| format!("expected N/<duration>, e.g. 600/60s, got `{s}`"))?;
        let requests: i32 = n
            .trim()
            .parse()
            .map_err(|_| format!("invalid request count in `{s}`"))?;
        let window = crate::config::parse_duration(d)?;
        if window.subsec_nanos() != 0 || window.as_secs() == 0 {
            return Err(format!(
                "the window of `{s}` must be a whole number of seconds"
            ));
        }
        let window_s = i32::try_from(window.as_secs()).map_err(|_| "window too long".to_owned())?;
        let rl = RateLimit { requests, window_s };
        rl.validate()?;
        Ok(rl)
    }
}

/// An API key as stored (never the secret).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    /// Key id.
    pub id: Uuid,
    /// Human name.
    pub name: String,
    /// First characters of the secret.
    pub prefix: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Projects it may touch; none = all.
    pub project_ids: Option<Vec<Uuid>>,
    /// Client networks it may be used from; none = any.
    pub allowed_ips: Option<Vec<ipnet::IpNet>>,
    /// Its own rate limit; none = the server default.
    pub rate_limit: Option<RateLimit>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last authenticated use (approximate).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The key that made it (none: made from the command line).
    pub created_by: Option<Uuid>,
}

impl ApiKey {
    /// Whether the key holds `scope` (directly or through `admin`).
    pub fn has_scope(&self, scope: Scope) -> bool {
        scope.granted_by(&self.scopes)
    }

    /// Whether the key may see the project.
    pub fn can_access_project(&self, project_id: Uuid) -> bool {
        self.project_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&project_id))
    }

    /// Whether the key is usable now.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    /// Whether a request from `ip` may use the key (no allowlist = any address;
    /// an unknown address never passes an allowlist).
    pub fn allows_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        match (&self.allowed_ips, ip) {
            (None, _) => true,
            (Some(nets), Some(ip)) => {
                let ip = canonical_ip(ip);
                nets.iter().any(|n| n.contains(&ip))
            }
            (Some(_), None) => false,
        }
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket
/// reports IPv4 peers) to plain IPv4, so IPv4 allowlists match them.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_from_config() {
        let rl: RateLimit = "600/60s".parse().expect("default");
        assert_eq!((rl.requests, rl.window_s), (600, 60));
        let rl: RateLimit = "10/2m".parse().expect("minutes");
        assert_eq!((rl.requests, rl.window_s), (10, 120));
        for bad in ["600", "0/60s", "5/0s", "5/500ms", "x/1s", "5/2d"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn project_names_follow_the_slug_rule() {
        for ok in ["a", "app", "my-app-2", "0abc", &"a".repeat(63)] {
            assert!(validate_project_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workdirs_stay_relative() {
        assert!(validate_workdir("app").is_ok());
        assert!(validate_workdir("a/b/c").is_ok());
        assert!(validate_workdir("a/..b").is_ok());
        for bad in ["", "/etc", "../x", "a/../../x", "a/..", "a\0b"] {
            assert!(validate_workdir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_grants_every_scope() {
        for s in Scope::ALL {
            assert!(s.granted_by(&[Scope::Admin]));
        }
        assert!(Scope::CommandsRead.granted_by(&[Scope::CommandsRead]));
        assert!(!Scope::CommandsRun.granted_by(&[Scope::CommandsRead]));
        assert!(Scope::ProjectsWrite.granted_by(&[Scope::ProjectsAdmin]));
        assert!(Scope::ProjectsRead.granted_by(&[Scope::ProjectsAdmin]));
        assert!(!Scope::ProjectsAdmin.granted_by(&[Scope::ProjectsWrite]));
    }

    #[test]
    fn statuses_round_trip_and_know_terminality() {
        for s in CommandStatus::ALL {
            assert_eq!(s.as_str().parse::<CommandStatus>().ok(), Some(s));
        }
        assert!(!CommandStatus::Running.is_terminal());
        assert!(CommandStatus::TimedOut.is_terminal());
    }

    #[test]
    fn executor_config_rejects_unknown_fields() {
        let ok: ExecutorConfig =
            serde_json::from_str(r#"{"kind":"local","workdir":"x"}"#).expect("valid");
        assert_eq!(
            ok,
            ExecutorConfig::Local(LocalExecutor {
                workdir: Some("x".into())
            })
        );
        assert!(serde_json::from_str::<ExecutorConfig>(r#"{"kind":"local","wd":"x"}"#).is_err());
        assert!(serde_json::from_str::<ExecutorConfig>(r#"{"kind":"ssh"}"#).is_err());
    }
}

/// The JSON shape of a command (DESIGN.md §5), shared by the API, SSE events
/// and webhook payloads so they never disagree.
#[derive(Serialize)]
struct CommandJson<'a> {
    id: Uuid,
    project: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<&'a [String]>,
    stdin: StdinMode,
    tty: Option<TtySize>,
    status: CommandStatus,
    exit_code: Option<i32>,
    error: Option<&'a str>,
    reason: Option<EndReason>,
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
