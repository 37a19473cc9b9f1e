//! The HTTP client of the rdev API: bearer auth, and problem+json errors
//! turned into messages a person can act on.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Settings;

/// Limit for ordinary (non-streaming) requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What talking to the API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP/TLS connection could be made.
    #[error("cannot reach rdev at {url}: {reason} — is rdev-api running?")]
    Unreachable {
        /// The base URL.
        url: String,
        /// `connection refused`, `timed out`, …
        reason: String,
    },
    /// 401.
    #[error("unauthorized: {detail} (set --api-key, RDEV_API_KEY or a profile's api_key)")]
    Unauthorized {
        /// The server's explanation.
        detail: String,
    },
    /// 403.
    #[error("forbidden: {detail}")]
    Forbidden {
        /// The server's explanation.
        detail: String,
    },
    /// Any other error answer.
    #[error("{}", render_problem(*status, title, detail, errors))]
    Api {
        /// HTTP status.
        status: u16,
        /// Problem title.
        title: String,
        /// Problem detail.
        detail: String,
        /// Field errors of a validation failure.
        errors: Vec<FieldError>,
    },
    /// The connection broke or the answer was unreadable.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The URL requested.
        url: String,
        /// Why.
        reason: String,
    },
    /// Something on this side failed (the terminal, a bad URL).
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// Whether trying again later may succeed (connection trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// One `errors[]` entry of a problem.
#[derive(Debug, Clone, Deserialize)]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    errors: Vec<FieldError>,
}

fn render_problem(status: u16, title: &str, detail: &str, errors: &[FieldError]) -> String {
    let mut s = format!("{title} ({status})");
    if errors.is_empty() {
        if !detail.is_empty() {
            s.push_str(": ");
            s.push_str(detail);
        }
    } else {
        for e in errors {
            s.push_str(&format!("\n  {}: {}", e.field, e.message));
        }
    }
    s
}

/// A configured API client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
}

impl Client {
    /// Builds a client for these settings.
    pub fn new(settings: Settings) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("rdev-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Transport {
                url: settings.url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { http, settings })
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &str {
        &self.settings.url
    }

    /// The API key, if one is configured.
    pub fn api_key(&self) -> Option<&str> {
        self.settings.api_key.as_ref().map(|k| k.expose())
    }

    /// A request to `path` (starting with `/`) with the bearer key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.settings.url));
        match &self.settings.api_key {
            Some(k) => req.bearer_auth(k.expose()),
            None => req,
        }
    }

    /// Sends and checks the status; the body is left to the caller.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(problem(resp).await)
        }
    }

    /// Sends with the ordinary timeout and reads a JSON answer (`null` for 204).
    pub async fn send_json(&self, req: RequestBuilder) -> Result<Value, ClientError> {
        let resp = self.send(req.timeout(REQUEST_TIMEOUT)).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let url = resp.url().to_string();
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Transport {
            url,
            reason: format!("the answer is not JSON: {e}"),
        })
    }

    /// `GET path?query` → JSON.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.send_json(self.request(Method::GET, path).query(query))
            .await
    }

    /// `POST path` with a JSON body → JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send_json(self.request(Method::POST, path).json(body))
            .await
    }

    /// `DELETE path` → JSON (usually `null`).
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send_json(self.request(Method::DELETE, path)).await
    }

    /// Maps a reqwest failure; connection failures name the base URL.
    pub fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            return ClientError::Unreachable {
                url: self.settings.url.clone(),
                reason: connect_reason(&e),
            };
        }
        let url = e
            .url()
            .map_or_else(|| self.settings.url.clone(), ToString::to_string);
        let reason = if e.is_timeout() {
            "timed out".to_owned()
        } else {
            innermost(&e)
        };
        ClientError::Transport { url, reason }
    }
}

/// The deepest cause's message: reqwest's own is "error sending request".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn connect_reason(e: &reqwest::Error) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        cur = err.source();
    }
    if e.is_timeout() {
        "connection timed out".to_owned()
    } else {
        innermost(e)
    }
}

/// Turns an error answer into a [`ClientError`], reading problem+json when
/// the server sent it and falling back to the status line otherwise.
async fn problem(resp: Response) -> ClientError {
    let status = resp.status();
    let path = resp.url().path().to_owned();
    let body = resp.bytes().await.unwrap_or_default();
    ClientError::from_problem(status.as_u16(), &path, &body)
}

impl ClientError {
    /// The error for an answer `status` with `body` (problem+json, or any
    /// text) to a request for `path`.
    pub fn from_problem(status: u16, path: &str, body: &[u8]) -> ClientError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        problem_of(status, path, body)
    }
}

fn problem_of(status: StatusCode, path: &str, body: &[u8]) -> ClientError {
    let p: Problem = serde_json::from_slice(body).unwrap_or_default();
    let title = p
        .title
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let detail = p.detail.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        text.chars().take(500).collect::<String>().trim().to_owned()
    });
    // The router's fallback: the server predates this endpoint.
    let detail = if status == StatusCode::NOT_FOUND && detail == "no such route" {
        format!("{path} is not served by this rdev-api (is it older than this CLI?)")
    } else {
        detail
    };
    match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized { detail },
        StatusCode::FORBIDDEN => ClientError::Forbidden { detail },
        _ => ClientError::Api {
            status: status.as_u16(),
            title,
            detail,
            errors: p.errors,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_problems_list_each_field() {
        let e = ClientError::Api {
            status: 422,
            title: "Validation Failed".into(),
            detail: "priority: must be 0-9".into(),
            errors: vec![FieldError {
                field: "priority".into(),
                message: "must be 0-9".into(),
            }],
        };
        assert_eq!(
            e.to_string(),
            "Validation Failed (422)\n  priority: must be 0-9"
        );
    }

    #[test]
    fn unreachable_says_what_to_check() {
        let e = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach rdev at http://127.0.0.1:1: connection refused — is rdev-api running?"
        );
    }
}
