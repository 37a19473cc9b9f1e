//! The final accounting: every accepted command ended once, none ran twice,
//! watchers saw every stored byte, every webhook event was delivered, and no
//! process of any command is left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::load::Submitted;
use crate::receiver::Received;
use crate::{Failures, fail};

fn terminal(status: Option<&str>) -> bool {
    matches!(
        status,
        Some("succeeded" | "failed" | "timed_out" | "cancelled")
    )
}

/// Polls every accepted command until all reached a terminal status (or
/// 180 s passed: the rest are stuck); returns each one's last state.
pub async fn settle(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    subs: &[Submitted],
    failures: &Failures,
) -> HashMap<String, Value> {
    let settle_by = Instant::now() + Duration::from_secs(180);
    let mut statuses: HashMap<String, Value> = HashMap::new();
    loop {
        let mut open = 0;
        for s in subs {
            if statuses
                .get(&s.id)
                .is_some_and(|c| !matches!(c["status"].as_str(), Some("queued" | "running")))
            {
                continue;
            }
            let c = http
                .get(format!("{api}/v1/commands/{}", s.id))
                .bearer_auth(admin)
                .send()
                .await;
            let c: Value = match c {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if !terminal(c["status"].as_str()) {
                open += 1;
            }
            statuses.insert(s.id.clone(), c);
        }
        if open == 0 || Instant::now() > settle_by {
            if open > 0 {
                for s in subs {
                    let st = &statuses[&s.id]["status"];
                    if !terminal(st.as_str()) {
                        fail(
                            failures,
                            format!("command {} ({}) stuck: {st}", s.id, s.project),
                        );
                    }
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    statuses
}

/// Commands by status, and those that did not succeed by reason.
pub fn tally(statuses: &HashMap<String, Value>) -> (BTreeMap<String, u32>, BTreeMap<String, u32>) {
    let mut by_status: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_reason: BTreeMap<String, u32> = BTreeMap::new();
    for c in statuses.values() {
        *by_status
            .entry(c["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        if c["status"] != "succeeded" {
            *by_reason
                .entry(c["reason"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    (by_status, by_reason)
}

/// None ran twice (and none succeeded without running): counts the marker
/// lines; returns how many ran.
pub fn ran_once(
    workspace: &Path,
    subs: &[Submitted],
    statuses: &HashMap<String, Value>,
    failures: &Failures,
) -> usize {
    let mut ran = 0;
    for s in subs {
        let marker = workspace.join(s.project).join(format!("ran.{}", s.token));
        let runs = std::fs::read_to_string(&marker)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        ran += usize::from(runs > 0);
        if runs > 1 {
            fail(failures, format!("command {} ran {runs} times", s.id));
        }
        if runs == 0 && statuses[&s.id]["status"] == "succeeded" {
            fail(
                failures,
                format!("command {} succeeded without running", s.id),
            );
        }
    }
    ran
}

/// Watchers that reached `end` saw every stored byte: returns how many were
/// compared, and how many of those (of a lost worker) also saw a tail that
/// was never stored.
pub async fn watchers(
    http: &reqwest::Client,
    api: &str,
    admin: &str,
    subs: &mut [Submitted],
    statuses: &HashMap<String, Value>,
    failures: &Failures,
) -> (u32, u32) {
    let mut checked = 0;
    let mut unstored_tails = 0;
    let mut watched = Vec::new();
    for s in subs {
        if let Some(h) = s.watched.take() {
            watched.push((s.id.clone(), h));
        }
    }
    for (id, h) in watched {
        let Ok(Some(seen)) = h.await else { continue };
        let stored = http
            .get(format!("{api}/v1/commands/{id}/output"))
            .bearer_auth(admin)
            .send()
            .await;
        let Ok(stored) = stored else {
            fail(failures, format!("cannot read the output of {id}"));
            continue;
        };
        let stored = stored.bytes().await.unwrap_or_default();
        checked += 1;
        // A worker that dies (or is reaped while cut off) may have published
        // its last chunks live and never stored them: the watcher then saw
        // a tail the database does not have. Every stored byte, in order,
        // is what must have arrived.
        let lost = statuses
            .get(&id)
            .is_some_and(|c| c["reason"] == "worker_lost");
        if stored.as_ref() != seen.as_slice() && lost && seen.starts_with(&stored) {
            unstored_tails += 1;
        } else if stored.as_ref() != seen.as_slice() {
            fail(
                failures,
                format!(
                    "watcher of {id} saw {} bytes, {} stored",
                    seen.len(),
                    stored.len()
                ),
            );
        }
    }
    (checked, unstored_tails)
}

/// What the webhook check counted.
pub struct Webhooks {
    pub events: usize,
    pub missing: usize,
    pub dups: usize,
}

/// The lifecycle events written for the receiver (one delivery row per
/// event): (event id, type, command id).
async fn written_events(pool: &rdev_shared::db::Pool) -> Vec<(String, String, String)> {
    let client = pool.get().await.expect("db");
    client
        .query(
            "SELECT DISTINCT ON (event_id) payload FROM webhook_deliveries ORDER BY event_id",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .filter_map(|r| {
            let p: Vec<u8> = r.get(0);
            let v: Value = serde_json::from_slice(&p).ok()?;
            Some((
                v["id"].as_str()?.to_owned(),
                v["type"].as_str()?.to_owned(),
                v["data"]["id"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Every event delivered at least once (waiting up to 120 s for the
/// retries), duplicates with the same body, and one terminal event type per
/// command.
pub async fn webhooks(
    pool: &rdev_shared::db::Pool,
    received: &Arc<Mutex<Received>>,
    failures: &Failures,
) -> Webhooks {
    let events = written_events(pool).await;
    let deliver_by = Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let missing: Vec<&(String, String, String)> = {
            let got = received.lock().expect("received");
            events
                .iter()
                .filter(|(id, _, _)| !got.by_id.contains_key(id))
                .collect()
        };
        if missing.is_empty() || Instant::now() > deliver_by {
            break missing;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for (id, kind, cmd) in &missing {
        fail(
            failures,
            format!("event {id} ({kind} of {cmd}) never delivered"),
        );
    }
    let (dups, mismatched) = {
        let got = received.lock().expect("received");
        (
            got.by_id.values().filter(|(_, n)| *n > 1).count(),
            got.by_id.values().filter(|(b, _)| b.len() > 1).count(),
        )
    };
    if mismatched > 0 {
        fail(
            failures,
            format!("{mismatched} webhook-ids arrived with different bodies"),
        );
    }
    one_terminal_type(&events, failures);
    Webhooks {
        events: events.len(),
        missing: missing.len(),
        dups,
    }
}

/// One terminal event type per command.
fn one_terminal_type(events: &[(String, String, String)], failures: &Failures) {
    let mut terminal: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (_, kind, cmd) in events {
        if kind != "command.started" {
            terminal
                .entry(cmd.as_str())
                .or_default()
                .insert(kind.as_str());
        }
    }
    for (cmd, kinds) in &terminal {
        if kinds.len() > 1 {
            fail(
                failures,
                format!("command {cmd} has terminal events {kinds:?}"),
            );
        }
    }
}

/// The processes (not zombies) of any command still alive: those whose
/// command line names the workspace or a command's token.
pub fn processes_left(workspace: &Path, subs: &[Submitted]) -> Vec<String> {
    let mut left = Vec::new();
    let me = std::process::id();
    let workspace_text = workspace.display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let zombie = rdev_tests::process_gone(pid as i32);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = text.contains(&workspace_text)
            || subs
                .iter()
                .any(|s| text.contains(&format!(".77{}", s.token)));
        if ours && !zombie {
            left.push(format!("{pid}: {text}"));
        }
    }
    left
}
