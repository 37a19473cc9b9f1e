//! `rdev bench`: load generators and latency probes against a live rdev.
//!
//! Each scenario prints one report: a table for people, or JSON with
//! `--json`. Latencies are exact percentiles over every sample (sorted),
//! not a histogram's approximations; sample counts here stay in the
//! millions at most. Server-side durations come from the timestamps in the
//! API's command JSON, so they do not depend on how often we poll.
//! All randomness of the workload (the priorities of enqueued commands)
//! comes from `--seed`, so two runs enqueue the same sequence.

pub mod e2e;
pub mod enqueue;
pub mod interactive;
pub mod sse;
pub mod stats;
pub mod webhooks;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::args::{BenchArgs, BenchCmd};
use crate::client::{Client, ClientError};
use crate::output::{Style, Table, out, print_json};
use crate::units::seg;

/// Runs one scenario and prints its report.
pub async fn bench(client: &Client, style: &Style, a: &BenchArgs) -> Result<i32, ClientError> {
    ensure_project(client, &a.project).await?;
    let rng = StdRng::seed_from_u64(a.seed);
    let report = match &a.scenario {
        BenchCmd::Enqueue(s) => enqueue::run(client, &a.project, rng, s).await?,
        BenchCmd::E2e(s) => e2e::run(client, &a.project, rng, s).await?,
        BenchCmd::Sse(s) => sse::run(client, &a.project, s).await?,
        BenchCmd::Interactive(s) => interactive::run(client, &a.project, s).await?,
        BenchCmd::Webhooks(s) => webhooks::run(client, &a.project, rng, s).await?,
    };
    let ok = report.ok;
    report.print(style, a.seed);
    Ok(if ok { 0 } else { 1 })
}

/// Creates the benchmark project unless it exists.
async fn ensure_project(client: &Client, name: &str) -> Result<(), ClientError> {
    match client
        .get(&format!("/v1/projects/{}", seg(name)), &[])
        .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Api { status: 404, .. }) => {
            let body = json!({
                "name": name,
                "description": "created by `rdev bench`",
                "executor": {"kind": "local"},
            });
            match client.post("/v1/projects", &body).await {
                Ok(_) | Err(ClientError::Api { status: 409, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// `POST /v1/projects/{p}/commands` of `body`; the created command.
pub(crate) async fn enqueue(
    client: &Client,
    project: &str,
    body: &Value,
) -> Result<Value, ClientError> {
    client
        .post(&format!("/v1/projects/{}/commands", seg(project)), body)
        .await
}

/// The body of a trivial command at a seeded priority.
pub(crate) fn trivial(rng: &mut StdRng, command: &str) -> Value {
    use rand::Rng;
    json!({ "command": command, "priority": rng.random_range(0..=9) })
}

/// Reads `process_resident_memory_bytes` from the API's `/metrics`
/// (`metrics_url`, or `{base}/metrics`).
pub(crate) async fn api_rss(client: &Client, metrics_url: Option<&str>) -> Option<u64> {
    let url = metrics_url.map_or_else(|| format!("{}/metrics", client.base_url()), str::to_owned);
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let text = resp.text().await.ok()?;
    parse_metric(&text, "process_resident_memory_bytes").map(|v| v as u64)
}

/// The value of a metric in Prometheus text format: its first sample,
/// whatever its labels (`name 1` or `name{service="rdev-api"} 1`).
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        let k = k.split_once('{').map_or(k, |(k, _)| k);
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// A scenario's result: parameters, named figures, and whether it passed
/// its own checks (every byte delivered, no errors).
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// What was asked for.
    pub params: Value,
    /// Figures in display order: (name, value, unit).
    pub figures: Vec<(String, f64, &'static str)>,
    /// Extra structured results (errors by status, …).
    pub extra: Value,
    /// Whether the run met its correctness checks.
    pub ok: bool,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &'static str, params: Value) -> Self {
        Self {
            scenario,
            params,
            figures: Vec::new(),
            extra: json!({}),
            ok: true,
        }
    }

    /// Appends a figure.
    pub fn fig(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push((name.into(), value, unit));
    }

    /// Appends the percentiles of `samples` (milliseconds) as `name.p50` …
    pub fn latency(&mut self, name: &str, samples: &mut [f64]) {
        let s = stats::Summary::of(samples);
        self.fig(format!("{name}.count"), s.count as f64, "");
        for (k, v) in [
            ("p50", s.p50),
            ("p90", s.p90),
            ("p99", s.p99),
            ("max", s.max),
        ] {
            self.fig(format!("{name}.{k}"), v, "ms");
        }
    }

    /// The report as JSON.
    pub fn to_json(&self, seed: u64) -> Value {
        let figures: serde_json::Map<String, Value> = self
            .figures
            .iter()
            .map(|(k, v, _)| (k.clone(), json!(v)))
            .collect();
        json!({
            "scenario": self.scenario,
            "seed": seed,
            "params": self.params,
            "figures": figures,
            "extra": self.extra,
            "ok": self.ok,
        })
    }

    fn print(&self, style: &Style, seed: u64) {
        if style.json {
            return print_json(&self.to_json(seed));
        }
        let mut t = Table::new(&["FIGURE", "VALUE", "UNIT"]);
        for (k, v, unit) in &self.figures {
            t.row(vec![k.clone(), format_value(*v), (*unit).to_owned()]);
        }
        out(&format!(
            "rdev bench {} (seed {seed}) {}\n{}",
            self.scenario,
            self.params,
            t.render(style)
        ));
        if self.extra.as_object().is_some_and(|o| !o.is_empty()) {
            out(&format!("{}\n", self.extra));
        }
        out(if self.ok {
            "checks: ok\n"
        } else {
            "checks: FAILED\n"
        });
    }
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_prometheus_text() {
        let text = "# HELP process_resident_memory_bytes x\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes{service=\"rdev-api\"} 1.2345e7\n\
                    other 1\n";
        assert_eq!(
            parse_metric(text, "process_resident_memory_bytes"),
            Some(12_345_000.0)
        );
        assert_eq!(parse_metric(text, "missing"), None);
        assert_eq!(parse_metric("other 2\n", "other"), Some(2.0));
    }
}
