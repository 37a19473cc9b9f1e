//! Static checks of the Dockerfile and the compose file (no Docker engine
//! here).

use std::collections::BTreeSet;

use super::{read, repo, yaml_docs};

/// Stage names of a Dockerfile (`FROM … AS name`).
fn stages(dockerfile: &str) -> BTreeSet<String> {
    dockerfile
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [from, _, as_, name]
                    if from.eq_ignore_ascii_case("FROM") && as_.eq_ignore_ascii_case("AS") =>
                {
                    Some((*name).to_owned())
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn dockerfile_builds_every_binary_into_non_root_images() {
    let text = read(&repo().join("deploy/Dockerfile"));
    let stages = stages(&text);
    for stage in [
        "builder",
        "runtime",
        "api",
        "worker",
        "dispatcher",
        "cli",
        "all",
    ] {
        assert!(stages.contains(stage), "stage {stage}");
    }
    // Each package built exists in the workspace, and each binary copied is built.
    for (package, dir, binary) in [
        ("rdev-api", "api", "rdev-api"),
        ("rdev-worker", "worker", "rdev-worker"),
        ("rdev-dispatcher", "dispatcher", "rdev-dispatcher"),
        ("rdev-cli", "cli", "rdev"),
    ] {
        assert!(
            text.contains(&format!("-p {package}")),
            "{package} is built"
        );
        let manifest = read(&repo().join(dir).join("Cargo.toml"));
        assert!(
            manifest.contains(&format!("name = \"{package}\"")),
            "{dir} is {package}"
        );
        assert!(
            text.contains(&format!("target/release/{binary}")),
            "{binary} is copied"
        );
    }
    assert!(text.contains("--locked"), "builds from Cargo.lock");
    // The worker's sandbox: bubblewrap and the init beside the worker.
    assert!(
        text.contains("target/release/rdev-sandbox-init"),
        "the sandbox init is copied"
    );
    assert!(
        text.contains("rdev-sandbox-init /usr/local/bin/"),
        "into the worker image"
    );
    assert!(text.contains("bubblewrap"), "bubblewrap is installed");
    let users: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .collect();
    assert!(!users.is_empty(), "a USER instruction");
    for u in users {
        let uid = u.split(':').next().unwrap_or(u).trim();
        assert!(uid != "0" && uid != "root", "non-root user, got {u}");
    }
    let ignore = read(&repo().join(".dockerignore"));
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target")
    );
}

#[test]
fn compose_file_runs_postgres_rabbitmq_and_the_three_services() {
    let docs = yaml_docs(&read(&repo().join("deploy/compose/docker-compose.yml")));
    assert_eq!(docs.len(), 1);
    let services = docs[0]["services"].as_object().expect("services");
    assert_eq!(
        services.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ["api", "dispatcher", "postgres", "rabbitmq", "worker"].into()
    );
    let dockerfile_stages = stages(&read(&repo().join("deploy/Dockerfile")));
    for (name, port) in [("api", 8080), ("worker", 9091), ("dispatcher", 9092)] {
        let s = &services[name];
        assert_eq!(s["build"]["dockerfile"], "deploy/Dockerfile", "{name}");
        let target = s["build"]["target"].as_str().expect("target");
        assert!(dockerfile_stages.contains(target), "{name}: stage {target}");
        let env = &s["environment"];
        assert_eq!(env["RDEV_LISTEN"], format!("0.0.0.0:{port}"), "{name}");
        for var in ["DATABASE_URL", "AMQP_URL"] {
            let url = env[var].as_str().unwrap_or_else(|| panic!("{name}: {var}"));
            assert!(
                url.contains("@postgres:") || url.contains("@rabbitmq:"),
                "{name}: {var}"
            );
        }
        for dep in ["postgres", "rabbitmq"] {
            assert_eq!(
                s["depends_on"][dep]["condition"], "service_healthy",
                "{name} waits for {dep}"
            );
        }
    }
    // The files API of local projects serves the workers' volume.
    for name in ["api", "worker"] {
        let s = &services[name];
        let root = s["environment"]["RDEV_WORKSPACE_ROOT"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: RDEV_WORKSPACE_ROOT"));
        assert!(
            s["volumes"]
                .as_array()
                .is_some_and(|v| v.iter().any(|m| m == &format!("workspaces:{root}"))),
            "{name} mounts the workspaces volume at {root}"
        );
    }
    for infra in ["postgres", "rabbitmq"] {
        assert!(
            services[infra]["healthcheck"].is_object(),
            "{infra} healthcheck"
        );
    }
}
