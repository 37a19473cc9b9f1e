//! Compiled `allowed_commands` policies, so a project's regexes are built
//! once per version of the project, not on every enqueue.
//!
//! Keyed by (project id, `updated_at`): an update makes a new key, so a
//! stale policy is never used; old versions age out. Bounded (moka).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdev_shared::domain::Project;
use rdev_shared::policy::Policy;
use uuid::Uuid;

/// Most policies held per instance.
pub const CAPACITY: u64 = 10_000;
/// A policy not used for this long is dropped.
const IDLE: Duration = Duration::from_secs(600);

/// The per-instance policy cache.
pub struct PolicyCache {
    inner: moka::future::Cache<(Uuid, DateTime<Utc>), Arc<Policy>>,
}

impl PolicyCache {
    /// An empty cache.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(IDLE)
                .build(),
        })
    }

    /// The project's compiled policy; `None` when it has none (any command).
    pub async fn get(&self, project: &Project) -> Option<Arc<Policy>> {
        let patterns = project.allowed_commands.as_ref()?;
        Some(
            self.inner
                .get_with((project.id, project.updated_at), async {
                    Arc::new(Policy::compile(patterns))
                })
                .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdev_shared::domain::CommandSpec;

    fn project(rules: Option<Vec<String>>, updated_at: DateTime<Utc>) -> Project {
        Project {
            id: Uuid::from_u128(7),
            name: "p".into(),
            description: String::new(),
            executor: Default::default(),
            env: Default::default(),
            default_timeout_s: 60,
            max_output_bytes: 1024,
            max_concurrency: None,
            allowed_commands: rules,
            network: Default::default(),
            limits: Default::default(),
            allowed_secrets: None,
            command_retention_s: None,
            output_retention_s: None,
            max_file_bytes: None,
            created_at: updated_at,
            updated_at,
        }
    }

    #[tokio::test]
    async fn a_policy_is_compiled_once_per_project_version() {
        let cache = PolicyCache::new();
        let t0 = Utc::now();
        let p = project(Some(vec!["re:^make( [a-z]+)?$".into()]), t0);
        let a = cache.get(&p).await.expect("policy");
        let b = cache.get(&p).await.expect("policy");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second enqueue reuses the compiled regexes"
        );
        assert!(a.check(&CommandSpec::Shell("make test".into())).is_ok());
        let changed = project(
            Some(vec!["argv0:cargo".into()]),
            t0 + chrono::Duration::seconds(1),
        );
        let c = cache.get(&changed).await.expect("policy");
        assert!(
            !Arc::ptr_eq(&a, &c),
            "an updated project gets its new rules"
        );
        assert!(c.check(&CommandSpec::Shell("make test".into())).is_err());
        assert!(cache.get(&project(None, t0)).await.is_none());
    }
}
