//! The body of `POST /v1/projects/{name}/commands` and its checks: a
//! [`CreateCommand`] becomes a [`CommandRequest`] or every field error at
//! once.

use std::collections::BTreeMap;

use rdev_shared::db::commands::{self, NewCommand};
use rdev_shared::domain::{
    CommandSpec, DEFAULT_PRIORITY, FieldError, Project, validate_env, validate_env_denylist,
};
use rdev_shared::interactive::TtySize;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Checked, field_errors};

const MAX_COMMAND_BYTES: usize = 64 * 1024;
const MAX_ARGS: usize = 4096;

/// Body of `POST /v1/projects/{name}/commands`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCommand {
    /// A shell command line; give exactly one of `command` and `argv`.
    command: Option<String>,
    /// Program and arguments, run without a shell.
    argv: Option<Vec<String>>,
    /// 0 (lowest) to 9 (highest).
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<i16>,
    timeout_s: Option<i32>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// `"closed"` (the default: `/dev/null`), `"pipe"` (fed while it runs
    /// through `POST /v1/commands/{id}/stdin` or `…/attach`), or any other
    /// string: fixed input, then end-of-file.
    stdin: Option<String>,
    /// Project secrets given as environment variables of the same name.
    /// Their values (and common encodings of them) are redacted from the
    /// output. On kubernetes projects: non-interactive commands only.
    #[serde(default)]
    secrets: Vec<String>,
    /// Project secrets given as read-only files: secret name → path
    /// relative to `/run/secrets` (a private in-memory filesystem of the
    /// command, gone when it ends; `RDEV_SECRETS_DIR` names it). Local
    /// projects with the sandbox only.
    #[serde(default)]
    secret_files: BTreeMap<String, String>,
    /// A pseudo-terminal of this size: stdout and stderr merge into it (as
    /// in any terminal); `stdin` defaults to `"pipe"`.
    tty: Option<TtySize>,
}

/// A command request that passed the checks that need no project.
pub struct CommandRequest {
    /// What to run.
    pub spec: CommandSpec,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// `stdin` as sent.
    stdin: Option<String>,
    /// Its terminal.
    pub tty: Option<TtySize>,
    priority: Option<i16>,
    timeout_s: Option<i32>,
    /// Secrets given as environment variables.
    pub secrets: Vec<String>,
    /// Secrets given as files.
    pub secret_files: BTreeMap<String, String>,
}

impl TryFrom<Checked<'_, CreateCommand>> for CommandRequest {
    type Error = ApiError;

    fn try_from(Checked { body, cfg, .. }: Checked<'_, CreateCommand>) -> ApiResult<Self> {
        let mut errors = Vec::new();
        let spec = spec_of(body.command, body.argv, &mut errors);
        if body.priority.is_some_and(|p| !(0..=9).contains(&p)) {
            errors.push(FieldError::new("priority", "must be 0-9"));
        }
        let max_timeout_s = cfg.max_timeout_s;
        if body.timeout_s.is_some_and(|t| t < 1 || t > max_timeout_s) {
            errors.push(FieldError::new(
                "timeout_s",
                format!("must be 1-{max_timeout_s}"),
            ));
        }
        validate_env("env", &body.env, &mut errors);
        if let Some(Err(m)) = body.tty.map(|t| t.validate()) {
            errors.push(FieldError::new("tty", m));
        }
        let fixed_input = body
            .stdin
            .as_deref()
            .is_some_and(|s| !matches!(s, "pipe" | "closed"));
        if body.tty.is_some() && fixed_input {
            errors.push(FieldError::new(
                "stdin",
                "a command with a tty takes `pipe` or `closed`, not fixed input",
            ));
        }
        match spec {
            Some(spec) if errors.is_empty() => Ok(Self {
                spec,
                env: body.env,
                stdin: body.stdin,
                tty: body.tty,
                priority: body.priority,
                timeout_s: body.timeout_s,
                secrets: body.secrets,
                secret_files: body.secret_files,
            }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

/// Exactly one of `command` and `argv`, each within its bounds.
fn spec_of(
    command: Option<String>,
    argv: Option<Vec<String>>,
    errors: &mut Vec<FieldError>,
) -> Option<CommandSpec> {
    match (command, argv) {
        (Some(c), None) => {
            if c.trim().is_empty() {
                errors.push(FieldError::new("command", "must not be empty"));
            } else if c.len() > MAX_COMMAND_BYTES || c.contains('\0') {
                errors.push(FieldError::new(
                    "command",
                    format!("must be at most {MAX_COMMAND_BYTES} bytes without NUL"),
                ));
            }
            Some(CommandSpec::Shell(c))
        }
        (None, Some(a)) => {
            if a.is_empty() || a[0].is_empty() {
                errors.push(FieldError::new("argv", "must name a program"));
            } else if a.len() > MAX_ARGS
                || a.iter().any(|s| s.contains('\0'))
                || a.iter().map(String::len).sum::<usize>() > MAX_COMMAND_BYTES
            {
                errors.push(FieldError::new(
                    "argv",
                    format!("at most {MAX_ARGS} arguments, {MAX_COMMAND_BYTES} bytes, no NUL"),
                ));
            }
            Some(CommandSpec::Argv(a))
        }
        _ => {
            errors.push(FieldError::new(
                "command",
                "give exactly one of `command` or `argv`",
            ));
            None
        }
    }
}

impl CommandRequest {
    /// The checks that need its project: its `env` against the project's
    /// denylist (`PATH` too when the project has `allowed_commands`).
    pub fn check_for(&self, project: &Project) -> ApiResult<()> {
        let mut errors = Vec::new();
        validate_env_denylist(
            "env",
            &self.env,
            project.allowed_commands.is_some(),
            &mut errors,
        );
        field_errors(errors)
    }

    /// Whether it reads input while it runs (a terminal or a pipe).
    pub fn interactive(&self) -> bool {
        self.tty.is_some() || self.stdin.as_deref() == Some("pipe")
    }

    /// What a retry with the same Idempotency-Key must repeat: the request
    /// as sent (not the defaults filled in from the project).
    pub fn fingerprint(&self, project: &Project) -> Vec<u8> {
        let (command, argv) = match &self.spec {
            CommandSpec::Shell(c) => (Some(c.as_str()), None),
            CommandSpec::Argv(a) => (None, Some(a)),
        };
        commands::request_fingerprint(&json!({
            "project": project.id,
            "command": command,
            "argv": argv,
            "env": self.env,
            "stdin": self.stdin,
            "tty": self.tty.map(|t| [t.cols, t.rows]),
            "priority": self.priority,
            "timeout_s": self.timeout_s,
        }))
    }

    /// The row to insert, defaults filled in from `project`.
    pub fn into_new(
        self,
        project: &Project,
        api_key_id: Uuid,
        idempotency: Option<(String, Vec<u8>)>,
    ) -> NewCommand {
        let (stdin_pipe, stdin) = stdin_of(self.stdin, self.tty.is_some());
        let (idempotency_key, idempotency_fingerprint) = idempotency.unzip();
        NewCommand {
            id: Uuid::now_v7(),
            project_id: project.id,
            api_key_id: Some(api_key_id),
            spec: self.spec,
            env: self.env,
            stdin,
            stdin_pipe,
            tty: self.tty,
            priority: self.priority.unwrap_or(i16::from(DEFAULT_PRIORITY)),
            timeout_s: self.timeout_s.unwrap_or(project.default_timeout_s),
            idempotency_key,
            idempotency_fingerprint,
        }
    }
}

/// How a command's standard input is fed, from the `stdin` field.
fn stdin_of(stdin: Option<String>, tty: bool) -> (bool, Option<Vec<u8>>) {
    match stdin.as_deref() {
        None if tty => (true, None),
        None | Some("closed") => (false, None),
        Some("pipe") => (true, None),
        Some(_) => (false, stdin.map(String::into_bytes)),
    }
}
