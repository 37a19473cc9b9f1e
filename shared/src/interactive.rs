//! Interactive commands: how a command's standard input is fed, its
//! terminal, and the input events clients send while it runs (bytes,
//! end-of-file, a new terminal size, a signal).
//!
//! Input travels API → PostgreSQL (`command_input`, numbered by `seq`, the
//! durable copy) → RabbitMQ (`<prefix>.input`, routed to the worker that
//! owns the command: a wake-up carrying the event) → the worker, which
//! applies events strictly in `seq` order and reads PostgreSQL whenever it
//! sees a gap. So input is ordered and never applied twice, whichever API
//! instance took it. A bottom module: it imports nothing of this crate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a command's standard input comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdinMode {
    /// `/dev/null` (the default): a program waiting for input sees its end.
    #[default]
    Closed,
    /// Fixed bytes given at enqueue, then end-of-file.
    Fixed,
    /// A pipe (or, with a tty, the terminal) fed while it runs.
    Pipe,
}

impl StdinMode {
    /// The name shown in a command's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Fixed => "fixed",
            Self::Pipe => "pipe",
        }
    }
}

impl Serialize for StdinMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A terminal's size in character cells.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    /// Columns, 1–1000.
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 1000))]
    pub cols: u16,
    /// Rows, 1–1000.
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 1000))]
    pub rows: u16,
}

impl TtySize {
    /// Largest accepted dimension.
    pub const MAX: u16 = 1000;

    /// Checks both dimensions are 1–1000.
    pub fn validate(&self) -> Result<(), String> {
        if (1..=Self::MAX).contains(&self.cols) && (1..=Self::MAX).contains(&self.rows) {
            Ok(())
        } else {
            Err(format!("cols and rows must be 1-{}", Self::MAX))
        }
    }
}

/// A signal a client may send to a running command.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InputSignal {
    /// Interrupt (Ctrl-C).
    Int,
    /// Terminate (sent to every process of the command).
    Term,
    /// Hang up.
    Hup,
    /// Quit (Ctrl-\).
    Quit,
    /// Kill (cannot be caught).
    Kill,
    /// User-defined 1.
    Usr1,
    /// User-defined 2.
    Usr2,
}

impl InputSignal {
    /// Every signal a client may send.
    pub const ALL: [InputSignal; 7] = [
        Self::Int,
        Self::Term,
        Self::Hup,
        Self::Quit,
        Self::Kill,
        Self::Usr1,
        Self::Usr2,
    ];

    /// Its name without `SIG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int => "INT",
            Self::Term => "TERM",
            Self::Hup => "HUP",
            Self::Quit => "QUIT",
            Self::Kill => "KILL",
            Self::Usr1 => "USR1",
            Self::Usr2 => "USR2",
        }
    }

    /// Its number on Linux.
    pub fn number(self) -> i32 {
        match self {
            Self::Hup => 1,
            Self::Int => 2,
            Self::Quit => 3,
            Self::Kill => 9,
            Self::Usr1 => 10,
            Self::Usr2 => 12,
            Self::Term => 15,
        }
    }
}

impl fmt::Display for InputSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InputSignal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.strip_prefix("SIG").unwrap_or(s);
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == name)
            .ok_or_else(|| format!("unknown signal `{s}` (INT, TERM, HUP, QUIT, KILL, USR1, USR2)"))
    }
}

/// One input event for a running command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// Bytes for its standard input (its terminal, with a tty).
    Data {
        /// The bytes, base64 in JSON.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Close its standard input (with a tty: the terminal's end-of-file
    /// character, Ctrl-D).
    Eof,
    /// Its terminal's new size.
    Resize {
        /// The size.
        size: TtySize,
    },
    /// A signal: with a tty, to the terminal's foreground process group;
    /// otherwise to the command's process group (`TERM`: to all of its
    /// processes).
    Signal {
        /// Which.
        signal: InputSignal,
    },
}

impl Input {
    /// The `kind` stored in `command_input`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Data { .. } => "data",
            Self::Eof => "eof",
            Self::Resize { .. } => "resize",
            Self::Signal { .. } => "signal",
        }
    }
}

/// What the worker hears on the input exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputMessage {
    /// Input event `seq` of a command (also stored in PostgreSQL).
    Input {
        /// The command.
        command_id: uuid::Uuid,
        /// Its number, 1, 2, 3… per command.
        seq: i64,
        /// The event.
        input: Input,
    },
    /// A client is attached to the command (sent periodically while it
    /// is): it is not idle.
    Attached {
        /// The command.
        command_id: uuid::Uuid,
    },
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_with_or_without_sig() {
        assert_eq!("INT".parse::<InputSignal>().ok(), Some(InputSignal::Int));
        assert_eq!(
            "SIGKILL".parse::<InputSignal>().ok(),
            Some(InputSignal::Kill)
        );
        assert!("STOP".parse::<InputSignal>().is_err());
        assert_eq!(InputSignal::Term.number(), 15);
    }

    #[test]
    fn input_messages_round_trip() {
        let m = InputMessage::Input {
            command_id: uuid::Uuid::nil(),
            seq: 3,
            input: Input::Data {
                data: b"1+1\n".to_vec(),
            },
        };
        let text = serde_json::to_string(&m).expect("json");
        assert!(text.contains("\"kind\":\"data\""), "{text}");
        assert_eq!(serde_json::from_str::<InputMessage>(&text).ok(), Some(m));
        let r = Input::Resize {
            size: TtySize { cols: 80, rows: 24 },
        };
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            serde_json::json!({"kind": "resize", "size": {"cols": 80, "rows": 24}})
        );
        assert!(TtySize { cols: 0, rows: 1 }.validate().is_err());
    }
}
