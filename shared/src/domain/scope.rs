//! The permissions an API key can hold.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::UnknownValue;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
