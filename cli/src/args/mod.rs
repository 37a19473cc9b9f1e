//! The command line, as clap sees it. Parsing only: no I/O here.

use clap::{Args, Parser, Subcommand, ValueEnum};

mod bench;

pub use bench::{
    BenchArgs, BenchCmd, E2eArgs, EnqueueArgs, Follow, InteractiveBenchArgs, SseArgs, WebhooksArgs,
};

const LONG_ABOUT: &str = "\
rdev runs commands in development environments through the rdev API and
streams their output back.

Configuration (highest precedence first):
  --url / --api-key flags
  RDEV_URL / RDEV_API_KEY environment variables
  a profile in $XDG_CONFIG_HOME/rdev/config.toml (default ~/.config/rdev/config.toml):

      default_profile = \"dev\"
      [profiles.dev]
      url = \"http://127.0.0.1:8080\"
      api_key = \"rdev_...\"

  chosen by --profile / RDEV_PROFILE, else default_profile.
  The URL defaults to http://127.0.0.1:8080.";

const EXIT_CODES: &str = "\
Exit codes:
  0    success (for `rdev run`: the command succeeded)
  1    an API or connection error (for `rdev run`: the command failed
       without an exit code)
  2    usage error (bad flags, missing configuration)
  N    `rdev run`: the command's own exit code when it failed (128+n
       when signal n, or a limit enforced by one, ended it)
  124  `rdev run`: the command timed out
  125  `rdev run`: the worker's sandbox could not run the command
  130  `rdev run`: the command was cancelled, or a second Ctrl-C left it running

Output goes to stdout as tables for people; --json prints JSON for scripts.
NO_COLOR disables colours.";

/// The `rdev` command line.
#[derive(Debug, Parser)]
#[command(
    name = "rdev",
    version,
    about = "Run commands in rdev dev environments and stream their output",
    long_about = LONG_ABOUT,
    after_long_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Base URL of rdev-api [default: http://127.0.0.1:8080]
    #[arg(long, env = "RDEV_URL", global = true)]
    pub url: Option<String>,
    /// API key (`rdev_...`)
    #[arg(long, env = "RDEV_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Profile of the config file to use
    #[arg(long, env = "RDEV_PROFILE", global = true)]
    pub profile: Option<String>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command and stream its output; exits with the command's exit code
    Run(RunArgs),
    /// Print a command's stored output (or follow it live with -f)
    Logs(LogsArgs),
    /// Show a command
    Status(IdArg),
    /// Wait for a command to end; exits with its exit code, as `rdev run`
    /// does (75 when --timeout passes first)
    Wait(WaitArgs),
    /// Ask rdev to cancel a command
    Cancel(IdArg),
    /// Attach to a running command: its output here, this terminal's input
    /// there (raw, when this is a terminal and the command has one)
    Attach(IdArg),
    /// List commands, newest first; or, given PROJECT:DIR, a project's files
    Ls(LsArgs),
    /// Copy files to or from a project: `rdev cp ./dir app:dir`, `rdev cp app:out.log .`
    Cp(CpArgs),
    /// Manage projects
    #[command(subcommand)]
    Projects(ProjectsCmd),
    /// Manage API keys
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Manage webhooks
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// Manage a project's secrets (values are write-only)
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Read the audit log
    Audit(AuditArgs),
    /// Print a shell completion script
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Measure a live deployment: enqueue rate, end-to-end latency, SSE fan-out, webhooks
    Bench(BenchArgs),
    /// Serve the Model Context Protocol on stdin/stdout, for coding agents
    Mcp(McpArgs),
}

/// `rdev mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Project the tools use when a call names none [default: the profile's `project`]
    #[arg(long, short, env = "RDEV_PROJECT")]
    pub project: Option<String>,
}

/// `rdev run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Project to run in
    #[arg(short, long)]
    pub project: String,
    /// Queue priority, 0 (lowest) to 9 (highest) [server default: 5]
    #[arg(long, value_parser = clap::value_parser!(i16).range(0..=9))]
    pub priority: Option<i16>,
    /// Wall-clock limit in seconds [server default: the project's]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i32).range(1..))]
    pub timeout: Option<i32>,
    /// Extra environment variable (repeatable)
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Print the command's id and exit without waiting
    #[arg(long, short)]
    pub detach: bool,
    /// Retrying with the same key returns the original command
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Give the project secret NAME as the environment variable NAME (repeatable)
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Give the project secret NAME as the file /run/secrets/PATH (repeatable)
    #[arg(long = "secret-file", value_name = "NAME=PATH", value_parser = parse_key_value)]
    pub secret_files: Vec<(String, String)>,
    /// Stream this terminal's standard input to the command (it sees the
    /// end when yours ends)
    #[arg(long, short = 'i', conflicts_with = "detach")]
    pub interactive: bool,
    /// Give the command a terminal of this one's size: raw keys (Ctrl-C,
    /// Ctrl-D, arrows) go to it, stdout and stderr merge; use with -i
    #[arg(long, short = 't', conflicts_with = "detach")]
    pub tty: bool,
    /// The command: one argument is run by the shell, several are run as argv
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// `rdev logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Command id
    pub id: String,
    /// Follow the output live until the command finishes
    #[arg(short, long)]
    pub follow: bool,
    /// Only this stream (without -f)
    #[arg(long, value_enum, conflicts_with = "follow")]
    pub stream: Option<StreamArg>,
}

/// `rdev wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Command id
    pub id: String,
    /// Give up after this long (e.g. 90s, 10m); without it, wait as long as
    /// the command runs
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// An output stream.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StreamArg {
    /// Standard output
    Stdout,
    /// Standard error
    Stderr,
}

/// A single id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Command id
    pub id: String,
}

/// Paging of list commands.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Items per page (1-200)
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=200))]
    pub limit: Option<i64>,
    /// Continue from a previous page's `next_cursor`
    #[arg(long)]
    pub cursor: Option<String>,
}

/// `rdev ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// PROJECT:DIR lists that directory of the project's files instead
    pub target: Option<String>,
    /// Only this project's commands
    #[arg(long, short)]
    pub project: Option<String>,
    /// Only commands in this status (queued, running, succeeded, failed, timed_out, cancelled)
    #[arg(long, short)]
    pub status: Option<String>,
    /// Paging.
    #[command(flatten)]
    pub page: PageArgs,
}

/// `rdev cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Source: a local file or directory, or PROJECT:path
    pub src: String,
    /// Destination: PROJECT:path (a trailing `/` keeps the source's name), or a local path
    pub dst: String,
}

/// `rdev projects …`.
#[derive(Debug, Subcommand)]
pub enum ProjectsCmd {
    /// List projects
    Ls(PageArgs),
    /// Create a project
    Create(ProjectCreateArgs),
    /// Show a project
    Get {
        /// Project name
        name: String,
    },
    /// Delete a project
    Delete {
        /// Project name
        name: String,
    },
}

/// How a project runs its commands.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExecutorKind {
    /// A child process on the worker
    Local,
    /// Exec into a Kubernetes pod
    Kubernetes,
}

/// `rdev projects create`.
#[derive(Debug, Args)]
pub struct ProjectCreateArgs {
    /// Project name (lowercase letters, digits, dashes)
    pub name: String,
    /// Free text
    #[arg(long)]
    pub description: Option<String>,
    /// Executor kind
    #[arg(long, value_enum, default_value = "local")]
    pub executor: ExecutorKind,
    /// Working directory, relative to the workspace root
    #[arg(long)]
    pub workdir: Option<String>,
    /// Kubernetes namespace
    #[arg(long)]
    pub namespace: Option<String>,
    /// Kubernetes label selector of the pod (e.g. app=foo)
    #[arg(long)]
    pub selector: Option<String>,
    /// Kubernetes container
    #[arg(long)]
    pub container: Option<String>,
    /// Environment variable for every command (repeatable)
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Default timeout of commands, in seconds
    #[arg(long, value_name = "SECONDS")]
    pub default_timeout: Option<i32>,
    /// Stored output per command before truncation
    #[arg(long, value_name = "BYTES")]
    pub max_output_bytes: Option<i64>,
    /// Commands allowed to run at once
    #[arg(long)]
    pub max_concurrency: Option<i32>,
    /// Allowed command pattern (repeatable; none = any command)
    #[arg(long = "allowed-command", value_name = "PATTERN")]
    pub allowed_commands: Vec<String>,
}

/// `rdev secrets …`.
#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Set a secret (a new version) from standard input or a file; never from
    /// the command line, where shells and process lists would keep it
    Set {
        /// Project
        #[arg(short, long)]
        project: String,
        /// Secret name (also the environment variable commands see)
        name: String,
        /// Read the value from this file, byte for byte (default: standard
        /// input, without one trailing newline)
        #[arg(long, value_name = "PATH")]
        from_file: Option<std::path::PathBuf>,
    },
    /// List a project's secrets: names, versions, who set them and when
    Ls {
        /// Project
        #[arg(short, long)]
        project: String,
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Delete a secret
    Rm {
        /// Project
        #[arg(short, long)]
        project: String,
        /// Secret name
        name: String,
    },
}

/// `rdev keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// List API keys
    Ls(PageArgs),
    /// Create an API key; its secret is printed once
    Create(KeyCreateArgs),
    /// Revoke an API key
    Revoke {
        /// Key id
        id: String,
    },
    /// Replace a key's secret; the new secret is printed once
    Rotate {
        /// Key id
        id: String,
    },
}

/// `rdev keys create`.
#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    /// A name for people
    #[arg(long)]
    pub name: String,
    /// Scope (repeatable or comma-separated): admin, projects:read, projects:write,
    /// commands:run, commands:input, commands:read, keys:manage, webhooks:manage,
    /// audit:read, secrets:manage, files:read, files:write
    #[arg(long = "scope", required = true, value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// Restrict the key to this project (repeatable; none = all projects)
    #[arg(long = "project", value_delimiter = ',')]
    pub projects: Vec<String>,
    /// Allowed client network, CIDR (repeatable; none = any)
    #[arg(long = "allowed-ip", value_name = "CIDR", value_delimiter = ',')]
    pub allowed_ips: Vec<String>,
    /// Rate limit as REQUESTS/SECONDS, e.g. 600/60
    #[arg(long, value_parser = parse_rate_limit)]
    pub rate_limit: Option<(u64, u64)>,
    /// Expiry time, RFC 3339 (e.g. 2027-01-01T00:00:00Z)
    #[arg(long)]
    pub expires_at: Option<String>,
}

/// `rdev webhooks …`.
#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// List webhooks
    Ls(PageArgs),
    /// Create a webhook; its signing secret is printed once
    Create(WebhookCreateArgs),
    /// Delete a webhook
    Delete {
        /// Webhook id
        id: String,
    },
    /// List a webhook's deliveries with their attempts
    Deliveries {
        /// Webhook id
        id: String,
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Deliver an event again
    Redeliver {
        /// Webhook id
        id: String,
        /// Delivery id
        delivery_id: String,
    },
    /// Send a `webhook.test` event
    Test {
        /// Webhook id
        id: String,
    },
}

/// `rdev webhooks create`.
#[derive(Debug, Args)]
pub struct WebhookCreateArgs {
    /// Receiver URL (http or https)
    #[arg(long)]
    pub url: String,
    /// Event type (repeatable or comma-separated), e.g. command.succeeded
    #[arg(long = "event", required = true, value_delimiter = ',')]
    pub events: Vec<String>,
    /// Only events of this project (default: all)
    #[arg(long)]
    pub project: Option<String>,
}

/// `rdev audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Actor (key name)
    #[arg(long)]
    pub actor: Option<String>,
    /// Action, e.g. command.create
    #[arg(long)]
    pub action: Option<String>,
    /// Project name
    #[arg(long)]
    pub project: Option<String>,
    /// Entries at or after this time (RFC 3339)
    #[arg(long)]
    pub since: Option<String>,
    /// Entries before this time (RFC 3339)
    #[arg(long)]
    pub until: Option<String>,
    /// Paging.
    #[command(flatten)]
    pub page: PageArgs,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got `{s}`")),
    }
}

fn parse_rate_limit(s: &str) -> Result<(u64, u64), String> {
    let err = || format!("expected REQUESTS/SECONDS (e.g. 600/60), got `{s}`");
    let (r, w) = s.split_once('/').ok_or_else(err)?;
    let w = w.trim_end_matches('s');
    Ok((r.parse().map_err(|_| err())?, w.parse().map_err(|_| err())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_everything_after_double_dash() {
        let cli = Cli::try_parse_from([
            "rdev", "run", "-p", "web", "-e", "A=1=2", "--", "ls", "-la", "--json",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.cmd, ["ls", "-la", "--json"]);
        assert_eq!(r.env, [("A".to_owned(), "1=2".to_owned())]);
        assert!(!cli.global.json);
    }

    #[test]
    fn bench_options_go_before_or_after_the_scenario() {
        for argv in [
            ["rdev", "bench", "--seed", "7", "e2e", "-n", "5"],
            ["rdev", "bench", "e2e", "-n", "5", "--seed", "7"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Bench(b) = cli.command else {
                panic!("not bench")
            };
            assert_eq!(b.seed, 7);
            assert!(matches!(b.scenario, BenchCmd::E2e(E2eArgs { n: 5, .. })));
        }
    }

    #[test]
    fn rate_limits_parse() {
        assert_eq!(parse_rate_limit("600/60"), Ok((600, 60)));
        assert_eq!(parse_rate_limit("10/5s"), Ok((10, 5)));
        assert!(parse_rate_limit("10").is_err());
    }
}
