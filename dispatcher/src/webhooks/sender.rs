//! The HTTP side of a delivery: a reqwest client that never follows
//! redirects, uses no proxy, resolves names through a resolver that drops
//! internal addresses (so the address connected to is the address checked:
//! no DNS-rebinding window), signs each attempt, and reads at most
//! [`EXCERPT_BYTES`] of the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdev_shared::netguard;
use rdev_shared::webhook_sign;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::schedule::parse_retry_after;

/// Bytes of a response body kept for the delivery log.
pub const EXCERPT_BYTES: usize = 20 * 1024;

/// Resolves names and keeps only addresses webhooks may reach.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = netguard::filter_allowed(addrs, allow_private, &host)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Builds the delivery client.
pub fn client(timeout: Duration, allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("rdev-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .build()
}

/// What one attempt produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it started.
    pub at: DateTime<Utc>,
    /// Answer status, none when no answer came.
    pub status: Option<u16>,
    /// Time taken.
    pub duration: Duration,
    /// Why no (acceptable) answer came.
    pub error: Option<String>,
    /// Start of the response body.
    pub excerpt: Option<String>,
    /// `Retry-After` of a 429 or 503.
    pub retry_after: Option<Duration>,
}

impl Outcome {
    /// 2xx.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// Whether the destination itself looks unhealthy (for its breaker):
    /// no answer, 5xx or 429. Other answers prove it is up.
    pub fn host_failed(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => s >= 500 || s == 429,
        }
    }
}

/// What to send.
pub struct Message<'a> {
    /// Destination.
    pub url: &'a str,
    /// `whsec_` secret.
    pub secret: &'a str,
    /// The secret before a rotation, while it still signs too: the
    /// signature header then carries both `v1,` entries (Standard Webhooks
    /// allows several), so receivers verify with either.
    pub previous_secret: Option<&'a str>,
    /// `webhook-id`.
    pub id: &'a str,
    /// Body.
    pub body: &'a [u8],
}

/// The full cause chain of an error, one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// Truncates to at most `max` bytes on a character boundary.
fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Makes one signed attempt.
pub async fn send(client: &reqwest::Client, m: &Message<'_>, allow_private: bool) -> Outcome {
    let at = Utc::now();
    let started = Instant::now();
    let failed = |error: String| Outcome {
        at,
        status: None,
        duration: started.elapsed(),
        error: Some(error),
        excerpt: None,
        retry_after: None,
    };
    if let Err(why) = check_literal(m.url, allow_private) {
        return failed(why);
    }
    let timestamp = at.timestamp();
    let signature = match signature(m, timestamp) {
        Ok(s) => s,
        Err(e) => return failed(format!("cannot sign: {e}")),
    };
    let request = client
        .post(m.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(webhook_sign::H_ID, m.id)
        .header(webhook_sign::H_TIMESTAMP, timestamp.to_string())
        .header(webhook_sign::H_SIGNATURE, signature)
        .body(m.body.to_vec());
    let resp = match request.send().await {
        Ok(r) => r,
        Err(e) => return failed(describe(&e)),
    };
    let status = resp.status().as_u16();
    let retry_after = if status == 429 || status == 503 {
        resp.headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()))
    } else {
        None
    };
    let (body, mut error) = read_excerpt(resp).await;
    if (300..400).contains(&status) && error.is_none() {
        error = Some("redirects are not followed".into());
    }
    let excerpt = (!body.is_empty())
        .then(|| truncate_utf8(String::from_utf8_lossy(&body).into_owned(), EXCERPT_BYTES));
    Outcome {
        at,
        status: Some(status),
        duration: started.elapsed(),
        error,
        excerpt,
        retry_after,
    }
}

/// Refuses a URL that does not parse, or whose host is a forbidden IP
/// literal: literals skip the resolver, so they are checked here.
fn check_literal(url: &str, allow_private: bool) -> Result<(), String> {
    match netguard::parse_url(url) {
        Ok(t) => {
            if let Some(ip) = t.ip
                && !allow_private
                && netguard::is_forbidden(ip)
            {
                return Err(format!("refused: {}", netguard::Refusal::Forbidden(ip)));
            }
            Ok(())
        }
        Err(e) => Err(format!("refused: {e}")),
    }
}

/// The `webhook-signature` header: the current secret's signature, then the
/// previous secret's while it still signs.
fn signature(m: &Message<'_>, timestamp: i64) -> Result<String, webhook_sign::VerifyError> {
    let mut signature = webhook_sign::sign(m.secret, m.id, timestamp, m.body)?;
    if let Some(previous) = m.previous_secret
        && let Ok(old) = webhook_sign::sign(previous, m.id, timestamp, m.body)
    {
        signature.push(' ');
        signature.push_str(&old);
    }
    Ok(signature)
}

/// Reads at most [`EXCERPT_BYTES`] of the response (the rest is never
/// buffered); the error that cut the read short, if one did.
async fn read_excerpt(mut resp: reqwest::Response) -> (Vec<u8>, Option<String>) {
    let mut body = Vec::new();
    while body.len() < EXCERPT_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => {
                return (
                    body,
                    Some(format!("reading the response: {}", describe(&e))),
                );
            }
        }
    }
    (body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_cut_on_character_boundaries() {
        let s = "é".repeat(10); // 20 bytes
        assert_eq!(truncate_utf8(s.clone(), 5), "éé");
        assert_eq!(truncate_utf8(s.clone(), 100), s);
    }

    #[tokio::test]
    async fn internal_literals_are_refused_before_connecting() {
        let c = client(Duration::from_secs(1), false).expect("client");
        let m = Message {
            url: "http://169.254.169.254/latest/meta-data",
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            previous_secret: None,
            id: "e",
            body: b"{}",
        };
        let o = send(&c, &m, false).await;
        assert_eq!(o.status, None);
        assert!(
            o.error.as_deref().is_some_and(|e| e.contains("refused")),
            "{o:?}"
        );
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_connect_time() {
        let c = client(Duration::from_secs(2), false).expect("client");
        let m = Message {
            url: "http://localhost:9/",
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            previous_secret: None,
            id: "e",
            body: b"{}",
        };
        let o = send(&c, &m, false).await;
        assert_eq!(o.status, None);
        assert!(
            o.error
                .as_deref()
                .is_some_and(|e| e.contains("not publicly routable")),
            "{o:?}"
        );
    }
}
