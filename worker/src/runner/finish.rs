//! How a command's outcome is recorded: status, exit code, reason, error.

use rdev_shared::containment::Limit;
use rdev_shared::db::commands::Finish;
use rdev_shared::domain::{CommandStatus, EndReason};

use super::SHUTDOWN_ERROR;
use crate::executor::Outcome;
use crate::output::OutputSummary;

/// Maps how a command ended to the facts recorded in PostgreSQL.
pub(super) fn finish_of(
    outcome: &Outcome,
    out: OutputSummary,
    timeout_s: i32,
    stopping: bool,
) -> Finish {
    use EndReason as R;
    let (status, exit_code, error, reason, signal) = match outcome {
        Outcome::Exited(0) => (CommandStatus::Succeeded, Some(0), None, R::Exited, None),
        Outcome::Exited(code) => (CommandStatus::Failed, Some(*code), None, R::Exited, None),
        Outcome::Signaled(sig) => (
            CommandStatus::Failed,
            Some(128 + sig),
            Some(format!("terminated by signal {sig}")),
            R::Signaled,
            Some(*sig),
        ),
        Outcome::TimedOut => (
            CommandStatus::TimedOut,
            None,
            Some(format!("timed out after {timeout_s}s")),
            R::TimedOut,
            None,
        ),
        // The end of the drain period stops commands too: that is a failure,
        // not the client's cancel.
        Outcome::Cancelled if stopping => (
            CommandStatus::Failed,
            None,
            Some(SHUTDOWN_ERROR.into()),
            R::WorkerShutdown,
            None,
        ),
        Outcome::Cancelled => (
            CommandStatus::Cancelled,
            None,
            Some("cancelled on request".into()),
            R::Cancelled,
            None,
        ),
        Outcome::Limit {
            limit,
            exit_code,
            signal,
        } => {
            let (reason, what) = match limit {
                Limit::Memory => (R::MemoryLimit, "memory"),
                Limit::Pids => (R::PidsLimit, "process"),
                Limit::Cpu => (R::CpuLimit, "CPU time"),
                Limit::FileSize => (R::FileSizeLimit, "file size"),
                Limit::OpenFiles => (R::Exited, "open files"),
            };
            (
                CommandStatus::Failed,
                exit_code.or(signal.map(|s| 128 + s)),
                Some(format!("stopped at its {what} limit")),
                reason,
                *signal,
            )
        }
        Outcome::FailedToStart(e) => (
            CommandStatus::Failed,
            None,
            Some(e.clone()),
            R::FailedToStart,
            None,
        ),
        Outcome::SandboxUnavailable(e) => (
            CommandStatus::Failed,
            None,
            Some(format!(
                "the local sandbox is unavailable on this worker: {e}"
            )),
            R::SandboxUnavailable,
            None,
        ),
        Outcome::ExecutorLost(e) => (
            CommandStatus::Failed,
            None,
            Some(e.clone()),
            R::ExecutorLost,
            None,
        ),
        Outcome::Idle(after) => (
            CommandStatus::TimedOut,
            None,
            Some(format!(
                "idle for {}s: no input, no output and no attached client",
                after.as_secs()
            )),
            R::Idle,
            None,
        ),
    };
    Finish {
        status,
        exit_code,
        error,
        reason,
        signal,
        output_bytes: out.output_bytes,
        truncated: out.truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> OutputSummary {
        OutputSummary {
            output_bytes: 5,
            truncated: false,
        }
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let f = finish_of(&Outcome::Exited(0), out(), 60, false);
        assert_eq!(
            (f.status, f.exit_code, f.error),
            (CommandStatus::Succeeded, Some(0), None)
        );
        let f = finish_of(&Outcome::Exited(3), out(), 60, false);
        assert_eq!(
            (f.status, f.exit_code, f.error),
            (CommandStatus::Failed, Some(3), None)
        );
        let f = finish_of(&Outcome::Signaled(9), out(), 60, false);
        assert_eq!(f.exit_code, Some(137));
        assert_eq!(f.error.as_deref(), Some("terminated by signal 9"));
        let f = finish_of(&Outcome::TimedOut, out(), 7, false);
        assert_eq!(
            (f.status, f.error.as_deref()),
            (CommandStatus::TimedOut, Some("timed out after 7s"))
        );
        let f = finish_of(&Outcome::Cancelled, out(), 7, false);
        assert_eq!(f.status, CommandStatus::Cancelled);
        let f = finish_of(&Outcome::Cancelled, out(), 7, true);
        assert_eq!(
            (f.status, f.error.as_deref()),
            (CommandStatus::Failed, Some(SHUTDOWN_ERROR))
        );
        let f = finish_of(&Outcome::FailedToStart("nope".into()), out(), 7, false);
        assert_eq!(
            (f.status, f.exit_code, f.error.as_deref(), f.reason),
            (
                CommandStatus::Failed,
                None,
                Some("nope"),
                EndReason::FailedToStart
            )
        );
        assert_eq!(f.output_bytes, 5);
        let f = finish_of(&Outcome::Signaled(9), out(), 7, false);
        assert_eq!((f.reason, f.signal), (EndReason::Signaled, Some(9)));
        let f = finish_of(&Outcome::Cancelled, out(), 7, true);
        assert_eq!(f.reason, EndReason::WorkerShutdown);
        let f = finish_of(
            &Outcome::Limit {
                limit: Limit::Memory,
                exit_code: None,
                signal: Some(9),
            },
            out(),
            7,
            false,
        );
        assert_eq!(
            (
                f.status,
                f.reason,
                f.exit_code,
                f.signal,
                f.error.as_deref()
            ),
            (
                CommandStatus::Failed,
                EndReason::MemoryLimit,
                Some(137),
                Some(9),
                Some("stopped at its memory limit")
            )
        );
        let f = finish_of(
            &Outcome::SandboxUnavailable("no bwrap".into()),
            out(),
            7,
            false,
        );
        assert_eq!(f.reason, EndReason::SandboxUnavailable);
    }
}
