//! PostgreSQL: the pool, migrations, and one repository module per table group.
//! SQL lives here and nowhere else.

pub mod audit;
pub mod commands;
pub mod indexes;
pub mod input;
pub mod keys;
pub mod notify;
pub mod outbox;
pub mod output;
pub mod projects;
pub mod prune;
pub mod rate_limits;
pub mod reencrypt;
pub mod secrets;
pub mod tls;
pub mod webhooks;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::DbConfig;

pub use deadpool_postgres::{Object as Client, Pool, Transaction};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A query failed.
    #[error("database: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// Applying migrations failed.
    #[error("migration: {0}")]
    Migration(#[from] refinery::Error),
    /// `DATABASE_URL` is not a valid connection string.
    #[error("invalid DATABASE_URL: {0}")]
    Config(String),
    /// A stored value does not decode (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The schema is older than this binary needs (its migrations have not
    /// run yet: `rdev-api migrate`, or an API instance of this version).
    #[error("database schema is at V{have}, this binary needs V{need}; apply migrations first")]
    SchemaBehind {
        /// Newest migration applied.
        have: i64,
        /// Newest migration this binary knows.
        need: i64,
    },
}

impl From<crate::crypto::CryptoError> for DbError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        DbError::Corrupt(e.to_string())
    }
}

impl DbError {
    /// The SQLSTATE of a failed query, if any.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Query(e) => e.code(),
            _ => None,
        }
    }

    /// Whether a unique constraint was violated.
    pub fn is_unique_violation(&self) -> bool {
        self.code() == Some(&SqlState::UNIQUE_VIOLATION)
    }
}

/// Builds the connection pool. Connections are opened lazily.
pub fn pool(cfg: &DbConfig) -> Result<Pool, DbError> {
    let (pg, tls_settings) = connection_config(cfg)?;
    pool_of(pg, &tls_settings, cfg.pool_size)
}

/// A pool of at most `size` connections for statements that find every
/// row they touch by a key (the worker's claims and finishes): each
/// prepared statement is planned once per connection
/// (`plan_cache_mode=force_generic_plan`).
///
/// PostgreSQL otherwise plans a prepared statement afresh for each of its
/// first five executions on a connection before it considers the generic
/// plan, and the worker's batched claims and finishes are sixteen
/// statements each (one per batch size), whose plans take 1–9 ms of the
/// server's CPU apiece: on a newly started worker that planning was a
/// third of PostgreSQL's time for its first few thousand commands
/// (docs/BENCHMARKS.md). A generic plan is made without the parameters'
/// values and kept until the tables' statistics change (an `ANALYZE`), so
/// only statements whose plan cannot depend on them belong here: a lookup
/// of `id = $n` is a probe of an index whatever the table's size, while
/// `id = ANY($1)` planned on an empty table stays a sequential scan as the
/// table grows. The worker's test
/// `the_write_pool_plans_claims_and_finishes_once_as_key_lookups` checks
/// the claims' and finishes' plans. The writers also write webhook
/// deliveries here (`webhooks::write_events`: an insert from arrays, and
/// the lookup of the endpoints that want an event, which, planned while
/// `webhooks` is small, walks every live endpoint through
/// `webhooks_fanout` until that table is next analysed).
pub fn key_lookup_pool(cfg: &DbConfig, size: usize) -> Result<Pool, DbError> {
    let (mut pg, tls_settings) = connection_config(cfg)?;
    add_option(&mut pg, "-c plan_cache_mode=force_generic_plan");
    pool_of(pg, &tls_settings, size)
}

fn pool_of(
    pg: tokio_postgres::Config,
    tls_settings: &tls::Settings,
    size: usize,
) -> Result<Pool, DbError> {
    let mc = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match tls::connector(tls_settings)? {
        Some(tls) => Manager::from_config(pg, tls, mc),
        None => Manager::from_config(pg, NoTls, mc),
    };
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// How every connection of `cfg` is made: the pool's, and a listener's
/// ([`notify::listen`]).
fn connection_config(cfg: &DbConfig) -> Result<(tokio_postgres::Config, tls::Settings), DbError> {
    // `sslmode=verify-full&sslrootcert=…` are read here (see `tls`).
    let (url, tls_settings) = tls::split(cfg.database_url.expose())?;
    let mut pg =
        tokio_postgres::Config::from_str(&url).map_err(|e| DbError::Config(e.to_string()))?;
    pg.ssl_mode(tls_settings.postgres_mode());
    pg.connect_timeout(Duration::from_secs(5));
    if pg.get_application_name().is_none() {
        pg.application_name("rdev");
    }
    if cfg.statement_timeout_s > 0 {
        add_option(
            &mut pg,
            &format!("-c statement_timeout={}s", cfg.statement_timeout_s),
        );
    }
    // A connection whose peer vanished (a black-holed server) is noticed
    // instead of hanging its caller forever.
    pg.keepalives_idle(Duration::from_secs(30));
    pg.tcp_user_timeout(Duration::from_secs(30));
    Ok((pg, tls_settings))
}

/// Adds `option` to the connection's `options`, after any the URL has.
fn add_option(pg: &mut tokio_postgres::Config, option: &str) {
    let options = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {option}"),
        _ => option.to_owned(),
    };
    pg.options(options);
}

/// The newest migration embedded in this binary: the schema version it
/// needs. Migrations are expand/contract safe (ARCHITECTURE.md), so a newer
/// schema serves an older binary too.
pub fn schema_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// The newest migration applied to the database (0 when none is).
pub async fn applied_schema_version(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<i64, DbError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0)::int8 FROM refinery_schema_history",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Waits (up to `wait`) until the database schema is at least the one this
/// binary needs, so a worker or dispatcher started before the API migrated
/// does not run against tables it does not know. A database that does not
/// answer is not held against it (it retries its queries anyway).
pub async fn require_schema(pool: &Pool, wait: Duration) -> Result<(), DbError> {
    let need = schema_version();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let have = match pool.get().await {
            Ok(client) => match applied_schema_version(&client).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the schema version; going on");
                    return Ok(());
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the schema version; going on");
                return Ok(());
            }
        };
        if have >= need {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DbError::SchemaBehind { have, need });
        }
        tracing::warn!(
            have,
            need,
            "database schema is older than this binary; waiting for migrations"
        );
        tokio::time::sleep(Duration::from_secs(2).min(wait)).await;
    }
}

/// Key of the advisory lock held while migrating, so several processes
/// starting at once apply each migration exactly once.
const MIGRATION_LOCK: i64 = 0x0072_6465_766d_6967; // "rdevmig"

/// What a per-project advisory lock serializes. Each kind hashes the
/// project's id with its own seed, so two kinds never wait for each other.
#[derive(Clone, Copy, Debug)]
pub enum ProjectLock {
    /// Claims of a project with `max_concurrency` ([`commands::claim`]):
    /// workers racing for the last slot cannot both win.
    Claim,
    /// Writes of a project's secrets: the count checked against the
    /// per-project cap holds until the transaction ends.
    Secrets,
}

impl ProjectLock {
    /// The seed of `hashtextextended(project_id, seed)`.
    const fn seed(self) -> i64 {
        match self {
            Self::Claim => 7,
            Self::Secrets => 19,
        }
    }
}

/// Takes the transaction-scoped advisory lock `kind` of one project
/// (released at commit or rollback). Call inside a transaction.
pub async fn lock_project(
    client: &impl deadpool_postgres::GenericClient,
    kind: ProjectLock,
    project_id: uuid::Uuid,
) -> Result<(), DbError> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text, $2))",
            &[&project_id.to_string(), &kind.seed()],
        )
        .await?;
    Ok(())
}

/// Applies pending migrations under a PostgreSQL advisory lock; returns the
/// names of the migrations applied by this call.
pub async fn migrate(pool: &Pool) -> Result<Vec<String>, DbError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // An older binary against a newer schema (a rollback, or the old half
    // of a rolling upgrade): migrations only ever expand the schema, so it
    // runs as it is; refinery would refuse the versions it does not know.
    let (have, need) = (applied_schema_version(&client).await?, schema_version());
    if have > need {
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        tracing::info!(
            schema = have,
            binary = need,
            "the database schema is newer than this binary; nothing to migrate"
        );
        return Ok(Vec::new());
    }
    // A migration may rewrite a big table: no statement timeout for it.
    client.batch_execute("SET statement_timeout = 0").await?;
    let result = embedded::migrations::runner()
        .run_async(&mut **client)
        .await;
    let indexes = match &result {
        Ok(_) => indexes::ensure(&client).await.map(Some),
        Err(_) => Ok(None),
    };
    let _ = client.batch_execute("RESET statement_timeout").await;
    // Unlock even when the run failed; the session ending would release it too.
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = result?;
    let mut applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect();
    applied.extend(
        indexes?
            .unwrap_or_default()
            .into_iter()
            .map(|i| format!("index {i}")),
    );
    Ok(applied)
}

/// Applies pending migrations as the schema owner: through
/// `RDEV_MIGRATE_DATABASE_URL` when it is set (a one-connection pool for the
/// run), else through `runtime` (the pool of `DATABASE_URL`).
pub async fn migrate_as_owner(cfg: &DbConfig, runtime: &Pool) -> Result<Vec<String>, DbError> {
    match &cfg.migrate_database_url {
        Some(url) => {
            let owner = pool(&DbConfig {
                database_url: url.clone(),
                migrate_database_url: None,
                pool_size: 1,
                statement_timeout_s: 0,
            })?;
            let applied = migrate(&owner).await;
            owner.close();
            applied
        }
        None => migrate(runtime).await,
    }
}

/// Answers whether the database responds, for `/ready`.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// The prepared statement for `sql` on this connection, prepared on first use
/// and then taken from deadpool's per-connection cache. A statement given as
/// text costs two round trips (parse/describe, then bind/execute) and a
/// parse and plan in PostgreSQL on every call; a cached one costs one round
/// trip. Use it for statements on hot paths whose text comes from a fixed
/// set (the cache holds one entry per distinct text per connection).
pub(crate) async fn prepared(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
) -> Result<tokio_postgres::Statement, DbError> {
    Ok(client.prepare_cached(sql).await?)
}

/// Most rows one multi-row `INSERT` ([`commands::insert_many`],
/// [`audit::append_many`], [`outbox::insert_many`]) writes; longer lists
/// take several statements. A power of two: a list is written in runs of
/// 1, 2, 4, … rows, one prepared statement per size.
pub const MAX_INSERT: usize = 64;
const _: () = assert!(MAX_INSERT.is_power_of_two());

/// `INSERT … VALUES` statements for 1, 2, 4, … [`MAX_INSERT`] rows (index
/// `log2(rows)`): `head` (up to `VALUES`), then the tuples of `width`
/// parameters numbered from `$1`, then `tail`.
pub(crate) fn insert_statements(head: &str, width: usize, tail: &str) -> Vec<String> {
    (0..=MAX_INSERT.ilog2())
        .map(|log| {
            let tuples: Vec<String> = (0..1usize << log)
                .map(|r| {
                    let params: Vec<String> =
                        (1..=width).map(|c| format!("${}", r * width + c)).collect();
                    format!("({})", params.join(","))
                })
                .collect();
            format!("{head} VALUES {}{tail}", tuples.join(","))
        })
        .collect()
}

/// `items` in runs of 1, 2, 4, … [`MAX_INSERT`] (longest first), and the
/// index in [`insert_statements`] of each run's statement. Every size
/// would be one prepared statement per table in every pooled backend, the
/// 64-row one of `commands` ~256 KiB of plan; powers of two keep it to
/// seven per table, for at most six statements a batch.
pub(crate) fn insert_runs<T>(items: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let log = rest.len().ilog2().min(MAX_INSERT.ilog2());
        let (run, tail) = rest.split_at(1 << log);
        rest = tail;
        Some((log as usize, run))
    })
}

/// Decodes a text column into an enum through `FromStr`.
pub(crate) fn parse_col<T: FromStr>(value: &str, what: &str) -> Result<T, DbError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e: T::Err| DbError::Corrupt(format!("{what}: {e}")))
}

/// Decodes a jsonb column into a type.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    what: &str,
) -> Result<T, DbError> {
    serde_json::from_value(value).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

/// Encodes a value as jsonb.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
