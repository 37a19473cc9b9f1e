//! Where a project's commands run: the executor settings stored with a
//! project (what the worker's executors read), and their checks.

use serde::{Deserialize, Serialize};

use super::validate::{FieldError, validate_project_name, validate_workdir};
use crate::containment::{ExecutorKind, ExecutorKinds};

/// Where a project's commands run (`kind` selects the executor).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecutorConfig {
    /// A child process of the worker, in a directory under the workspace root.
    Local(LocalSettings),
    /// `exec` into a pod chosen by label selector.
    Kubernetes(KubernetesSettings),
}

/// Settings of the `local` executor.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Directory relative to the workspace root; defaults to the project's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// Settings of the `kubernetes` executor.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
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
        Self::Local(LocalSettings::default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_config_rejects_unknown_fields() {
        let ok: ExecutorConfig =
            serde_json::from_str(r#"{"kind":"local","workdir":"x"}"#).expect("valid");
        assert_eq!(
            ok,
            ExecutorConfig::Local(LocalSettings {
                workdir: Some("x".into())
            })
        );
        assert!(serde_json::from_str::<ExecutorConfig>(r#"{"kind":"local","wd":"x"}"#).is_err());
        assert!(serde_json::from_str::<ExecutorConfig>(r#"{"kind":"ssh"}"#).is_err());
    }
}
