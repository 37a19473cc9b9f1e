//! The tools' arguments; their doc comments are the descriptions a model
//! reads (rmcp turns them into JSON Schema).

use rmcp::schemars;
use serde::Deserialize;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct RunParams {
    /// Project to run in (see list_projects). Optional when the server was
    /// started with a default project.
    #[serde(default)]
    pub(super) project: Option<String>,
    /// The command line, run by /bin/sh -c in the project's working
    /// directory, e.g. "cargo test 2>&1 | tail -50" or "cd api && make lint".
    pub(super) command: String,
    /// Kill the command after this many seconds (default: the project's timeout).
    #[serde(default)]
    pub(super) timeout_s: Option<u32>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub(super) env: Option<std::collections::BTreeMap<String, String>>,
    /// run_command only: seconds to wait for the end (default 50, at most
    /// 600). If the command is still running then, you get its id to
    /// follow with read_output; it keeps running.
    #[serde(default)]
    pub(super) wait_s: Option<u64>,
    /// run_command only: bytes of the end of stdout and of stderr to return
    /// (default 4000, at most 32000).
    #[serde(default)]
    pub(super) tail_bytes: Option<usize>,
    /// start_command only: keep the command's standard input open, to
    /// answer prompts or drive a REPL with send_input (default false: its
    /// input is closed, so nothing ever waits for it).
    #[serde(default)]
    pub(super) interactive: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct InputParams {
    /// Id of a command started with interactive=true.
    pub(super) id: String,
    /// Text to write to its standard input. End a line with "\n", as if
    /// Enter was pressed.
    #[serde(default)]
    pub(super) text: Option<String>,
    /// Close its standard input after the text (the end of input: `cat`,
    /// `wc` and read loops finish).
    #[serde(default)]
    pub(super) eof: bool,
    /// Instead of text: send a signal, one of INT (like Ctrl-C), TERM, HUP,
    /// QUIT, KILL, USR1, USR2.
    #[serde(default)]
    pub(super) signal: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct ReadParams {
    /// Command id (from start_command, run_command or list_commands).
    pub(super) id: String,
    /// Return output after this chunk number: 0 for the start, then the
    /// next_seq of the previous answer.
    #[serde(default)]
    pub(super) from_seq: i64,
    /// Most bytes to return (default 16000, at most 64000).
    #[serde(default)]
    pub(super) max_bytes: Option<usize>,
    /// Seconds to wait for output of a running command (default 2, at most 60).
    #[serde(default)]
    pub(super) wait_s: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct WriteFileParams {
    /// Project (default: the server's default project).
    #[serde(default)]
    pub(super) project: Option<String>,
    /// Path relative to the project directory, e.g. `src/main.rs`; missing
    /// directories are created, an existing file is replaced.
    pub(super) path: String,
    /// The file's contents: text, or base64 when `base64` is true.
    pub(super) content: String,
    /// Whether `content` is base64 (for binary files).
    #[serde(default)]
    pub(super) base64: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct ReadFileParams {
    /// Project (default: the server's default project).
    #[serde(default)]
    pub(super) project: Option<String>,
    /// Path relative to the project directory.
    pub(super) path: String,
    /// First byte to read (default 0).
    #[serde(default)]
    pub(super) offset: Option<u64>,
    /// Most bytes to return (default 65536, at most 1048576).
    #[serde(default)]
    pub(super) max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct ListFilesParams {
    /// Project (default: the server's default project).
    #[serde(default)]
    pub(super) project: Option<String>,
    /// Directory relative to the project directory (default: the project
    /// directory itself).
    #[serde(default)]
    pub(super) path: Option<String>,
    /// next_cursor of the previous answer, for the next page.
    #[serde(default)]
    pub(super) cursor: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct IdParams {
    /// Command id.
    pub(super) id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct ListProjectsParams {
    /// Most projects to list (1-200, default 50).
    #[serde(default)]
    pub(super) limit: Option<u32>,
    /// next_cursor of the previous answer, for the next page.
    #[serde(default)]
    pub(super) cursor: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct ListCommandsParams {
    /// Only this project's commands.
    #[serde(default)]
    pub(super) project: Option<String>,
    /// Only commands in this status: queued, running, succeeded, failed,
    /// timed_out or cancelled.
    #[serde(default)]
    pub(super) status: Option<String>,
    /// Most commands to list, newest first (1-200, default 20).
    #[serde(default)]
    pub(super) limit: Option<u32>,
    /// next_cursor of the previous answer, for the next page.
    #[serde(default)]
    pub(super) cursor: Option<String>,
}
