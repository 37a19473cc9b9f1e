//! Webhook domain types: endpoints, deliveries and their states, and the
//! event types an endpoint can subscribe to.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Secret;
use crate::domain::UnknownValue;

/// Event types an endpoint may list; `*` subscribes to all of them.
pub const EVENT_TYPES: [&str; 5] = [
    "command.started",
    "command.succeeded",
    "command.failed",
    "command.timed_out",
    "command.cancelled",
];
/// The wildcard subscription.
pub const ALL_EVENTS: &str = "*";
/// Type of the event `POST /v1/webhooks/{id}/test` sends.
pub const TEST_EVENT: &str = "webhook.test";

/// Whether `name` can be subscribed to.
pub fn is_known_event(name: &str) -> bool {
    name == ALL_EVENTS || EVENT_TYPES.contains(&name)
}

/// Delivery lifecycle: `pending → succeeded`, `pending → dead` after the last
/// scheduled attempt, `pending → failed` when it stopped early (endpoint
/// disabled, a one-off manual redelivery failed). Redeliver and recover put
/// `failed`/`dead` back to `pending`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answer was received.
    Succeeded,
    /// Stopped before the schedule ran out.
    Failed,
    /// Every scheduled attempt failed.
    Dead,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 4] = [Self::Pending, Self::Succeeded, Self::Failed, Self::Dead];

    /// Name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "delivery status",
                value: s.to_owned(),
            })
    }
}

/// A webhook endpoint as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    /// Endpoint id.
    pub id: Uuid,
    /// Destination URL.
    pub url: String,
    /// Signing secret, `whsec_…`.
    pub secret: Secret,
    /// Subscribed event types (`*` = all).
    pub events: Vec<String>,
    /// Project filter; none = every project.
    pub project_id: Option<Uuid>,
    /// Name of the filtered project.
    pub project: Option<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Start of the current run of failures.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One HTTP attempt of a delivery.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Attempt {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// HTTP status, none when no answer came.
    pub status_code: Option<i32>,
    /// Time until the answer (or the failure).
    pub duration_ms: i32,
    /// Transport error, or why the answer counts as a failure.
    pub error: Option<String>,
    /// The start of the response body (≤ 20 KB).
    pub response_excerpt: Option<String>,
}

/// A delivery of one event to one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// Delivery id.
    pub id: Uuid,
    /// Endpoint.
    pub webhook_id: Uuid,
    /// The event's id, sent as `webhook-id`.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// State.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempt_count: i32,
    /// When the next attempt is due (meaningful while pending).
    pub next_attempt_at: DateTime<Utc>,
    /// Status code of the last attempt.
    pub last_status_code: Option<i32>,
    /// Error of the last attempt.
    pub last_error: Option<String>,
    /// Duration of the last attempt.
    pub last_duration_ms: Option<i32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Attempts, oldest first (filled when listing).
    pub attempts: Vec<Attempt>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>().ok(), Some(s));
        }
        assert!("gone".parse::<DeliveryStatus>().is_err());
    }

    #[test]
    fn known_events_include_the_wildcard() {
        assert!(is_known_event("*"));
        assert!(is_known_event("command.failed"));
        assert!(!is_known_event("command.queued"));
        assert!(!is_known_event(TEST_EVENT));
    }
}
