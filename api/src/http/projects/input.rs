//! The bodies of `POST /v1/projects` and `PATCH /v1/projects/{name}`, and
//! how they become what the repository takes ([`NewProject`],
//! [`ProjectPatch`]) or every field error at once.

use std::collections::BTreeMap;

use rdev_shared::containment::{NetworkMode, ResourceLimits};
use rdev_shared::db::projects::{NewProject, ProjectPatch};
use rdev_shared::domain::{
    ExecutorConfig, FieldError, MAX_SECRETS_PER_PROJECT, Project, Scope, validate_env,
    validate_env_denylist, validate_executor, validate_executor_kind, validate_limits,
    validate_project_name, validate_secret_name,
};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::config::ApiConfig;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, Checked, field_errors};

/// Shortest and longest per-project retention: an hour, and ten years.
const MIN_RETENTION_S: i64 = 3600;
const MAX_RETENTION_S: i64 = 10 * 366 * 86_400;
/// Default cap on stored output per command: 10 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: i64 = 10 * 1024 * 1024;
const MAX_MAX_OUTPUT_BYTES: i64 = 1024 * 1024 * 1024;
const DEFAULT_TIMEOUT_S: i32 = 3600;

/// Body of `POST /v1/projects`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub(super) name: String,
    #[serde(default)]
    description: String,
    executor: Option<ExecutorConfig>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    default_timeout_s: Option<i32>,
    max_output_bytes: Option<i64>,
    max_concurrency: Option<i32>,
    allowed_commands: Option<Vec<String>>,
    /// `host` (default) or `none`: a network namespace of its own, with
    /// nothing reachable. Local projects only.
    network: Option<NetworkMode>,
    /// Per-command resource limits (each at most the server's ceiling).
    /// Local projects only.
    limits: Option<ResourceLimits>,
    /// Secrets its commands may name (`secrets`, `secret_files`); absent or
    /// `null` = any of the project's secrets.
    allowed_secrets: Option<Vec<String>>,
    /// Seconds finished commands are kept (default: the server's).
    command_retention_s: Option<i64>,
    /// Seconds their stored output is kept (default: the server's).
    output_retention_s: Option<i64>,
    /// Largest upload through the files API, at most the server's
    /// `RDEV_FILES_MAX_BYTES` (default: that). Takes `projects:admin`.
    max_file_bytes: Option<i64>,
}

/// Body of `PATCH /v1/projects/{name}`: absent fields stay, `null` clears a nullable one.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    description: Option<String>,
    executor: Option<ExecutorConfig>,
    env: Option<BTreeMap<String, String>>,
    default_timeout_s: Option<i32>,
    max_output_bytes: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrency: Option<Option<i32>>,
    #[serde(default, deserialize_with = "nullable")]
    allowed_commands: Option<Option<Vec<String>>>,
    network: Option<NetworkMode>,
    /// Replaces the whole object (`{}` returns every limit to the default).
    limits: Option<ResourceLimits>,
    /// `null` lets commands name any of the project's secrets.
    #[serde(default, deserialize_with = "nullable")]
    allowed_secrets: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    command_retention_s: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    output_retention_s: Option<Option<i64>>,
    /// `null` returns to the server's cap. Takes `projects:admin`.
    #[serde(default, deserialize_with = "nullable")]
    max_file_bytes: Option<Option<i64>>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// The settable fields of a project, as given in a create or update.
struct Fields<'a> {
    description: Option<&'a str>,
    executor: Option<&'a ExecutorConfig>,
    env: Option<&'a BTreeMap<String, String>>,
    default_timeout_s: Option<i32>,
    max_output_bytes: Option<i64>,
    max_concurrency: Option<i32>,
    allowed_commands: Option<&'a [String]>,
    network: Option<NetworkMode>,
    limits: Option<&'a ResourceLimits>,
    allowed_secrets: Option<&'a [String]>,
    command_retention_s: Option<i64>,
    output_retention_s: Option<i64>,
    max_file_bytes: Option<i64>,
}

/// What contains a project's commands: set only with `projects:admin`.
#[derive(PartialEq)]
pub(super) struct Containment<'a> {
    executor: ExecutorConfig,
    allowed_commands: Option<&'a [String]>,
    network: NetworkMode,
    limits: ResourceLimits,
    allowed_secrets: Option<&'a [String]>,
    max_file_bytes: Option<i64>,
}

impl<'a> Containment<'a> {
    /// A new project's, when the request sets none of it.
    pub(super) fn default_for() -> Self {
        Self {
            executor: ExecutorConfig::default(),
            allowed_commands: None,
            network: NetworkMode::Host,
            limits: ResourceLimits::default(),
            allowed_secrets: None,
            max_file_bytes: None,
        }
    }

    pub(super) fn of(p: &'a Project) -> Self {
        Self {
            executor: p.executor.clone(),
            allowed_commands: p.allowed_commands.as_deref(),
            network: p.network,
            limits: p.limits,
            allowed_secrets: p.allowed_secrets.as_deref(),
            max_file_bytes: p.max_file_bytes,
        }
    }

    /// `self` with what a request sets applied.
    pub(super) fn with(
        &self,
        executor: Option<&ExecutorConfig>,
        allowed_commands: Option<Option<&'a [String]>>,
        network: Option<NetworkMode>,
        limits: Option<&ResourceLimits>,
        allowed_secrets: Option<Option<&'a [String]>>,
    ) -> Self {
        Self {
            executor: executor.cloned().unwrap_or_else(|| self.executor.clone()),
            allowed_commands: allowed_commands.unwrap_or(self.allowed_commands),
            network: network.unwrap_or(self.network),
            limits: limits.copied().unwrap_or(self.limits),
            allowed_secrets: allowed_secrets.unwrap_or(self.allowed_secrets),
            max_file_bytes: self.max_file_bytes,
        }
    }

    /// The same settings spelled one way: a local workdir equal to the
    /// project's name is the default workdir.
    fn normalized(mut self, name: &str) -> Self {
        if let ExecutorConfig::Local(l) = &mut self.executor
            && l.workdir.as_deref() == Some(name)
        {
            l.workdir = None;
        }
        self
    }
}

/// Refuses a key without `projects:admin` when a request changes what
/// contains a project's commands (from `before` to `after`).
pub(super) fn require_containment_scope(
    auth: &Auth,
    name: &str,
    before: Containment<'_>,
    after: Containment<'_>,
) -> ApiResult<()> {
    if before.normalized(name) != after.normalized(name)
        && !auth.key.has_scope(Scope::ProjectsAdmin)
    {
        return Err(auth.deny(
            "scope",
            json!({ "scope": Scope::ProjectsAdmin.as_str() }),
            "setting a project's executor, allowed_commands, allowed_secrets, limits, network \
             or max_file_bytes takes the `projects:admin` scope"
                .into(),
        ));
    }
    Ok(())
}

/// Validates the fields a create or update sets. `resulting` is the
/// project's executor after the change; `has_policy` whether it will have
/// `allowed_commands` (which also denies `PATH` in `env`).
fn check_common(
    f: &Fields<'_>,
    cfg: &ApiConfig,
    resulting: &ExecutorConfig,
    has_policy: bool,
    errors: &mut Vec<FieldError>,
) {
    let Fields {
        description,
        executor,
        env,
        default_timeout_s,
        max_output_bytes,
        max_concurrency,
        allowed_commands,
        network,
        limits,
        allowed_secrets,
        command_retention_s,
        output_retention_s,
        max_file_bytes,
    } = *f;
    check_retention(command_retention_s, output_retention_s, errors);
    let files_max = i64::try_from(cfg.files_max_bytes).unwrap_or(i64::MAX);
    if max_file_bytes.is_some_and(|n| !(1..=files_max).contains(&n)) {
        errors.push(FieldError::new(
            "max_file_bytes",
            format!("must be 1-{files_max} bytes (the server's RDEV_FILES_MAX_BYTES)"),
        ));
    }
    let max_timeout_s = cfg.max_timeout_s;
    if description.is_some_and(|d| d.len() > 4096) {
        errors.push(FieldError::new("description", "at most 4096 bytes"));
    }
    if let Some(e) = executor {
        validate_executor(e, errors);
        validate_executor_kind(e, &cfg.executors, errors);
    }
    if let Some(env) = env {
        validate_env("env", env, errors);
        validate_env_denylist("env", env, has_policy, errors);
    }
    if let Some(l) = limits {
        validate_limits(l, &cfg.limits.max, errors);
    }
    let local_only =
        matches!(network, Some(NetworkMode::None)) || limits.is_some_and(|l| !l.is_empty());
    if local_only && matches!(resulting, ExecutorConfig::Kubernetes(_)) {
        errors.push(FieldError::new(
            if matches!(network, Some(NetworkMode::None)) {
                "network"
            } else {
                "limits"
            },
            "network and limits apply to local projects; a kubernetes project's pods set their own",
        ));
    }
    if default_timeout_s.is_some_and(|t| t < 1 || t > max_timeout_s) {
        errors.push(FieldError::new(
            "default_timeout_s",
            format!("must be 1-{max_timeout_s}"),
        ));
    }
    if max_output_bytes.is_some_and(|m| !(2..=MAX_MAX_OUTPUT_BYTES).contains(&m)) {
        errors.push(FieldError::new(
            "max_output_bytes",
            format!("must be 2-{MAX_MAX_OUTPUT_BYTES}"),
        ));
    }
    if max_concurrency.is_some_and(|c| !(1..=10_000).contains(&c)) {
        errors.push(FieldError::new("max_concurrency", "must be 1-10000"));
    }
    if let Some(list) = allowed_commands {
        rdev_shared::policy::validate(list, errors);
    }
    if let Some(names) = allowed_secrets {
        check_allowed_secrets(names, errors);
    }
}

/// Retention periods: an hour to ten years.
fn check_retention(commands: Option<i64>, output: Option<i64>, errors: &mut Vec<FieldError>) {
    for (field, v) in [
        ("command_retention_s", commands),
        ("output_retention_s", output),
    ] {
        if v.is_some_and(|s| !(MIN_RETENTION_S..=MAX_RETENTION_S).contains(&s)) {
            errors.push(FieldError::new(
                field,
                format!("must be {MIN_RETENTION_S}-{MAX_RETENTION_S} seconds"),
            ));
        }
    }
}

/// An `allowed_secrets` list: at most [`MAX_SECRETS_PER_PROJECT`] secret names.
fn check_allowed_secrets(names: &[String], errors: &mut Vec<FieldError>) {
    if names.len() > MAX_SECRETS_PER_PROJECT {
        errors.push(FieldError::new(
            "allowed_secrets",
            format!("at most {MAX_SECRETS_PER_PROJECT} names"),
        ));
    }
    for (i, n) in names.iter().enumerate() {
        if let Err(m) = validate_secret_name(n) {
            errors.push(FieldError::new(format!("allowed_secrets[{i}]"), m));
        }
    }
}

impl TryFrom<Checked<'_, CreateProject>> for NewProject {
    type Error = ApiError;

    fn try_from(Checked { body, cfg, .. }: Checked<'_, CreateProject>) -> ApiResult<Self> {
        let mut errors = Vec::new();
        if let Err(m) = validate_project_name(&body.name) {
            errors.push(FieldError::new("name", m));
        }
        let resulting = body.executor.clone().unwrap_or_default();
        check_common(
            &body.fields(),
            cfg,
            &resulting,
            body.allowed_commands.is_some(),
            &mut errors,
        );
        if body.executor.is_none() {
            validate_executor_kind(&resulting, &cfg.executors, &mut errors);
        }
        field_errors(errors)?;
        Ok(NewProject {
            name: body.name,
            description: body.description,
            executor: body.executor.unwrap_or_default(),
            env: body.env,
            default_timeout_s: body
                .default_timeout_s
                .unwrap_or(DEFAULT_TIMEOUT_S.min(cfg.max_timeout_s)),
            max_output_bytes: body.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
            max_concurrency: body.max_concurrency,
            allowed_commands: body.allowed_commands,
            network: body.network.unwrap_or_default(),
            limits: body.limits.unwrap_or_default(),
            allowed_secrets: body.allowed_secrets,
            command_retention_s: body.command_retention_s,
            output_retention_s: body.output_retention_s,
            max_file_bytes: body.max_file_bytes,
        })
    }
}

impl TryFrom<Checked<'_, UpdateProject, &Project>> for ProjectPatch {
    type Error = ApiError;

    fn try_from(
        Checked { body, cfg, current }: Checked<'_, UpdateProject, &Project>,
    ) -> ApiResult<Self> {
        let resulting = body.executor.as_ref().unwrap_or(&current.executor);
        let has_policy = match &body.allowed_commands {
            Some(policy) => policy.is_some(),
            None => current.allowed_commands.is_some(),
        };
        let mut errors = Vec::new();
        check_common(&body.fields(), cfg, resulting, has_policy, &mut errors);
        field_errors(errors)?;
        Ok(ProjectPatch {
            description: body.description,
            executor: body.executor,
            env: body.env,
            default_timeout_s: body.default_timeout_s,
            max_output_bytes: body.max_output_bytes,
            max_concurrency: body.max_concurrency,
            allowed_commands: body.allowed_commands,
            network: body.network,
            limits: body.limits,
            allowed_secrets: body.allowed_secrets,
            command_retention_s: body.command_retention_s,
            output_retention_s: body.output_retention_s,
            max_file_bytes: body.max_file_bytes,
        })
    }
}

impl CreateProject {
    fn fields(&self) -> Fields<'_> {
        Fields {
            description: Some(&self.description),
            executor: self.executor.as_ref(),
            env: Some(&self.env),
            default_timeout_s: self.default_timeout_s,
            max_output_bytes: self.max_output_bytes,
            max_concurrency: self.max_concurrency,
            allowed_commands: self.allowed_commands.as_deref(),
            network: self.network,
            limits: self.limits.as_ref(),
            allowed_secrets: self.allowed_secrets.as_deref(),
            command_retention_s: self.command_retention_s,
            output_retention_s: self.output_retention_s,
            max_file_bytes: self.max_file_bytes,
        }
    }

    /// What the request sets of what contains the new project's commands.
    pub(super) fn containment(&self) -> Containment<'_> {
        let requested = Containment::default_for().with(
            self.executor.as_ref(),
            Some(self.allowed_commands.as_deref()),
            self.network,
            self.limits.as_ref(),
            Some(self.allowed_secrets.as_deref()),
        );
        Containment {
            max_file_bytes: self.max_file_bytes,
            ..requested
        }
    }
}

impl UpdateProject {
    fn fields(&self) -> Fields<'_> {
        Fields {
            description: self.description.as_deref(),
            executor: self.executor.as_ref(),
            env: self.env.as_ref(),
            default_timeout_s: self.default_timeout_s,
            max_output_bytes: self.max_output_bytes,
            max_concurrency: self.max_concurrency.flatten(),
            allowed_commands: self.allowed_commands.as_ref().and_then(|a| a.as_deref()),
            network: self.network,
            limits: self.limits.as_ref(),
            allowed_secrets: self.allowed_secrets.as_ref().and_then(|a| a.as_deref()),
            command_retention_s: self.command_retention_s.flatten(),
            output_retention_s: self.output_retention_s.flatten(),
            max_file_bytes: self.max_file_bytes.flatten(),
        }
    }

    /// `project`'s containment with what the request sets applied.
    pub(super) fn containment<'a>(&'a self, project: &'a Project) -> Containment<'a> {
        let requested = Containment::of(project).with(
            self.executor.as_ref(),
            self.allowed_commands.as_ref().map(|a| a.as_deref()),
            self.network,
            self.limits.as_ref(),
            self.allowed_secrets.as_ref().map(|a| a.as_deref()),
        );
        Containment {
            max_file_bytes: self.max_file_bytes.unwrap_or(project.max_file_bytes),
            ..requested
        }
    }
}
