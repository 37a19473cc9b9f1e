//! A command's secrets: read from PostgreSQL when the command starts (so a
//! rotation applies to every command that starts after it), recorded in
//! the audit log by name and version, given to the executor, and compiled
//! into the [`Redaction`] the output sink applies.
//!
//! Values live only in memory, for the run of the command; the types here
//! never show them in `Debug` (a `?job` in a log line stays harmless).

use std::sync::Arc;

use rdev_shared::db::Pool;
use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::secrets::{self, Requested, Resolved};
use rdev_shared::domain::Command;
use rdev_shared::redact::Redaction;
use serde_json::json;

/// Where secret files appear inside the sandbox: a private tmpfs.
pub const SECRETS_DIR: &str = "/run/secrets";
/// Variable naming [`SECRETS_DIR`] for commands given secret files.
pub const SECRETS_DIR_VAR: &str = "RDEV_SECRETS_DIR";

/// A secret value in memory; `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A secret given as a file: its path relative to [`SECRETS_DIR`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFile {
    /// Relative path (validated by the API: no `..`, no empty component).
    pub path: String,
    /// Its contents.
    pub value: SecretValue,
}

/// The secrets of one job.
#[derive(Clone, Debug, Default)]
pub struct JobSecrets {
    /// Environment variables (name, value).
    pub env: Vec<(String, SecretValue)>,
    /// Files under [`SECRETS_DIR`].
    pub files: Vec<SecretFile>,
}

impl JobSecrets {
    /// Whether the job has no secret.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.files.is_empty()
    }
}

/// What a command gets: its secrets and the redaction of their values.
#[derive(Debug)]
pub struct CommandSecrets {
    /// For the executor.
    pub job: JobSecrets,
    /// For the output sink.
    pub redaction: Arc<Redaction>,
}

impl CommandSecrets {
    /// No secrets, nothing to redact.
    pub fn none() -> Self {
        Self {
            job: JobSecrets::default(),
            redaction: Arc::new(Redaction::new(std::iter::empty())),
        }
    }
}

/// Why a command cannot have its secrets: it fails to start with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Checks what `command` asked for (`requested`, read with its claim)
/// against the project's policy as it is now, reads the current values and
/// records, in the same transaction, an audit entry `secret.use` naming
/// each secret and the version the command got. A refusal is audited as a
/// failure. A command without secrets costs nothing here.
pub async fn resolve(
    pool: &Pool,
    worker_id: &str,
    command: &Command,
    requested: &Requested,
) -> Result<Result<CommandSecrets, Refused>, rdev_shared::db::DbError> {
    if requested.is_empty() {
        return Ok(Ok(CommandSecrets::none()));
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let names = requested.names();
    let found = secrets::resolve(&tx, command.project_id, &names).await?;
    let decided = decide(requested, &names, found);
    let actor = format!("worker {worker_id}");
    let mut entry = AuditEntry {
        actor_key_id: command.api_key_id,
        actor: &actor,
        ip: None,
        action: "secret.use",
        target_type: "command",
        target_id: Some(command.id.to_string()),
        project_id: Some(command.project_id),
        outcome: "success",
        details: json!({}),
    };
    match &decided {
        Ok((_, used)) => entry.details = json!({ "secrets": used }),
        Err(refused) => {
            entry.outcome = "failure";
            entry.details = json!({ "secrets": names, "error": refused.0 });
        }
    }
    audit::append(&tx, &entry).await?;
    tx.commit().await?;
    Ok(decided.map(|(secrets, _)| secrets))
}

/// The pure part of [`resolve`]: the policy check, the missing names, and
/// the job's secrets with the audit details (name, version, how given).
fn decide(
    requested: &Requested,
    names: &[String],
    found: Vec<Resolved>,
) -> Result<(CommandSecrets, Vec<serde_json::Value>), Refused> {
    if let Some(allowed) = &requested.allowed {
        let refused: Vec<&str> = names
            .iter()
            .filter(|n| !allowed.contains(n))
            .map(String::as_str)
            .collect();
        if !refused.is_empty() {
            return Err(Refused(format!(
                "the project no longer allows the secret(s) {}",
                refused.join(", ")
            )));
        }
    }
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !found.iter().any(|r| &r.name == *n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Refused(format!(
            "secret(s) {} not set in the project (deleted after the command was queued?)",
            missing.join(", ")
        )));
    }
    let mut job = JobSecrets::default();
    let mut used = Vec::new();
    for r in &found {
        let as_env = requested.env.contains(&r.name);
        let file = requested.files.get(&r.name);
        if as_env {
            job.env
                .push((r.name.clone(), SecretValue::new(r.value.clone())));
        }
        if let Some(path) = file {
            job.files.push(SecretFile {
                path: path.clone(),
                value: SecretValue::new(r.value.clone()),
            });
        }
        used.push(json!({
            "name": r.name,
            "version": r.version,
            "env": as_env,
            "file": file,
        }));
    }
    let redaction = Arc::new(Redaction::new(
        found.iter().map(|r| (r.name.as_str(), r.value.as_bytes())),
    ));
    Ok((CommandSecrets { job, redaction }, used))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn resolved(name: &str, version: i32, value: &str) -> Resolved {
        Resolved {
            name: name.into(),
            version,
            value: value.into(),
        }
    }

    #[test]
    fn a_command_gets_what_it_named_and_the_audit_names_versions() {
        let req = Requested {
            env: vec!["TOKEN".into()],
            files: BTreeMap::from([("KEY".into(), "ssh/id".into())]),
            allowed: None,
        };
        let names = req.names();
        let (s, used) = decide(
            &req,
            &names,
            vec![
                resolved("KEY", 3, "-----key-----"),
                resolved("TOKEN", 1, "tok-123456"),
            ],
        )
        .expect("allowed");
        assert_eq!(s.job.env.len(), 1);
        assert_eq!(s.job.env[0].0, "TOKEN");
        assert_eq!(s.job.files[0].path, "ssh/id");
        assert_eq!(s.redaction.redact_all(b"tok-123456"), b"***TOKEN***");
        assert_eq!(used[0]["name"], "KEY");
        assert_eq!(used[0]["version"], 3);
        assert_eq!(used[0]["file"], "ssh/id");
        assert!(!format!("{s:?} {used:?}").contains("tok-123456"));
    }

    #[test]
    fn policy_and_missing_secrets_refuse_the_command() {
        let req = Requested {
            env: vec!["A_TOKEN".into(), "B_TOKEN".into()],
            files: BTreeMap::new(),
            allowed: Some(vec!["A_TOKEN".into()]),
        };
        let names = req.names();
        let err = decide(&req, &names, vec![]).expect_err("refused");
        assert!(err.0.contains("B_TOKEN") && err.0.contains("no longer allows"));
        let req = Requested {
            allowed: None,
            ..req
        };
        let err =
            decide(&req, &names, vec![resolved("A_TOKEN", 1, "aaaaaaaa")]).expect_err("missing");
        assert!(err.0.contains("B_TOKEN") && err.0.contains("not set"));
    }
}
