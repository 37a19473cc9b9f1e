//! Talking to a [`TestApp`]: requests read whole ([`Resp`]), the common
//! calls (create a project, run a command, wait for it), and SSE.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::app::TestApp;

/// A response read whole: status, headers, body.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts a problem+json error with this status.
    pub fn assert_problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["type"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["title"].as_str().is_some(), "{p}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        p
    }
}

impl TestApp {
    /// Creates a key through the API with the admin key; returns (id, secret).
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let r = self.post("/v1/api-keys", body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let k = r.json();
        (
            k["id"].as_str().expect("id").to_owned(),
            k["secret"].as_str().expect("secret").to_owned(),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("body");
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.http.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(
            reqwest::Method::GET,
            path,
            Some(&self.admin_key.clone()),
            None,
        )
        .await
    }

    /// Polls until the command has the given status.
    pub async fn wait_status(&self, id: &str, status: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c = self.get(&format!("/v1/commands/{id}")).await.json();
            if c["status"] == status {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "command {id} is {} not {status}",
                c["status"]
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.request(
            reqwest::Method::POST,
            path,
            Some(&self.admin_key.clone()),
            Some(body),
        )
        .await
    }

    pub async fn create_project(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({ "name": name, "executor": { "kind": "local", "workdir": name } });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let r = self.post("/v1/projects", body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    pub async fn run(&self, project: &str, body: Value) -> Value {
        let r = self
            .post(&format!("/v1/projects/{project}/commands"), body)
            .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Polls until the command is terminal (or panics after `limit`).
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c = self.get(&format!("/v1/commands/{id}")).await.json();
            let s = c["status"].as_str().unwrap_or_default().to_owned();
            if !matches!(s.as_str(), "queued" | "running") {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "command {id} still {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn output(&self, id: &str, stream: Option<&str>) -> Vec<u8> {
        let q = stream.map(|s| format!("?stream={s}")).unwrap_or_default();
        let r = self.get(&format!("/v1/commands/{id}/output{q}")).await;
        assert_eq!(r.status, 200);
        r.body.to_vec()
    }

    /// Reads SSE events until `end` (or until `stop_after` output events).
    pub async fn events(
        &self,
        id: &str,
        last_event_id: Option<i64>,
        stop_after: Option<usize>,
    ) -> Vec<Sse> {
        use eventsource_stream::Eventsource;
        let mut req = self
            .http
            .get(self.url(&format!("/v1/commands/{id}/events")))
            .bearer_auth(&self.admin_key);
        if let Some(l) = last_event_id {
            req = req.header("Last-Event-ID", l.to_string());
        }
        let resp = req.send().await.expect("sse");
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/event-stream")
        );
        let mut stream = resp.bytes_stream().eventsource();
        let mut out = Vec::new();
        let mut outputs = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.next()).await {
            let ev = ev.expect("sse parse");
            let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            let done = ev.event == "end";
            if ev.event == "output" {
                outputs += 1;
            }
            out.push(Sse {
                event: ev.event,
                id: ev.id,
                data,
            });
            if done || stop_after.is_some_and(|n| outputs >= n) {
                break;
            }
        }
        out
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: String,
    pub data: Value,
}

/// Concatenates the `data` of `output` events of one stream.
pub fn sse_text(events: &[Sse], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e.event == "output" && e.data["stream"] == stream)
        .map(|e| e.data["data"].as_str().unwrap_or_default())
        .collect()
}

/// Output events' seqs in order.
pub fn sse_seqs(events: &[Sse]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e.event == "output")
        .filter_map(|e| e.data["seq"].as_i64())
        .collect()
}
