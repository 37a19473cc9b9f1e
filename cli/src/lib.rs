//! `rdev`, the command-line client of the rdev API.
//!
//! Layers, lowest first: `config` and `client` (HTTP + problem+json errors),
//! `output` and `spinner` (presentation), `events` (following a command's
//! SSE stream across reconnects), then `commands` (one module per group of
//! subcommands), `bench` (load generators) and `mcp` (the MCP server). `args` is the clap definition; [`main`] ties them together.

pub mod args;
pub mod attach;
pub mod bench;
pub mod client;
pub mod commands;
pub mod config;
pub mod events;
pub mod mcp;
pub mod output;
pub mod spinner;
pub mod units;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};
use client::{Client, ClientError};
use output::Style;

/// Exit code of usage errors (bad flags, unusable configuration), as clap's.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of API and connection errors.
pub const EXIT_API: i32 = 1;

/// Parses the command line, runs it and returns the process exit code.
pub async fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    run(cli).await
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let style = Style::detect(cli.global.json);
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "rdev", &mut std::io::stdout());
        return 0;
    }
    let path = config::config_path().unwrap_or_else(|| "config.toml".into());
    let settings = config::load_file(&path).and_then(|file| {
        config::resolve(
            cli.global.url.clone(),
            cli.global.api_key.clone(),
            cli.global.profile.as_deref(),
            &file,
            &path,
        )
    });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            output::note(&e.to_string());
            return EXIT_USAGE;
        }
    };
    let profile_project = settings.project.clone();
    let client = match Client::new(settings) {
        Ok(c) => c,
        Err(e) => {
            output::note(&e.to_string());
            return EXIT_API;
        }
    };
    let result = match &cli.command {
        Command::Run(a) => commands::run::run(&client, &style, a).await,
        Command::Logs(a) => commands::inspect::logs(&client, a).await,
        Command::Status(a) => commands::inspect::status(&client, &style, a).await,
        Command::Wait(a) => commands::inspect::wait(&client, &style, a).await,
        Command::Cancel(a) => commands::inspect::cancel(&client, &style, a).await,
        Command::Attach(a) => commands::run::attach(&client, &style, a).await,
        Command::Ls(a) => match a.target.as_deref().map(commands::files::remote) {
            Some(Some((project, path))) => {
                commands::files::ls(&client, &style, project, path, &a.page).await
            }
            Some(None) => Err(ClientError::Usage(
                "`rdev ls` takes PROJECT:DIR to list files (or no argument to list commands)"
                    .into(),
            )),
            None => commands::inspect::ls(&client, &style, a).await,
        },
        Command::Cp(a) => commands::files::cp(&client, a).await,
        Command::Projects(c) => commands::projects::projects(&client, &style, c).await,
        Command::Keys(c) => commands::admin::keys(&client, &style, c).await,
        Command::Webhooks(c) => commands::admin::webhooks(&client, &style, c).await,
        Command::Secrets(c) => commands::secrets::secrets(&client, &style, c).await,
        Command::Audit(a) => commands::admin::audit(&client, &style, a).await,
        Command::Bench(a) => bench::bench(&client, &style, a).await,
        Command::Mcp(a) => Ok(mcp::serve(client.clone(), profile_project, a).await),
        Command::Completions { .. } => Ok(0),
    };
    match result {
        Ok(code) => code,
        Err(e @ ClientError::Usage(_)) => {
            output::note(&e.to_string());
            EXIT_USAGE
        }
        Err(e) => {
            output::note(&e.to_string());
            EXIT_API
        }
    }
}
