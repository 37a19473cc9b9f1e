//! Which pod a session goes to: the Running + Ready pods of the project's
//! selector that have the wanted container, the least busy (by this
//! process's open sessions) first, ties by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;

use super::KubeError;
use crate::domain::KubernetesSettings as KubeProject;

/// Distinct (namespace, selector) pod lists kept in the cache.
pub(super) const POD_CACHE_CAPACITY: u64 = 1024;

/// (namespace, pod) → sessions open there.
pub(super) type Busy = Arc<Mutex<HashMap<(String, String), usize>>>;

/// A pod as far as choosing one is concerned.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    name: String,
    ready: bool,
    containers: Vec<String>,
    /// Where sessions go when the project names no container: the
    /// `kubectl.kubernetes.io/default-container` annotation, else the first.
    default_container: Option<String>,
}

pub(super) fn candidate(pod: &Pod) -> Candidate {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .filter(|c| containers.contains(c));
    let default_container = annotated.or(containers.first()).cloned();
    Candidate {
        ready: running && ready && !terminating && !name.is_empty(),
        name,
        containers,
        default_container,
    }
}

/// Chooses a pod and counts the session against it until the slot drops.
pub(super) fn pick(
    busy: &Busy,
    project: &KubeProject,
    pods: &[Candidate],
) -> Result<Slot, KubeError> {
    let namespace = project.namespace.clone();
    let selector = project.selector.clone();
    if pods.is_empty() {
        return Err(KubeError::NoPod {
            namespace,
            selector,
        });
    }
    let mut ready: Vec<&Candidate> = pods.iter().filter(|p| p.ready).collect();
    if ready.is_empty() {
        return Err(KubeError::NotReady {
            namespace,
            selector,
            found: pods.len(),
        });
    }
    if let Some(container) = &project.container {
        ready.retain(|p| p.containers.iter().any(|c| c == container));
        if ready.is_empty() {
            return Err(KubeError::NoContainer {
                namespace,
                selector,
                container: container.clone(),
            });
        }
    }
    ready.sort_by(|a, b| a.name.cmp(&b.name));
    let mut counts = busy.lock().unwrap_or_else(|e| e.into_inner());
    let load = |p: &&&Candidate| {
        counts
            .get(&(namespace.clone(), p.name.clone()))
            .copied()
            .unwrap_or(0)
    };
    // `min_by_key` keeps the first of equals: the first by name.
    let Some(chosen) = ready.iter().min_by_key(load) else {
        return Err(KubeError::NotReady {
            namespace,
            selector,
            found: pods.len(),
        });
    };
    let key = (namespace, chosen.name.clone());
    *counts.entry(key.clone()).or_insert(0) += 1;
    Ok(Slot {
        busy: busy.clone(),
        key,
        container: project
            .container
            .clone()
            .or_else(|| chosen.default_container.clone()),
    })
}

/// One session counted against a pod; uncounted on drop.
pub struct Slot {
    busy: Busy,
    /// (namespace, pod).
    key: (String, String),
    /// The container to exec into (`None`: the API server's choice).
    container: Option<String>,
}

impl Slot {
    /// The chosen pod's name.
    pub fn pod(&self) -> &str {
        &self.key.1
    }

    /// The container sessions go to (`None`: the API server's choice).
    pub fn container(&self) -> Option<&str> {
        self.container.as_deref()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.remove(&self.key);
            }
        }
    }
}
