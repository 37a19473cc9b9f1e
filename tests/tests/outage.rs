//! Outages of RabbitMQ and PostgreSQL. These stop and restart the shared
//! services, so they live in their own test binary (cargo runs test
//! binaries one after another) and in one test function (run serially);
//! a guard restarts each service even when an assertion fails.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rdev_tests::{Options, spawn_app_with};
use serde_json::json;

fn sh(cmd: &str) {
    let status = rdev_tests::spawn_std(Command::new("sh").arg("-c").arg(cmd))
        .and_then(|mut c| c.wait())
        .expect("sh");
    assert!(status.success(), "`{cmd}` failed");
}

/// Starts RabbitMQ again when dropped (also on panic).
struct BrokerBack;
impl Drop for BrokerBack {
    fn drop(&mut self) {
        let _ = rdev_tests::spawn_std(Command::new("rabbitmqctl").arg("start_app"))
            .and_then(|mut c| c.wait());
    }
}

fn pg_restart() {
    sh(
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | sort -V | tail -1) main restart",
    );
}

#[tokio::test]
async fn broker_and_database_outages_lose_nothing() {
    let app = spawn_app_with(Options {
        dispatcher: true,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    // Commands write only in their project's workdir (`p`).
    let runs = app.workspace.join("p/runs");

    // --- RabbitMQ stops for 10 s while 200 commands are accepted. ---
    let guard = BrokerBack;
    sh("rabbitmqctl -q stop_app");
    let stopped = Instant::now();
    let mut ids = Vec::new();
    for i in 0..200 {
        let c = app
            .run("p", json!({"command": format!("echo {i} >> runs")}))
            .await;
        ids.push(c["id"].as_str().expect("id").to_owned());
    }
    let accepted_in = stopped.elapsed();
    let ready = app.send(app.http.get(app.url("/ready"))).await;
    assert_eq!(ready.status, 503, "/ready reports the outage");
    assert_eq!(ready.json()["rabbitmq"], "unavailable");
    let remaining = Duration::from_secs(10).saturating_sub(stopped.elapsed());
    tokio::time::sleep(remaining).await;
    sh("rabbitmqctl -q start_app");
    drop(guard);
    let back = Instant::now();
    for id in &ids {
        let c = app.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(c["status"], "succeeded", "{c}");
    }
    let drained_in = back.elapsed();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&runs).expect("runs").lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    assert_eq!(counts.len(), 200, "every command ran");
    assert!(
        counts.values().all(|&n| n == 1),
        "a command ran twice: {counts:?}"
    );
    println!(
        "broker outage: 200 commands accepted in {accepted_in:?} while down; all finished {drained_in:?} after the broker returned"
    );

    // --- PostgreSQL restarts; API, worker and dispatcher keep serving. ---
    pg_restart();
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.send(app.http.get(app.url("/ready"))).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "API not ready after PostgreSQL restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = app.run("p", json!({"command": "echo after-restart"})).await;
    let c = app
        .wait_terminal(c["id"].as_str().expect("id"), Duration::from_secs(60))
        .await;
    assert_eq!(c["status"], "succeeded");
    assert_eq!(
        app.output(c["id"].as_str().expect("id"), None).await,
        b"after-restart\n"
    );
    println!(
        "postgres restart: a command ran {:?} after the restart",
        restarted.elapsed()
    );
}
