//! Domain types and their rules, one module per concept:
//!
//! - [`status`]: a command's lifecycle (its status and state machine, why
//!   it ended, its output streams);
//! - [`command`]: a command as stored, its one JSON shape and its events;
//! - [`project`]: a project as stored;
//! - [`executor`]: where a project's commands run (settings, not the
//!   worker's executors that run them);
//! - [`scope`] and [`key`]: API keys, their permissions and budgets;
//! - [`validate`]: field checks and [`FieldError`], the unit of a 422.
//!
//! Everything is re-exported here, so `domain::Command` is the name to use.

pub mod command;
pub mod executor;
pub mod key;
pub mod project;
pub mod scope;
pub mod status;
pub mod validate;

pub use command::{Command, CommandSpec, DEFAULT_PRIORITY, command_event};
pub use executor::{
    ExecutorConfig, KubernetesSettings, LocalSettings, validate_executor, validate_executor_kind,
};
pub use key::{ApiKey, RateLimit, canonical_ip};
pub use project::Project;
pub use scope::Scope;
pub use status::{CommandStatus, EndReason, OutputStream, UnknownValue};
pub use validate::{
    FieldError, MAX_SECRET_VALUE, MAX_SECRETS_PER_COMMAND, MAX_SECRETS_PER_PROJECT, validate_env,
    validate_env_denylist, validate_env_name, validate_limits, validate_project_name,
    validate_secret_name, validate_secret_path, validate_secret_value, validate_workdir,
};
