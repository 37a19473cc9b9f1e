//! A command's lifecycle: its status and state machine, why it ended, and
//! which stream a chunk of its output came from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lifecycle of a command: `queued → running → succeeded | failed | timed_out |
/// cancelled`, or `queued → cancelled`. Terminal states are final.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// Claimed by a worker and executing.
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Exited non-zero, could not start, or its worker was lost.
    Failed,
    /// Killed because it exceeded its timeout.
    TimedOut,
    /// Cancelled by a client.
    Cancelled,
}

impl CommandStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [CommandStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The webhook event type announcing a transition into this status.
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            Self::Queued => None,
            Self::Running => Some("command.started"),
            Self::Succeeded => Some("command.succeeded"),
            Self::Failed => Some("command.failed"),
            Self::TimedOut => Some("command.timed_out"),
            Self::Cancelled => Some("command.cancelled"),
        }
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names no known value.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct UnknownValue {
    /// What was being parsed.
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
}

impl FromStr for CommandStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "status",
                value: s.to_owned(),
            })
    }
}

/// Why a command ended (its `reason`), finer than its status: `failed` can
/// mean a non-zero exit, a signal, a resource limit, a lost worker, …
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The main process exited (`exit_code` says how).
    Exited,
    /// The main process was killed by a signal (`signal` says which).
    Signaled,
    /// Killed at its timeout.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
    /// Killed, or failed, at its memory limit.
    MemoryLimit,
    /// Failed at its process limit.
    PidsLimit,
    /// Killed at its CPU time limit.
    CpuLimit,
    /// Killed at its file size limit.
    FileSizeLimit,
    /// Its worker stopped heart-beating.
    WorkerLost,
    /// Its worker shut down and the drain period ran out.
    WorkerShutdown,
    /// The connection to where it ran (a Kubernetes exec stream) was lost;
    /// the remote processes were stopped.
    ExecutorLost,
    /// It never ran: unknown program, bad workdir, deleted project, …
    FailedToStart,
    /// The local sandbox cannot run on its worker.
    SandboxUnavailable,
    /// An interactive command with no input, output or attached client
    /// for `RDEV_INTERACTIVE_IDLE`.
    Idle,
}

impl EndReason {
    /// Every reason.
    pub const ALL: [EndReason; 14] = [
        Self::Exited,
        Self::Signaled,
        Self::TimedOut,
        Self::Cancelled,
        Self::MemoryLimit,
        Self::PidsLimit,
        Self::CpuLimit,
        Self::FileSizeLimit,
        Self::WorkerLost,
        Self::WorkerShutdown,
        Self::ExecutorLost,
        Self::FailedToStart,
        Self::SandboxUnavailable,
        Self::Idle,
    ];

    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Signaled => "signaled",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::MemoryLimit => "memory_limit",
            Self::PidsLimit => "pids_limit",
            Self::CpuLimit => "cpu_limit",
            Self::FileSizeLimit => "file_size_limit",
            Self::WorkerLost => "worker_lost",
            Self::WorkerShutdown => "worker_shutdown",
            Self::ExecutorLost => "executor_lost",
            Self::FailedToStart => "failed_to_start",
            Self::SandboxUnavailable => "sandbox_unavailable",
            Self::Idle => "idle",
        }
    }

    /// The reason of a command finished before reasons were recorded,
    /// inferred from its status, exit code and error text.
    pub fn infer(
        status: CommandStatus,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> Option<Self> {
        Some(match status {
            CommandStatus::Queued | CommandStatus::Running => return None,
            CommandStatus::Succeeded => Self::Exited,
            CommandStatus::TimedOut => Self::TimedOut,
            CommandStatus::Cancelled => Self::Cancelled,
            CommandStatus::Failed => match (exit_code, error) {
                (_, Some("worker_lost")) => Self::WorkerLost,
                (Some(_), Some(e)) if e.starts_with("terminated by signal") => Self::Signaled,
                (Some(_), _) => Self::Exited,
                (None, _) => Self::FailedToStart,
            },
        })
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EndReason {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue {
                kind: "reason",
                value: s.to_owned(),
            })
    }
}

/// Which output stream a chunk came from.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

impl FromStr for OutputStream {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            _ => Err(UnknownValue {
                kind: "stream",
                value: s.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_know_terminality() {
        for s in CommandStatus::ALL {
            assert_eq!(s.as_str().parse::<CommandStatus>().ok(), Some(s));
        }
        assert!(!CommandStatus::Running.is_terminal());
        assert!(CommandStatus::TimedOut.is_terminal());
    }
}
