//! The rendered objects: typed, labelled, with limits, probes, RBAC, PDBs,
//! HPAs and alerts; the project-access binding; the secret template.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{is_cluster_scoped, read, renders, repo, typed, yaml_docs};

const NAMESPACE: &str = "rdev";

const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "rdev");

/// Deployment → (port, port name).
const PORTS: [(&str, i32, &str); 3] = [
    ("rdev-api", 8080, "http"),
    ("rdev-worker", 9091, "metrics"),
    ("rdev-dispatcher", 9092, "metrics"),
];

fn of_kind<'a>(objs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objs.iter().filter(move |o| o["kind"] == kind)
}

fn by_name<T: DeserializeOwned>(objs: &[Value], kind: &str, name: &str) -> T {
    typed(
        of_kind(objs, kind)
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}")),
    )
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Every object parses as its type, carries the common label, and lives in
/// the rdev namespace unless it is cluster-scoped.
fn check_objects(objs: &[Value]) {
    for o in objs {
        let kind = o["kind"].as_str().expect("kind");
        match kind {
            "Namespace" => drop(typed::<Namespace>(o)),
            "ConfigMap" => drop(typed::<ConfigMap>(o)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(o)),
            "ClusterRole" => drop(typed::<ClusterRole>(o)),
            "Deployment" => drop(typed::<Deployment>(o)),
            "Service" => drop(typed::<Service>(o)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(o)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(o)),
            "HorizontalPodAutoscaler" => {
                assert_eq!(o["apiVersion"], "autoscaling/v2");
                drop(typed::<HorizontalPodAutoscaler>(o));
            }
            "PrometheusRule" | "ServiceMonitor" => {
                assert_eq!(o["apiVersion"], "monitoring.coreos.com/v1");
            }
            other => {
                panic!("unexpected kind {other} in the base (no Secret, no ClusterRoleBinding)")
            }
        }
        assert_eq!(
            o["metadata"]["labels"][PART_OF.0], PART_OF.1,
            "{kind} {} has the part-of label",
            o["metadata"]["name"]
        );
        if !is_cluster_scoped(kind) {
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{kind}");
        }
    }
}

/// The ConfigMap: JSON logs, no secrets, kubernetes executors only; returns
/// its data.
fn check_config(objs: &[Value]) -> BTreeMap<String, String> {
    let config: ConfigMap = by_name(objs, "ConfigMap", "rdev-config");
    let config = config.data.expect("config data");
    assert_eq!(
        config.get("RDEV_LOG_FORMAT").map(String::as_str),
        Some("json")
    );
    for secret in [
        "DATABASE_URL",
        "AMQP_URL",
        "RDEV_ENCRYPTION_KEYS",
        "RDEV_MIGRATE_DATABASE_URL",
    ] {
        assert!(
            !config.contains_key(secret),
            "{secret} belongs in the Secret"
        );
    }
    // Commands run in project pods, never in the worker's own pod (and the
    // API refuses local projects): docs/operations/security.md.
    assert_eq!(
        config.get("RDEV_EXECUTORS").map(String::as_str),
        Some("kubernetes")
    );
    let executors: rdev_shared::containment::ExecutorKinds = config["RDEV_EXECUTORS"]
        .parse()
        .expect("RDEV_EXECUTORS parses");
    assert!(!executors.allows(rdev_shared::containment::ExecutorKind::Local));
    config
}

/// Deployments: one per entry of `PORTS`, each with limits, probes, ports,
/// env, security, a Service, a PodDisruptionBudget and its service account.
fn check_deployments(objs: &[Value], config: &BTreeMap<String, String>) {
    let deployments: Vec<Deployment> = of_kind(objs, "Deployment").map(typed).collect();
    let names: BTreeSet<&str> = deployments
        .iter()
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();
    assert_eq!(names, PORTS.iter().map(|p| p.0).collect());
    for (name, port, port_name) in PORTS {
        let d: Deployment = by_name(objs, "Deployment", name);
        let spec = d.spec;
        let pod = spec.template.spec.expect("pod spec");
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        assert!(labels_match(
            &spec.selector.match_labels.clone().unwrap_or_default(),
            &labels
        ));
        let sc = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(sc.run_as_non_root, Some(true), "{name}");
        assert_eq!(pod.containers.len(), 1, "{name}");
        let c = &pod.containers[0];
        check_container(c, name, port, port_name);
        check_service_for(objs, name, port_name, &labels);
        check_pdb_for(objs, name, &labels);
        let sa = pod
            .service_account_name
            .as_deref()
            .expect("service account");
        check_workspace_mount(config, name, &pod, c);
        check_service_account(config, name, sa, &pod);
    }
}

/// The container: pinned image, requests and limits, probes on its port,
/// the named port, its listen address, config and secrets, and security.
fn check_container(c: &Container, name: &str, port: i32, port_name: &str) {
    assert!(
        c.image.as_deref().is_some_and(|i| i.contains(':')),
        "{name}: pinned tag"
    );
    let res = c.resources.as_ref().expect("resources");
    for (what, q) in [("requests", &res.requests), ("limits", &res.limits)] {
        let q = q.as_ref().unwrap_or_else(|| panic!("{name}: no {what}"));
        assert!(
            q.contains_key("cpu") && q.contains_key("memory"),
            "{name}: {what}"
        );
    }
    let probe_path_port = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let h = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        (h.path.clone().unwrap_or_default(), h.port.clone())
    };
    assert_eq!(
        probe_path_port(&c.liveness_probe),
        ("/health".to_owned(), IntOrString::Int(port)),
        "{name}"
    );
    assert_eq!(
        probe_path_port(&c.readiness_probe),
        ("/ready".to_owned(), IntOrString::Int(port)),
        "{name}"
    );
    let ports = c.ports.as_ref().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p.container_port == port && p.name.as_deref() == Some(port_name)),
        "{name}"
    );
    check_container_env(c, port);
    let csc = c
        .security_context
        .as_ref()
        .expect("container security context");
    assert_eq!(csc.allow_privilege_escalation, Some(false), "{name}");
    assert_eq!(csc.read_only_root_filesystem, Some(true), "{name}");
}

/// The container listens on all addresses on `port` and takes the config
/// and the secrets as its environment.
fn check_container_env(c: &Container, port: i32) {
    let env = c.env.as_ref().expect("env");
    let listen = env
        .iter()
        .find(|e| e.name == "RDEV_LISTEN")
        .expect("RDEV_LISTEN");
    assert_eq!(
        listen.value.as_deref(),
        Some(format!("0.0.0.0:{port}").as_str())
    );
    let from = c.env_from.as_ref().expect("envFrom");
    assert!(from.iter().any(|f| {
        f.config_map_ref
            .as_ref()
            .is_some_and(|r| r.name == "rdev-config")
    }));
    assert!(from.iter().any(|f| {
        f.secret_ref
            .as_ref()
            .is_some_and(|r| r.name == "rdev-secrets")
    }));
}

/// A Service for the deployment, whose target port names the container port.
fn check_service_for(
    objs: &[Value],
    name: &str,
    port_name: &str,
    labels: &BTreeMap<String, String>,
) {
    let svc = of_kind(objs, "Service")
        .map(typed::<Service>)
        .find(|s| {
            let sel = s
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            labels_match(&sel, labels)
        })
        .unwrap_or_else(|| panic!("no Service selects {name}"));
    let sp = &svc.spec.expect("spec").ports.expect("ports")[0];
    assert_eq!(sp.name.as_deref(), Some(port_name));
    assert_eq!(sp.target_port, Some(IntOrString::String(port_name.into())));
}

/// A PodDisruptionBudget for the deployment.
fn check_pdb_for(objs: &[Value], name: &str, labels: &BTreeMap<String, String>) {
    assert!(
        of_kind(objs, "PodDisruptionBudget")
            .map(typed::<PodDisruptionBudget>)
            .any(|p| {
                let sel = p
                    .spec
                    .and_then(|s| s.selector)
                    .and_then(|s| s.match_labels)
                    .unwrap_or_default();
                labels_match(&sel, labels)
            }),
        "no PodDisruptionBudget for {name}"
    );
}

/// The API and the worker mount RDEV_WORKSPACE_ROOT writable, on a bounded
/// volume.
fn check_workspace_mount(
    config: &BTreeMap<String, String>,
    name: &str,
    pod: &PodSpec,
    c: &Container,
) {
    // The API mounts RDEV_WORKSPACE_ROOT (files: staging) and its token
    // (files of kubernetes projects: exec into their pods).
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    if name == "rdev-api" || name == "rdev-worker" {
        let root = config
            .get("RDEV_WORKSPACE_ROOT")
            .expect("RDEV_WORKSPACE_ROOT");
        let m = mounts
            .iter()
            .find(|m| &m.mount_path == root)
            .unwrap_or_else(|| panic!("{name} mounts {root}"));
        assert_ne!(m.read_only, Some(true), "{name}: writable {root}");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .expect("the mounted volume");
        assert!(
            volume
                .empty_dir
                .as_ref()
                .is_some_and(|e| e.size_limit.is_some())
                || volume.persistent_volume_claim.is_some(),
            "{name}: {root} is a bounded emptyDir or a claim"
        );
    }
}

/// Each deployment's service account and token; the worker's grace period
/// outlasts its drain.
fn check_service_account(config: &BTreeMap<String, String>, name: &str, sa: &str, pod: &PodSpec) {
    let seconds = |k: &str| -> i64 { config[k].parse().expect("a number") };
    if name == "rdev-api" {
        assert_eq!(sa, "rdev-api");
        assert_eq!(pod.automount_service_account_token, Some(true), "{name}");
    } else if name == "rdev-worker" {
        assert_eq!(sa, "rdev-worker");
        let grace = pod.termination_grace_period_seconds.expect("grace period");
        assert!(
            grace > seconds("RDEV_DRAIN_S") + seconds("RDEV_KILL_GRACE_S"),
            "the worker's grace period ({grace}s) outlasts its drain"
        );
    } else {
        assert_eq!(pod.automount_service_account_token, Some(false), "{name}");
    }
}

/// RBAC: exactly pods get/list and pods/exec create, bound nowhere in the base.
fn check_rbac(objs: &[Value]) {
    let roles: Vec<ClusterRole> = of_kind(objs, "ClusterRole").map(typed).collect();
    assert_eq!(roles.len(), 1);
    let mut rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = roles[0]
        .rules
        .clone()
        .expect("rules")
        .into_iter()
        .map(|r| {
            assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect();
    rules.sort();
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        vec![
            (s(&[""]), s(&["pods"]), s(&["get", "list"])),
            (s(&[""]), s(&["pods/exec"]), s(&["create"])),
        ]
    );
}

/// HPA on the API's memory.
fn check_hpa(objs: &[Value]) {
    let hpa: HorizontalPodAutoscaler = by_name(objs, "HorizontalPodAutoscaler", "rdev-api");
    let spec = hpa.spec;
    assert_eq!(
        (
            spec.scale_target_ref.kind.as_str(),
            spec.scale_target_ref.name.as_str()
        ),
        ("Deployment", "rdev-api")
    );
    assert!(spec.min_replicas.unwrap_or(1) >= 2);
    let metrics = spec.metrics.expect("metrics");
    assert!(metrics.iter().any(|m| m.type_ == "Resource"
        && m.resource.as_ref().is_some_and(|r| r.name == "memory"
            && r.target.type_ == "Utilization"
            && r.target.average_utilization.is_some())));
}

/// NetworkPolicy: default deny of ingress.
fn check_network_policy(objs: &[Value]) {
    assert!(
        of_kind(objs, "NetworkPolicy")
            .map(typed::<NetworkPolicy>)
            .any(|p| {
                let spec = p.spec.unwrap_or_default();
                spec.pod_selector.unwrap_or_default() == Default::default()
                    && spec.policy_types == Some(vec!["Ingress".into()])
                    && spec.ingress.is_none()
            }),
        "a default-deny ingress policy"
    );
}

/// Monitoring CRDs: the alerts (the API's memory one in detail), each with
/// a runbook that exists.
fn check_alerts(objs: &[Value]) {
    let rule = of_kind(objs, "PrometheusRule")
        .next()
        .expect("PrometheusRule");
    let alerts: BTreeMap<&str, &Value> = rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .filter_map(|r| Some((r["alert"].as_str()?, r)))
        .collect();
    let memory = alerts["RdevAPIHighMemory"]["expr"].as_str().expect("expr");
    for needle in [
        "container_memory_working_set_bytes",
        "kube_pod_container_resource_limits",
        "resource=\"memory\"",
        "container=\"api\"",
        "> 0.8",
    ] {
        assert!(
            memory.contains(needle),
            "RdevAPIHighMemory: {needle} in {memory}"
        );
    }
    for name in [
        "RdevCommandQueueBacklog",
        "RdevOutboxBacklog",
        "RdevWebhookFailures",
        "RdevWorkerLost",
    ] {
        assert!(alerts.contains_key(name), "alert {name}");
    }
    for (name, alert) in &alerts {
        let url = alert["annotations"]["runbook_url"]
            .as_str()
            .expect("runbook_url");
        assert!(repo().join(url).is_file(), "{name}: runbook {url} exists");
    }
}

/// Monitoring CRDs: the ServiceMonitor scrapes the metrics ports.
fn check_service_monitor(objs: &[Value]) {
    let monitor = of_kind(objs, "ServiceMonitor")
        .next()
        .expect("ServiceMonitor");
    let endpoints: BTreeSet<(&str, &str)> = monitor["spec"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["port"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(endpoints, [("metrics", "/metrics")].into());
}

fn check_base(objs: &[Value]) {
    check_objects(objs);
    let config = check_config(objs);
    check_deployments(objs, &config);
    check_rbac(objs);
    check_hpa(objs);
    check_network_policy(objs);
    check_alerts(objs);
    check_service_monitor(objs);
}

#[test]
fn kustomize_base_renders_typed_objects_with_limits_probes_rbac_pdbs_hpa_and_alerts() {
    for (renderer, objs) in renders(&repo().join("deploy/k8s")) {
        eprintln!("checking {} objects from {renderer}", objs.len());
        check_base(&objs);
    }
}

#[test]
fn project_access_binds_the_worker_role_for_the_worker_and_the_api_in_one_namespace() {
    for (_, objs) in renders(&repo().join("deploy/k8s/project-access")) {
        assert_eq!(objs.len(), 1);
        let rb: RoleBinding = typed(&objs[0]);
        assert_eq!(rb.metadata.namespace.as_deref(), Some("my-project"));
        assert_eq!(
            (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
            ("ClusterRole", "rdev-worker-exec")
        );
        let subjects = rb.subjects.expect("subjects");
        let subjects: Vec<_> = subjects
            .iter()
            .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
            .collect();
        assert_eq!(
            subjects,
            [
                ("ServiceAccount", "rdev-worker", Some(NAMESPACE)),
                ("ServiceAccount", "rdev-api", Some(NAMESPACE))
            ]
        );
    }
}

#[test]
fn secret_template_holds_placeholders_only_and_is_not_applied() {
    let path = repo().join("deploy/k8s/secret.example.yaml");
    let docs = yaml_docs(&read(&path));
    assert_eq!(docs.len(), 2);
    // Every service's secrets; and the schema owner's URL, for the API only
    // (it applies migrations).
    for (doc, name, keys) in [
        (
            &docs[0],
            "rdev-secrets",
            ["AMQP_URL", "DATABASE_URL", "RDEV_ENCRYPTION_KEYS"].as_slice(),
        ),
        (
            &docs[1],
            "rdev-migrate-secrets",
            ["RDEV_MIGRATE_DATABASE_URL"].as_slice(),
        ),
    ] {
        let secret: Secret = typed(doc);
        assert_eq!(secret.metadata.name.as_deref(), Some(name));
        let data = secret.string_data.expect("stringData");
        assert_eq!(
            data.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            keys.iter().copied().collect()
        );
        for (k, v) in data {
            assert!(v.contains("CHANGE_ME"), "{k} is a placeholder");
        }
    }
    let k = yaml_docs(&read(&repo().join("deploy/k8s/kustomization.yaml")));
    let resources = k[0]["resources"].as_array().expect("resources");
    assert!(
        !resources.iter().any(|r| r == "secret.example.yaml"),
        "re-applying the base must not overwrite the real Secret"
    );
}
