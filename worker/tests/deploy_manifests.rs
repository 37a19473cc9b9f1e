//! deploy/: the kustomize base renders, every object parses into its typed
//! `k8s-openapi` struct (the Prometheus Operator CRDs as JSON), and the
//! properties operations rely on hold. The base is rendered twice when
//! `kubectl` is installed: by `kubectl kustomize` (the real renderer) and by
//! the small renderer below (namespace, labels, images: all the base uses);
//! both renders must agree and pass the same checks. Also static checks of
//! the Dockerfile and the compose file (no Docker engine here).
//!
//! This file holds the renderers and readers; `deploy_manifests/kustomize.rs`
//! the checks of the rendered objects, `deploy_manifests/docker.rs` those
//! of the Dockerfile and the compose file.

#[path = "deploy_manifests/docker.rs"]
mod docker;
#[path = "deploy_manifests/kustomize.rs"]
mod kustomize;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every non-empty document of a multi-document YAML text, merge keys applied.
fn yaml_docs(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let mut v = serde_yaml_ng::Value::deserialize(doc).expect("valid YAML");
        v.apply_merge().expect("merge keys");
        if v.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(&v).expect("YAML maps to JSON"));
    }
    docs
}

fn typed<T: DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {}: {e}",
            v["kind"],
            v["metadata"]["name"].as_str().unwrap_or("?")
        )
    })
}

fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
    )
}

/// Renders a kustomization that uses only `resources`, `namespace`,
/// `labels` (metadata only) and `images`.
fn render(dir: &Path) -> Vec<Value> {
    let k = yaml_docs(&read(&dir.join("kustomization.yaml")))
        .pop()
        .expect("kustomization");
    for key in k.as_object().expect("kustomization map").keys() {
        assert!(
            [
                "apiVersion",
                "kind",
                "namespace",
                "labels",
                "resources",
                "images"
            ]
            .contains(&key.as_str()),
            "the test renderer does not know `{key}`; extend it or install kubectl"
        );
    }
    let namespace = k["namespace"].as_str();
    let mut labels = serde_json::Map::new();
    for set in k["labels"].as_array().into_iter().flatten() {
        assert!(
            set.get("includeSelectors").is_none() && set.get("includeTemplates").is_none(),
            "the test renderer only adds labels to metadata"
        );
        labels.extend(set["pairs"].as_object().expect("pairs").clone());
    }
    let images: BTreeMap<&str, &Value> = k["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| (i["name"].as_str().expect("image name"), i))
        .collect();
    let mut out = Vec::new();
    for res in k["resources"].as_array().expect("resources") {
        let file = dir.join(res.as_str().expect("resource path"));
        for mut obj in yaml_docs(&read(&file)) {
            let kind = obj["kind"].as_str().expect("kind").to_owned();
            let meta = obj["metadata"].as_object_mut().expect("metadata");
            if let Some(ns) = namespace
                && !is_cluster_scoped(&kind)
            {
                meta.insert("namespace".into(), ns.into());
            }
            if !labels.is_empty() {
                let l = meta
                    .entry("labels")
                    .or_insert_with(|| Value::Object(Default::default()));
                l.as_object_mut().expect("labels").extend(labels.clone());
            }
            if kind == "Deployment" {
                let containers = obj["spec"]["template"]["spec"]["containers"]
                    .as_array_mut()
                    .expect("containers");
                for c in containers {
                    let image = c["image"].as_str().expect("image").to_owned();
                    if let Some(i) = images.get(image.as_str()) {
                        let name = i["newName"].as_str().unwrap_or(&image);
                        let tag = i["newTag"].as_str().map(|t| format!(":{t}"));
                        c["image"] = format!("{name}{}", tag.unwrap_or_default()).into();
                    }
                }
            }
            out.push(obj);
        }
    }
    out
}

/// `kubectl kustomize dir`, or `None` when kubectl is not installed.
fn kubectl_render(dir: &Path) -> Option<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(yaml_docs(&String::from_utf8(out.stdout).expect("utf-8")))
}

fn renders(dir: &Path) -> Vec<(&'static str, Vec<Value>)> {
    let ours = render(dir);
    let mut all = Vec::new();
    if let Some(theirs) = kubectl_render(dir) {
        let ids = |objs: &[Value]| -> BTreeSet<String> {
            objs.iter()
                .map(|o| {
                    format!(
                        "{}/{}/{}",
                        o["kind"].as_str().unwrap_or(""),
                        o["metadata"]["namespace"].as_str().unwrap_or(""),
                        o["metadata"]["name"].as_str().unwrap_or("")
                    )
                })
                .collect()
        };
        assert_eq!(
            ids(&theirs),
            ids(&ours),
            "kubectl and the test renderer agree"
        );
        all.push(("kubectl kustomize", theirs));
    } else {
        eprintln!("kubectl not installed: checking the test renderer's output only");
    }
    all.push(("test renderer", ours));
    all
}
