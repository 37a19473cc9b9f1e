use anyhow::Context;
use clap::{Parser, Subcommand};
use rdev_api::config::{ApiConfig, GlobalConfig};
use rdev_shared::config::DbConfig;
use rdev_shared::db::{self, keys};
use rdev_shared::domain::validate;
use rdev_shared::domain::{RateLimit, Scope};
use rdev_shared::{lifecycle, secret, telemetry};

/// jemalloc, so `/debug/pprof/heap` can profile the heap.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Heap profiling on, sampling one allocation per 512 KiB (2^19) on average:
/// cheap enough to leave on in production. Freed pages go back to the OS
/// within a second (a background thread purges them), so resident memory —
/// what the memory alert and the HPA watch — tracks live memory.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &[u8] =
    b"prof:true,prof_active:true,lg_prof_sample:19,background_thread:true,dirty_decay_ms:1000\0";

/// rdev-api: the HTTP API of rdev.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: GlobalConfig,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (the default).
    Serve(Box<ApiConfig>),
    /// Apply pending database migrations and exit.
    Migrate(DbConfig),
    /// Manage API keys from the command line (how the first admin key is made).
    #[command(subcommand)]
    Keys(KeysCmd),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key; its secret is printed once, as the last line of stdout.
    Create {
        #[command(flatten)]
        db: DbConfig,
        /// Name shown in listings and the audit log.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes, e.g. `admin` or `commands:run,commands:read`.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Restrict the key to these projects (names, repeatable or comma-separated).
        #[arg(long = "project", value_delimiter = ',')]
        projects: Vec<String>,
        /// Allow the key only from these networks (CIDRs, repeatable or comma-separated).
        #[arg(long = "allowed-ip", value_delimiter = ',')]
        allowed_ips: Vec<String>,
        /// The key's own rate limit, `N/<duration>` (default: the server's `RDEV_RATE_LIMIT`).
        #[arg(long)]
        rate_limit: Option<RateLimit>,
        /// Expiry, RFC 3339 (default: never).
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Rewrite every secret at rest under the first key of
    /// `RDEV_ENCRYPTION_KEYS` (after adding a new key; see
    /// docs/operations/security.md). Idempotent, safe while serving.
    Reencrypt {
        #[command(flatten)]
        db: DbConfig,
    },
    /// Print a new random encryption key entry (`ID:base64`) for
    /// `RDEV_ENCRYPTION_KEYS`.
    GenerateEncryptionKey {
        /// The key's id (1-32 of [A-Za-z0-9_-]), e.g. the date.
        #[arg(long, default_value = "k1")]
        id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init(&cli.global.log, "rdev-api");
    let command = cli
        .command
        .unwrap_or_else(|| Cmd::Serve(Box::new(ApiConfig::parse_default())));
    install_key_ring(&cli.global, &command)?;
    match command {
        Cmd::Serve(cfg) => serve(*cfg).await,
        Cmd::Migrate(db_cfg) => migrate(db_cfg).await,
        Cmd::Keys(KeysCmd::GenerateEncryptionKey { id }) => generate_encryption_key(&id),
        Cmd::Keys(KeysCmd::Reencrypt { db: db_cfg }) => reencrypt(db_cfg).await,
        Cmd::Keys(KeysCmd::Create {
            db: db_cfg,
            name,
            scopes,
            projects,
            allowed_ips,
            rate_limit,
            expires_at,
        }) => {
            let mut errors = Vec::new();
            let nets = validate::cidrs("--allowed-ip", &allowed_ips, &mut errors);
            if let Some(e) = errors.first() {
                anyhow::bail!("{}: {}", e.field, e.message);
            }
            let limits = keys::KeyLimits {
                allowed_ips: (!nets.is_empty()).then_some(nets),
                rate_limit,
                expires_at,
                created_by: None,
            };
            create_key(db_cfg, name, scopes, projects, limits).await
        }
    }
}

/// Installs the encryption key ring. Refuses to serve (or re-encrypt)
/// without a key unless RDEV_ALLOW_UNENCRYPTED=1 (`migrate` and `keys
/// create` touch no secret and go on).
fn install_key_ring(global: &GlobalConfig, command: &Cmd) -> anyhow::Result<()> {
    match global.crypto.ring() {
        Ok(ring) => {
            rdev_shared::crypto::install(ring);
        }
        Err(e)
            if matches!(
                command,
                Cmd::Serve(_) | Cmd::Keys(KeysCmd::Reencrypt { .. })
            ) =>
        {
            return Err(e).context("the encryption key ring");
        }
        Err(_) => {}
    }
    Ok(())
}

/// `rdev-api migrate`.
async fn migrate(db_cfg: DbConfig) -> anyhow::Result<()> {
    let pool = db::pool(&db_cfg)?;
    let applied = db::migrate_as_owner(&db_cfg, &pool)
        .await
        .context("migrating")?;
    println!(
        "applied {} migration(s){}",
        applied.len(),
        if applied.is_empty() {
            String::new()
        } else {
            format!(": {}", applied.join(", "))
        }
    );
    Ok(())
}

/// `rdev-api keys generate-encryption-key`.
fn generate_encryption_key(id: &str) -> anyhow::Result<()> {
    let entry = rdev_shared::crypto::KeyRing::generate_entry(id);
    rdev_shared::crypto::KeyRing::parse(&entry).context("--id")?;
    println!("{entry}");
    Ok(())
}

/// `rdev-api keys reencrypt`.
async fn reencrypt(db_cfg: DbConfig) -> anyhow::Result<()> {
    let ring = rdev_shared::crypto::ring();
    if ring.is_empty() {
        anyhow::bail!("RDEV_ENCRYPTION_KEYS is empty: nothing to encrypt with");
    }
    let pool = db::pool(&db_cfg)?;
    let client = pool.get().await.context("connecting to PostgreSQL")?;
    let r = db::reencrypt::run(&client, &ring)
        .await
        .context("re-encrypting")?;
    println!(
        "re-encrypted under key `{}`: {} project env, {} command env, {} command stdin, {} command input, {} webhook secrets, {} project secrets",
        ring.current_id().unwrap_or_default(),
        r.project_env,
        r.command_env,
        r.command_stdin,
        r.command_input,
        r.webhook_secret,
        r.project_secret
    );
    Ok(())
}

trait ParseDefault {
    fn parse_default() -> Self;
}

impl ParseDefault for ApiConfig {
    /// `rdev-api` with no subcommand serves with settings from the environment.
    fn parse_default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            cfg: ApiConfig,
        }
        Only::parse_from(["rdev-api"]).cfg
    }
}

async fn serve(cfg: ApiConfig) -> anyhow::Result<()> {
    let running = rdev_api::start(cfg, lifecycle::on_shutdown_signal())
        .await
        .context("starting rdev-api")?;
    running.task.await.context("server task")?;
    Ok(())
}

async fn create_key(
    db_cfg: DbConfig,
    name: String,
    scopes: Vec<String>,
    projects: Vec<String>,
    limits: keys::KeyLimits,
) -> anyhow::Result<()> {
    let scopes = scopes
        .iter()
        .map(|s| s.trim().parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .context("--scopes")?;
    if name.trim().is_empty() || name.len() > 200 {
        anyhow::bail!("--name must be 1-200 characters");
    }
    let pool = db::pool(&db_cfg)?;
    db::migrate_as_owner(&db_cfg, &pool)
        .await
        .context("migrating")?;
    let client = pool.get().await.context("connecting to PostgreSQL")?;
    let project_ids = if projects.is_empty() {
        None
    } else {
        let mut ids = Vec::new();
        for p in &projects {
            let project = db::projects::get_by_name(&client, p)
                .await?
                .with_context(|| format!("no project named `{p}`"))?;
            ids.push(project.id);
        }
        Some(ids)
    };
    let generated = secret::generate_key();
    let key = keys::insert_with(
        &client,
        &keys::NewKey {
            name,
            prefix: generated.prefix.clone(),
            hash: generated.hash,
            scopes,
            project_ids,
        },
        &limits,
    )
    .await?;
    println!(
        "created API key {} ({}) with scopes {}",
        key.id,
        key.name,
        key.scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("{}", generated.secret);
    Ok(())
}
