//! Exchange and queue names under one prefix, and the messages rdev
//! publishes on them.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::output::OutputEvent;

/// A message to publish: where it goes and what it carries. Durable ones
/// are written to the outbox (`db::outbox`) in the transaction of the change
/// they announce; others (a deferred command's retry, control broadcasts)
/// go straight to the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Full exchange name (prefix included).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Body.
    pub payload: Vec<u8>,
    /// String headers (trace context, message type).
    pub headers: BTreeMap<String, String>,
    /// AMQP priority 0–9.
    pub priority: u8,
}

/// Exchange and queue names under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// Priority of a command that asks for none (0 lowest, 9 highest: the
/// commands queue's `x-max-priority`).
pub const DEFAULT_PRIORITY: u8 = 5;

/// Routing key of command messages on the commands exchange.
pub const RUN_KEY: &str = "run";
/// How long a deferred command waits before it is offered to workers again.
pub const DELAY_TTL_MS: i64 = 1000;

impl Topology {
    /// Names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Direct exchange commands are published to.
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.prefix)
    }

    /// Durable priority queue workers consume.
    pub fn commands_queue(&self) -> String {
        format!("{}.commands", self.prefix)
    }

    /// Queue where a command over its project's concurrency limit waits
    /// [`DELAY_TTL_MS`] before it is dead-lettered back to the commands exchange.
    pub fn commands_delay_queue(&self) -> String {
        format!("{}.commands.delay", self.prefix)
    }

    /// A run message re-sent through the delay queue (default exchange,
    /// routed by queue name), keeping its priority.
    pub fn delayed_run_message(&self, command_id: Uuid, priority: u8) -> OutgoingMessage {
        OutgoingMessage {
            exchange: String::new(),
            routing_key: self.commands_delay_queue(),
            ..self.run_message(command_id, priority)
        }
    }

    /// Fanout exchange for cancel requests and cache invalidation.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Direct exchange carrying interactive input to the worker that runs
    /// the command, routing key = the worker's id.
    pub fn input_exchange(&self) -> String {
        format!("{}.input", self.prefix)
    }

    /// Topic exchange carrying live output: routing key `cmd.<id>` for a
    /// command's chunks and status, [`Topology::end_key`] for its end.
    pub fn output_exchange(&self) -> String {
        format!("{}.output", self.prefix)
    }

    /// Topic exchange of lifecycle events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Durable queue of events for webhook delivery.
    pub fn webhooks_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }

    /// Routing key of one command's output (chunks and status).
    pub fn output_key(id: Uuid) -> String {
        format!("cmd.{id}")
    }

    /// Routing key of one command's end marker: `cmd.<id>.end`. A binding
    /// of `cmd.<id>` does not match it; [`Topology::ENDS_BINDING`] matches
    /// every command's, so an API instance hears ends without a binding
    /// per command (a topic binding costs the broker ~1 ms of CPU to add
    /// and again to remove).
    pub fn end_key(id: Uuid) -> String {
        format!("cmd.{id}.end")
    }

    /// The binding that matches every command's end marker.
    pub const ENDS_BINDING: &str = "cmd.*.end";

    /// Routing key of a live message about command `id`.
    pub fn live_key(id: Uuid, event: &OutputEvent) -> String {
        match event {
            OutputEvent::End => Self::end_key(id),
            OutputEvent::Chunk { .. } | OutputEvent::Status => Self::output_key(id),
        }
    }

    /// The command a live message's routing key names, and whether the key
    /// is an end key: `cmd.<id>` or `cmd.<id>.end`.
    pub fn parse_live_key(key: &str) -> Option<(Uuid, bool)> {
        let rest = key.strip_prefix("cmd.")?;
        match rest.strip_suffix(".end") {
            Some(id) => Some((id.parse().ok()?, true)),
            None => Some((rest.parse().ok()?, false)),
        }
    }

    /// The message that asks a worker to run a command.
    pub fn run_message(&self, command_id: Uuid, priority: u8) -> OutgoingMessage {
        OutgoingMessage {
            exchange: self.commands_exchange(),
            routing_key: RUN_KEY.into(),
            payload: serde_json::to_vec(&serde_json::json!({ "command_id": command_id }))
                .unwrap_or_default(),
            headers: BTreeMap::new(),
            priority: priority.min(9),
        }
    }

    /// A lifecycle event for the events exchange.
    pub fn event_message(&self, event_type: &str, body: &serde_json::Value) -> OutgoingMessage {
        OutgoingMessage {
            exchange: self.events_exchange(),
            routing_key: event_type.to_owned(),
            payload: serde_json::to_vec(body).unwrap_or_default(),
            headers: BTreeMap::new(),
            priority: 0,
        }
    }
}

/// Body of a command message.
#[derive(Debug, serde::Deserialize)]
pub struct RunMessage {
    /// The command to run.
    pub command_id: Uuid,
}

/// A broadcast on the control exchange: every worker and API instance gets
/// every message, and ignores the kinds it does not handle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Stop this running command (its worker acts, the others ignore it).
    Cancel {
        /// The command.
        command_id: Uuid,
    },
    /// An API key changed (revoked, rotated, edited): drop cached lookups.
    KeyChanged {
        /// The key.
        key_id: Uuid,
    },
    /// A project changed (updated, deleted): drop its cached lookup.
    ProjectChanged {
        /// The project's name.
        name: String,
    },
    /// A kind this version does not know.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_tolerate_unknown_kinds() {
        let m = ControlMessage::Cancel {
            command_id: Uuid::nil(),
        };
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(
            json,
            r#"{"type":"cancel","command_id":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(serde_json::from_str::<ControlMessage>(&json).ok(), Some(m));
        let later: ControlMessage =
            serde_json::from_str(r#"{"type":"reload_config"}"#).expect("unknown");
        assert_eq!(later, ControlMessage::Unknown);
    }

    #[test]
    fn names_carry_the_prefix() {
        let t = Topology::new("t1");
        assert_eq!(t.commands_queue(), "t1.commands");
        assert_eq!(t.output_exchange(), "t1.output");
        let id = Uuid::now_v7();
        assert_eq!(
            Topology::live_key(id, &OutputEvent::Status),
            format!("cmd.{id}")
        );
        assert_eq!(
            Topology::live_key(id, &OutputEvent::End),
            format!("cmd.{id}.end")
        );
        for event in [OutputEvent::Status, OutputEvent::End] {
            let key = Topology::live_key(id, &event);
            assert_eq!(
                Topology::parse_live_key(&key),
                Some((id, event == OutputEvent::End))
            );
        }
        for bad in ["cmd.", "cmd.x", "cmd.x.end", "out.x", "cmd..end"] {
            assert_eq!(Topology::parse_live_key(bad), None, "{bad}");
        }
        let m = t.run_message(Uuid::nil(), 12);
        assert_eq!(m.priority, 9);
        assert_eq!(m.routing_key, "run");
    }
}
