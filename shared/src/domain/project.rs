//! A project as stored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ExecutorConfig;
use crate::containment::{NetworkMode, ResourceLimits};

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
