//! `commands` repository: insert, read, and the state transitions
//! (claim, finish) guarded by conditional updates.

use std::collections::BTreeMap;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{DbError, from_json, insert_runs, insert_statements, parse_col, prepared, to_json};
use crate::containment::{NetworkMode, ResourceLimits};
use crate::domain::{Command, CommandSpec, CommandStatus, EndReason, ExecutorConfig};
use crate::interactive::{StdinMode, TtySize};

/// A command to insert.
#[derive(Clone, Debug)]
pub struct NewCommand {
    /// uuid v7 chosen by the caller (it also names the outbox message).
    pub id: Uuid,
    /// Project it runs in.
    pub project_id: Uuid,
    /// Key that created it.
    pub api_key_id: Option<Uuid>,
    /// What to run.
    pub spec: CommandSpec,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Bytes fed to standard input.
    pub stdin: Option<Vec<u8>>,
    /// Standard input is fed while it runs (`"stdin": "pipe"`).
    pub stdin_pipe: bool,
    /// A pseudo-terminal of this size.
    pub tty: Option<TtySize>,
    /// 0–9.
    pub priority: i16,
    /// Wall-clock limit.
    pub timeout_s: i32,
    /// Client-chosen key making the request idempotent per API key.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request that used `idempotency_key`
    /// ([`request_fingerprint`]); a retry must match it.
    pub idempotency_fingerprint: Option<Vec<u8>>,
}

/// The fingerprint of a request made with an `Idempotency-Key`: SHA-256 of
/// its canonical JSON (the caller's choice of fields, keys in a fixed order).
pub fn request_fingerprint(canonical: &serde_json::Value) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

/// Filter of [`list`].
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this project.
    pub project_id: Option<Uuid>,
    /// Only projects in this set (the key's restriction).
    pub project_ids: Option<Vec<Uuid>>,
    /// Only this status.
    pub status: Option<CommandStatus>,
    /// Only commands older than this id (cursor).
    pub before: Option<Uuid>,
    /// Page size.
    pub limit: i64,
}

/// A command claimed by a worker, with what it needs to run it.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The command, now `running`.
    pub command: Command,
    /// Bytes for standard input.
    pub stdin: Option<Vec<u8>>,
    /// The project's executor.
    pub executor: ExecutorConfig,
    /// The project's environment (the command's own env overrides it).
    pub project_env: BTreeMap<String, String>,
    /// Stored-output cap.
    pub max_output_bytes: i64,
    /// The project's network mode.
    pub network: NetworkMode,
    /// The project's resource limits (absent ones: the server's defaults).
    pub limits: ResourceLimits,
    /// Whether the project was deleted after the command was queued.
    pub project_deleted: bool,
    /// The secrets it asked for, and the project's policy now.
    pub secrets: super::secrets::Requested,
}

/// The terminal facts a worker records.
#[derive(Clone, Debug)]
pub struct Finish {
    /// Terminal status.
    pub status: CommandStatus,
    /// Exit code, when the process ran.
    pub exit_code: Option<i32>,
    /// Error text, when relevant.
    pub error: Option<String>,
    /// Why it ended.
    pub reason: EndReason,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Bytes produced.
    pub output_bytes: i64,
    /// Whether stored output was cut.
    pub truncated: bool,
}

/// The sealed columns (see [`crate::crypto`]).
pub const ENV_FIELD: &str = "commands.env";
/// The sealed stdin column.
pub const STDIN_FIELD: &str = "commands.stdin";

/// Columns of a command joined with its project's name; the command table is `c`.
macro_rules! cols {
    () => {
        "c.id, c.project_id, c.api_key_id, c.command, c.argv, c.env, c.priority, \
         c.stdin_pipe, c.stdin IS NOT NULL AS stdin_fixed, c.tty_cols, c.tty_rows, \
         c.status, c.exit_code, c.error, c.reason, c.signal, c.timeout_s, c.worker_id, c.attempt, \
         c.output_bytes, c.truncated, c.created_at, c.started_at, c.finished_at, \
         p.name AS project"
    };
}
const COLS: &str = cols!();

/// A claimed command's columns (for [`claimed_of`]): [`COLS`] and what the
/// worker needs of the command and its project to run it.
const CLAIMED_COLS: &str = concat!(
    cols!(),
    ", c.stdin, p.executor, p.env AS project_env, p.max_output_bytes, \
     p.network, p.limits, p.deleted_at IS NOT NULL AS project_deleted, \
     c.secrets, c.secret_files, p.allowed_secrets"
);

fn from_row(row: &Row) -> Result<Command, DbError> {
    let command: Option<String> = row.try_get("command")?;
    let argv: Option<Vec<String>> = row.try_get("argv")?;
    let spec = match (command, argv) {
        (Some(c), None) => CommandSpec::Shell(c),
        (None, Some(a)) => CommandSpec::Argv(a),
        _ => return Err(DbError::Corrupt("commands: command xor argv".into())),
    };
    let status: CommandStatus = parse_col(row.try_get::<_, &str>("status")?, "commands.status")?;
    let exit_code: Option<i32> = row.try_get("exit_code")?;
    let error: Option<String> = row.try_get("error")?;
    let reason = match row.try_get::<_, Option<&str>>("reason")? {
        Some(r) => Some(parse_col(r, "commands.reason")?),
        None => EndReason::infer(status, exit_code, error.as_deref()),
    };
    let stdin = match (row.try_get("stdin_pipe")?, row.try_get("stdin_fixed")?) {
        (true, _) => StdinMode::Pipe,
        (false, true) => StdinMode::Fixed,
        (false, false) => StdinMode::Closed,
    };
    let tty = tty_of(row)?;
    Ok(Command {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        project: row.try_get("project")?,
        api_key_id: row.try_get("api_key_id")?,
        spec,
        env: from_json(
            crate::crypto::ring().open_json(row.try_get("env")?, ENV_FIELD)?,
            ENV_FIELD,
        )?,
        stdin,
        tty,
        priority: row.try_get("priority")?,
        status,
        exit_code,
        error,
        reason,
        signal: row.try_get("signal")?,
        timeout_s: row.try_get("timeout_s")?,
        worker_id: row.try_get("worker_id")?,
        attempt: row.try_get("attempt")?,
        output_bytes: row.try_get("output_bytes")?,
        truncated: row.try_get("truncated")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// The `tty_cols`/`tty_rows` of a row.
fn tty_of(row: &Row) -> Result<Option<TtySize>, DbError> {
    let cols: Option<i32> = row.try_get("tty_cols")?;
    let rows: Option<i32> = row.try_get("tty_rows")?;
    Ok(match (cols, rows) {
        (Some(c), Some(r)) => Some(TtySize {
            cols: u16::try_from(c).map_err(|_| DbError::Corrupt("commands.tty_cols".into()))?,
            rows: u16::try_from(r).map_err(|_| DbError::Corrupt("commands.tty_rows".into()))?,
        }),
        _ => None,
    })
}

/// Runs a statement that returns at most one command row (prepared once
/// per connection).
async fn query_command(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Command>, DbError> {
    client
        .query_opt(&prepared(client, sql).await?, params)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Inserts a command. Returns `None` when the idempotency key was already
/// used by this API key (the caller then fetches the original).
pub async fn insert(
    client: &impl deadpool_postgres::GenericClient,
    c: &NewCommand,
) -> Result<Option<Command>, DbError> {
    Ok(insert_many(client, &[c]).await?.pop().flatten())
}

/// [`insert`] for several commands, up to [`MAX_INSERT`](super::MAX_INSERT)
/// to a statement: each stored command in the order of `commands`, `None`
/// where an idempotency key was already used.
pub async fn insert_many(
    client: &impl deadpool_postgres::GenericClient,
    commands: &[&NewCommand],
) -> Result<Vec<Option<Command>>, DbError> {
    static SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        insert_statements(
            "WITH c AS (INSERT INTO commands (id, project_id, api_key_id, command, argv, env, \
             stdin, priority, status, timeout_s, idempotency_key, stdin_pipe, tty_cols, tty_rows, \
             idempotency_fingerprint)",
            15,
            &format!(
                " ON CONFLICT (api_key_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
                 DO NOTHING RETURNING *) \
                 SELECT {COLS} FROM c JOIN projects p ON p.id = c.project_id"
            ),
        )
    });
    /// A command's values that are not its fields as they are.
    struct Derived<'a> {
        command: Option<&'a str>,
        argv: Option<&'a [String]>,
        env: serde_json::Value,
        stdin: Option<Vec<u8>>,
        tty_cols: Option<i32>,
        tty_rows: Option<i32>,
    }
    let ring = crate::crypto::ring();
    let mut stored = Vec::with_capacity(commands.len());
    for (statement, chunk) in insert_runs(commands) {
        let derived: Vec<Derived<'_>> = chunk
            .iter()
            .map(|c| {
                let (command, argv) = match &c.spec {
                    CommandSpec::Shell(s) => (Some(s.as_str()), None),
                    CommandSpec::Argv(a) => (None, Some(a.as_slice())),
                };
                Derived {
                    command,
                    argv,
                    env: ring.seal_json(&to_json(&c.env), ENV_FIELD),
                    stdin: c.stdin.as_deref().map(|s| ring.seal(s, STDIN_FIELD)),
                    tty_cols: c.tty.map(|t| i32::from(t.cols)),
                    tty_rows: c.tty.map(|t| i32::from(t.rows)),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .zip(&derived)
            .flat_map(|(c, d)| -> [&(dyn ToSql + Sync); 15] {
                [
                    &c.id,
                    &c.project_id,
                    &c.api_key_id,
                    &d.command,
                    &d.argv,
                    &d.env,
                    &d.stdin,
                    &c.priority,
                    &"queued",
                    &c.timeout_s,
                    &c.idempotency_key,
                    &c.stdin_pipe,
                    &d.tty_cols,
                    &d.tty_rows,
                    &c.idempotency_fingerprint,
                ]
            })
            .collect();
        let rows = client
            .query(&prepared(client, &SQL[statement]).await?, &params)
            .await?;
        // `RETURNING` does not promise the order of `VALUES`: by id.
        let mut by_id = rows
            .iter()
            .map(|r| from_row(r).map(|c| (c.id, c)))
            .collect::<Result<std::collections::HashMap<Uuid, Command>, DbError>>()?;
        stored.extend(chunk.iter().map(|c| by_id.remove(&c.id)));
    }
    Ok(stored)
}

/// The command an API key created with an idempotency key, and the
/// fingerprint of that request (none for rows from before fingerprints).
pub async fn find_by_idempotency_key(
    client: &impl deadpool_postgres::GenericClient,
    api_key_id: Uuid,
    key: &str,
) -> Result<Option<(Command, Option<Vec<u8>>)>, DbError> {
    let sql = format!(
        "SELECT {COLS}, c.idempotency_fingerprint FROM commands c JOIN projects p ON p.id = c.project_id \
         WHERE c.api_key_id = $1 AND c.idempotency_key = $2"
    );
    let Some(row) = client.query_opt(&sql, &[&api_key_id, &key]).await? else {
        return Ok(None);
    };
    Ok(Some((
        from_row(&row)?,
        row.try_get("idempotency_fingerprint")?,
    )))
}

/// A command by id.
pub async fn get(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<Command>, DbError> {
    let sql = format!(
        "SELECT {COLS} FROM commands c JOIN projects p ON p.id = c.project_id WHERE c.id = $1"
    );
    query_command(client, &sql, &[&id]).await
}

/// Commands, newest first.
pub async fn list(
    client: &impl deadpool_postgres::GenericClient,
    f: &ListFilter,
) -> Result<Vec<Command>, DbError> {
    let sql = format!(
        "SELECT {COLS} FROM commands c JOIN projects p ON p.id = c.project_id \
         WHERE ($1::uuid IS NULL OR c.project_id = $1) \
         AND ($2::uuid[] IS NULL OR c.project_id = ANY($2)) \
         AND ($3::text IS NULL OR c.status = $3) \
         AND ($4::uuid IS NULL OR c.id < $4) \
         ORDER BY c.id DESC LIMIT $5"
    );
    let status = f.status.map(|s| s.as_str());
    let rows = client
        .query(
            &sql,
            &[&f.project_id, &f.project_ids, &status, &f.before, &f.limit],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Result of [`claim`].
#[derive(Debug)]
pub enum ClaimOutcome {
    /// The command is now `running` for this worker.
    Claimed(Box<Claimed>),
    /// It was not queued (claimed before, cancelled, finished): skip it.
    NotQueued,
    /// Its project already runs `max_concurrency` commands: try later.
    AtLimit,
    /// It is already `running` under this claim token: an earlier attempt
    /// of this same claim committed but its answer was lost. Run it (the
    /// `command.started` event was stored with that commit).
    Resumed(Box<Claimed>),
}

/// Moves a command from `queued` to `running` for `worker_id`. The
/// conditional update is what makes a redelivered message harmless. For a
/// project with `max_concurrency`, the check and the claim happen under a
/// per-project advisory lock, so workers racing for the last slot cannot
/// both win. Call inside a transaction (the lock is transaction-scoped).
pub async fn claim(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    worker_id: &str,
    token: Uuid,
) -> Result<ClaimOutcome, DbError> {
    // Fast path: projects without a limit claim in one statement.
    if let Some(c) = claim_if(client, id, worker_id, token, "p.max_concurrency IS NULL").await? {
        return Ok(ClaimOutcome::Claimed(Box::new(c)));
    }
    let row = client
        .query_opt(
            "SELECT p.id, p.max_concurrency FROM commands c JOIN projects p ON p.id = c.project_id \
             WHERE c.id = $1 AND c.status = 'queued'",
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return resume(client, id, worker_id, token).await;
    };
    let project_id: Uuid = row.try_get(0)?;
    let Some(max) = row.try_get::<_, Option<i32>>(1)? else {
        // The limit was removed between the two statements.
        return Ok(claim_if(client, id, worker_id, token, "true")
            .await?
            .map_or(ClaimOutcome::NotQueued, |c| {
                ClaimOutcome::Claimed(Box::new(c))
            }));
    };
    super::lock_project(client, super::ProjectLock::Claim, project_id).await?;
    let running: i64 = client
        .query_one(
            "SELECT count(*) FROM commands WHERE project_id = $1 AND status = 'running'",
            &[&project_id],
        )
        .await?
        .try_get(0)?;
    if running >= i64::from(max) {
        return Ok(ClaimOutcome::AtLimit);
    }
    Ok(claim_if(client, id, worker_id, token, "true")
        .await?
        .map_or(ClaimOutcome::NotQueued, |c| {
            ClaimOutcome::Claimed(Box::new(c))
        }))
}

/// The claim statement, with an extra condition on the project `p`.
///
/// `started_at` and `finished_at` are the moments of the statements
/// (`clock_timestamp()`), not of their transactions' start (`now()`): a
/// claim may wait for the project's advisory lock while another command
/// finishes, and the recorded spans must then not overlap.
async fn claim_if(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    worker_id: &str,
    token: Uuid,
    project_condition: &str,
) -> Result<Option<Claimed>, DbError> {
    let sql = format!(
        "WITH c AS (UPDATE commands SET status = 'running', worker_id = $2, claim_token = $3, \
         started_at = clock_timestamp(), heartbeat_at = now(), attempt = attempt + 1 WHERE id = $1 AND status = 'queued' \
         AND (SELECT {project_condition} FROM projects p WHERE p.id = commands.project_id) \
         RETURNING *) \
         SELECT {CLAIMED_COLS} FROM c JOIN projects p ON p.id = c.project_id"
    );
    let stmt = prepared(client, &sql).await?;
    let Some(row) = client.query_opt(&stmt, &[&id, &worker_id, &token]).await? else {
        return Ok(None);
    };
    claimed_of(&row).map(Some)
}

/// [`claim`] as one statement committed on its own, for the common case
/// where nothing else has to commit with it: the project has no
/// `max_concurrency` and no webhook endpoint wants `event`
/// (`command.started`) about it (`webhooks::write_event` would write
/// nothing). `None` when the command was not claimed this way (not
/// queued, a limited project, an endpoint that wants the event): then
/// claim it with [`claim`] in a transaction.
///
/// One round trip instead of four (`BEGIN`, the claim, the endpoints'
/// read, `COMMIT`). Call it outside a transaction.
pub async fn claim_alone(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    worker_id: &str,
    token: Uuid,
    event: &str,
) -> Result<Option<Claimed>, DbError> {
    let mut claimed = claim_many_alone(client, worker_id, &[(id, token)], event).await?;
    Ok(claimed.pop().map(|(_, c)| c))
}

/// Most commands [`claim_many_alone`], [`claim_many`],
/// [`finish_many_alone`] and [`finish_many`] write in one statement.
pub const MAX_MANY: usize = 16;

/// [`claim_alone`] for several commands in one statement (one commit):
/// `claims` are (command, claim token) pairs; those past the first
/// [`MAX_MANY`] are left alone. Returns the claimed commands, each with
/// the token it was claimed under; a pair that is not among them was not
/// claimed this way (as [`claim_alone`]'s `None`). A command named twice
/// is claimed once, under one of its tokens.
///
/// Each command is its own `UPDATE … WHERE id = $n` (a data-modifying
/// `WITH` per command), planned as [`claim_alone`]'s one: found by its
/// key. One `UPDATE` joined with the list (`id = ANY($1)`) was tried
/// first; PostgreSQL cached a plan made while the table was small (a
/// sequential scan, or a scan of every queued command through
/// `commands_status`) and kept it as the table grew.
pub async fn claim_many_alone(
    client: &impl deadpool_postgres::GenericClient,
    worker_id: &str,
    claims: &[(Uuid, Uuid)],
    event: &str,
) -> Result<Vec<(Uuid, Claimed)>, DbError> {
    // $1 the worker, $2 the event, then (command, token) per claim.
    static SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        claim_statements(
            &format!(
                "p.max_concurrency IS NULL AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE {})",
                super::webhooks::wants_event("w", "$2", "p.id")
            ),
            3,
        )
    });
    claim_many_with(client, &SQL, vec![&worker_id, &event], claims).await
}

/// [`claim_many_alone`] without its check on webhook endpoints, in the
/// caller's transaction (where the `command.started` deliveries are
/// written too): commands of projects with `max_concurrency` are still
/// left alone (they need [`claim`]'s project lock).
pub async fn claim_many(
    client: &impl deadpool_postgres::GenericClient,
    worker_id: &str,
    claims: &[(Uuid, Uuid)],
) -> Result<Vec<(Uuid, Claimed)>, DbError> {
    // $1 the worker, then (command, token) per claim.
    static SQL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| claim_statements("p.max_concurrency IS NULL", 2));
    claim_many_with(client, &SQL, vec![&worker_id], claims).await
}

/// The claim statements for 1 to [`MAX_MANY`] commands, under `condition`
/// on the project `p`; the (command, token) parameters start at `$first`.
fn claim_statements(condition: &str, first: usize) -> Vec<String> {
    many_statements(
        |i| {
            let (id, token) = (2 * i + first, 2 * i + first + 1);
            format!(
                "UPDATE commands SET status = 'running', worker_id = $1, claim_token = ${token}, \
                 started_at = clock_timestamp(), heartbeat_at = now(), attempt = attempt + 1 \
                 WHERE id = ${id} AND status = 'queued' \
                 AND (SELECT {condition} FROM projects p WHERE p.id = commands.project_id) \
                 RETURNING *"
            )
        },
        &format!("{CLAIMED_COLS}, c.claim_token"),
    )
}

/// Runs the statement of `statements` for `claims` (at most [`MAX_MANY`]),
/// after the leading parameters `head`.
async fn claim_many_with<'a>(
    client: &impl deadpool_postgres::GenericClient,
    statements: &[String],
    mut params: Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>,
    claims: &'a [(Uuid, Uuid)],
) -> Result<Vec<(Uuid, Claimed)>, DbError> {
    let claims = &claims[..claims.len().min(MAX_MANY)];
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    for (id, token) in claims {
        params.push(id);
        params.push(token);
    }
    let stmt = prepared(client, &statements[claims.len() - 1]).await?;
    let rows = client.query(&stmt, &params).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("claim_token")?, claimed_of(row)?)))
        .collect()
}

/// The statements of [`claim_many_alone`] and [`finish_many_alone`] for 1
/// to [`MAX_MANY`] commands: `update(i)` is the `i`th command's `UPDATE …
/// RETURNING *`; their rows are selected as `cols` of `c` joined with its
/// project `p`.
fn many_statements(update: impl Fn(usize) -> String, cols: &str) -> Vec<String> {
    (1..=MAX_MANY)
        .map(|n| {
            let with: Vec<String> = (0..n).map(|i| format!("u{i} AS ({})", update(i))).collect();
            let all: Vec<String> = (0..n).map(|i| format!("SELECT * FROM u{i}")).collect();
            format!(
                "WITH {} SELECT {cols} FROM ({}) c JOIN projects p ON p.id = c.project_id",
                with.join(", "),
                all.join(" UNION ALL ")
            )
        })
        .collect()
}

/// The command `worker_id` already claimed with `token` (its earlier
/// attempt committed; the answer was lost), else `NotQueued`.
async fn resume(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    worker_id: &str,
    token: Uuid,
) -> Result<ClaimOutcome, DbError> {
    let sql = format!(
        "SELECT {CLAIMED_COLS} \
         FROM commands c JOIN projects p ON p.id = c.project_id \
         WHERE c.id = $1 AND c.status = 'running' AND c.worker_id = $2 AND c.claim_token = $3"
    );
    match client.query_opt(&sql, &[&id, &worker_id, &token]).await? {
        Some(row) => Ok(ClaimOutcome::Resumed(Box::new(claimed_of(&row)?))),
        None => Ok(ClaimOutcome::NotQueued),
    }
}

/// A claimed command's row (the command's columns and its project's).
fn claimed_of(row: &Row) -> Result<Claimed, DbError> {
    let ring = crate::crypto::ring();
    let stdin: Option<Vec<u8>> = row.try_get("stdin")?;
    Ok(Claimed {
        command: from_row(row)?,
        stdin: stdin.map(|s| ring.open(&s, STDIN_FIELD)).transpose()?,
        executor: from_json(row.try_get("executor")?, "projects.executor")?,
        project_env: from_json(
            ring.open_json(row.try_get("project_env")?, super::projects::ENV_FIELD)?,
            super::projects::ENV_FIELD,
        )?,
        max_output_bytes: row.try_get("max_output_bytes")?,
        network: parse_col(row.try_get::<_, &str>("network")?, "projects.network")?,
        limits: from_json(row.try_get("limits")?, "projects.limits")?,
        project_deleted: row.try_get("project_deleted")?,
        secrets: super::secrets::Requested {
            env: row.try_get("secrets")?,
            files: from_json(row.try_get("secret_files")?, "commands.secret_files")?,
            allowed: row.try_get("allowed_secrets")?,
        },
    })
}

/// Records the end of a running command claimed by `worker_id`. Returns
/// `None` when the command is no longer this worker's running command (the
/// reaper or a cancel got there first): terminal states are final.
pub async fn finish(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    worker_id: &str,
    f: &Finish,
) -> Result<Option<Command>, DbError> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH c AS (UPDATE commands SET status = $3, exit_code = $4, error = $5, \
             output_bytes = $6, truncated = $7, reason = $8, signal = $9, \
             finished_at = clock_timestamp() \
             WHERE id = $1 AND worker_id = $2 AND status = 'running' RETURNING *) \
             SELECT {COLS} FROM c JOIN projects p ON p.id = c.project_id"
        )
    });
    let status = f.status.as_str();
    let reason = f.reason.as_str();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
        &id,
        &worker_id,
        &status,
        &f.exit_code,
        &f.error,
        &f.output_bytes,
        &f.truncated,
        &reason,
        &f.signal,
    ];
    query_command(client, &SQL, &params).await
}

/// [`finish`] as one statement committed on its own, when no webhook
/// endpoint wants the finish's event (`event`, the event type of
/// `f.status`) about the command's project, so nothing else has to commit
/// with it. `None` when it did not finish the command this way (an
/// endpoint wants the event, or the command is no longer this worker's
/// running one): then call [`finish`] in a transaction, which tells the
/// two apart. Call it outside a transaction.
pub async fn finish_alone(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    worker_id: &str,
    f: &Finish,
    event: &str,
) -> Result<Option<Command>, DbError> {
    let mut done = finish_many_alone(client, worker_id, &[(id, f, event)]).await?;
    Ok(done.pop())
}

/// [`finish_alone`] for several commands in one statement (one commit):
/// `ends` are (command, its finish, the finish's event type); those past
/// the first [`MAX_MANY`] are left alone. Returns the commands finished;
/// one not among them was not finished this way (as [`finish_alone`]'s
/// `None`). Each command is its own `UPDATE`, as in [`claim_many_alone`].
pub async fn finish_many_alone(
    client: &impl deadpool_postgres::GenericClient,
    worker_id: &str,
    ends: &[(Uuid, &Finish, &str)],
) -> Result<Vec<Command>, DbError> {
    static SQL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| finish_statements(true));
    let ends: Vec<(Uuid, &Finish, Option<&str>)> = ends
        .iter()
        .map(|(id, f, event)| (*id, *f, Some(*event)))
        .collect();
    finish_many_with(client, &SQL, worker_id, &ends).await
}

/// [`finish`] for several running commands of `worker_id` in one
/// statement, in the caller's transaction (where their events' deliveries
/// are written too): `ends` are (command, its finish); those past the first
/// [`MAX_MANY`] are left alone. Returns the commands finished; one not among
/// them is no longer this worker's running command (as [`finish`]'s
/// `None`).
pub async fn finish_many(
    client: &impl deadpool_postgres::GenericClient,
    worker_id: &str,
    ends: &[(Uuid, &Finish)],
) -> Result<Vec<Command>, DbError> {
    static SQL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| finish_statements(false));
    let ends: Vec<(Uuid, &Finish, Option<&str>)> =
        ends.iter().map(|(id, f)| (*id, *f, None)).collect();
    finish_many_with(client, &SQL, worker_id, &ends).await
}

/// The finish statements for 1 to [`MAX_MANY`] commands: `$1` the worker,
/// then eight parameters per command, and with `alone` a ninth, the
/// finish's event type, which no endpoint may want.
fn finish_statements(alone: bool) -> Vec<String> {
    let per = if alone { 9 } else { 8 };
    many_statements(
        |i| {
            let n = |k: usize| format!("${}", per * i + k + 1);
            let nobody_wants = if alone {
                format!(
                    " AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE {})",
                    super::webhooks::wants_event("w", &n(9), "commands.project_id")
                )
            } else {
                String::new()
            };
            format!(
                "UPDATE commands SET status = {}, exit_code = {}, error = {}, \
                 output_bytes = {}, truncated = {}, reason = {}, signal = {}, \
                 finished_at = clock_timestamp() \
                 WHERE id = {} AND worker_id = $1 AND status = 'running'{nobody_wants} \
                 RETURNING *",
                n(1),
                n(2),
                n(3),
                n(4),
                n(5),
                n(6),
                n(7),
                n(8),
            )
        },
        COLS,
    )
}

/// Runs the statement of `statements` for `ends` (at most [`MAX_MANY`]):
/// (command, its finish, and the event type when the statements check it).
async fn finish_many_with(
    client: &impl deadpool_postgres::GenericClient,
    statements: &[String],
    worker_id: &str,
    ends: &[(Uuid, &Finish, Option<&str>)],
) -> Result<Vec<Command>, DbError> {
    let ends = &ends[..ends.len().min(MAX_MANY)];
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<(&str, &str)> = ends
        .iter()
        .map(|(_, f, _)| (f.status.as_str(), f.reason.as_str()))
        .collect();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&worker_id];
    for ((id, f, event), (status, reason)) in ends.iter().zip(&texts) {
        params.extend([
            status as &(dyn tokio_postgres::types::ToSql + Sync),
            &f.exit_code,
            &f.error,
            &f.output_bytes,
            &f.truncated,
            reason,
            &f.signal,
            id,
        ]);
        if let Some(event) = event {
            params.push(event);
        }
    }
    let stmt = prepared(client, &statements[ends.len() - 1]).await?;
    let rows = client.query(&stmt, &params).await?;
    rows.iter().map(from_row).collect()
}

/// What a heartbeat learned about the commands a worker runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Still this worker's, with a cancellation requested (the backstop
    /// for a missed broadcast).
    pub cancel: Vec<Uuid>,
    /// No longer this worker's running command (reaped as `worker_lost`
    /// while the worker was cut off, or finished elsewhere): stop them.
    pub lost: Vec<Uuid>,
}

/// Refreshes `heartbeat_at` of commands this worker runs and reports which
/// of them are to be cancelled and which are no longer its own.
pub async fn heartbeat(
    client: &impl deadpool_postgres::GenericClient,
    worker_id: &str,
    ids: &[Uuid],
) -> Result<Heartbeat, DbError> {
    const SQL: &str = "UPDATE commands SET heartbeat_at = now() \
        WHERE id = ANY($1) AND worker_id = $2 AND status = 'running' \
        RETURNING id, cancel_requested_at IS NOT NULL AS cancel";
    let rows = client
        .query(&prepared(client, SQL).await?, &[&ids, &worker_id])
        .await?;
    let mut out = Heartbeat::default();
    let mut owned = std::collections::HashSet::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get("id")?;
        if row.try_get::<_, bool>("cancel")? {
            out.cancel.push(id);
        }
        owned.insert(id);
    }
    out.lost = ids
        .iter()
        .copied()
        .filter(|id| !owned.contains(id))
        .collect();
    Ok(out)
}

/// Cancels a command that is still queued; `None` when it no longer is.
/// A worker that later receives its message finds it not queued and skips it.
pub async fn cancel_queued(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<Command>, DbError> {
    let sql = format!(
        "WITH c AS (UPDATE commands SET status = 'cancelled', reason = 'cancelled', \
         finished_at = now(), cancel_requested_at = now() WHERE id = $1 AND status = 'queued' RETURNING *) \
         SELECT {COLS} FROM c JOIN projects p ON p.id = c.project_id"
    );
    query_command(client, &sql, &[&id]).await
}

/// Records a cancel request for a running command; `None` when it is not running.
pub async fn request_cancel(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<Command>, DbError> {
    let sql = format!(
        "WITH c AS (UPDATE commands SET cancel_requested_at = coalesce(cancel_requested_at, now()) \
         WHERE id = $1 AND status = 'running' RETURNING *) \
         SELECT {COLS} FROM c JOIN projects p ON p.id = c.project_id"
    );
    query_command(client, &sql, &[&id]).await
}

/// Marks running commands whose heartbeat is older than `lost_after` as
/// failed with `worker_lost`; returns them (for their events). Both sides
/// of the comparison are PostgreSQL's clock (`heartbeat_at` is written with
/// `now()`), so a skewed clock on the reaper's host reaps nothing early.
pub async fn reap_lost(
    client: &impl deadpool_postgres::GenericClient,
    lost_after: std::time::Duration,
    limit: i64,
) -> Result<Vec<Command>, DbError> {
    let sql = format!(
        "WITH c AS (UPDATE commands SET status = 'failed', error = 'worker_lost', \
         reason = 'worker_lost', finished_at = clock_timestamp() WHERE id IN (SELECT id FROM commands WHERE status = 'running' \
         AND heartbeat_at < now() - make_interval(secs => $1) ORDER BY heartbeat_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING *) \
         SELECT {COLS} FROM c JOIN projects p ON p.id = c.project_id"
    );
    let rows = client
        .query(&sql, &[&lost_after.as_secs_f64(), &limit])
        .await?;
    rows.iter().map(from_row).collect()
}

/// Commands `queued` for longer than `after` (since their creation or their
/// last requeue), oldest first, marked requeued now: their run messages are
/// republished by the caller (in the same transaction, through the outbox).
/// A message that was not lost after all only finds the command claimed:
/// the claim guard makes the duplicate harmless.
pub async fn take_stale_queued(
    client: &impl deadpool_postgres::GenericClient,
    after: std::time::Duration,
    limit: i64,
) -> Result<Vec<(Uuid, i16)>, DbError> {
    const SQL: &str = "UPDATE commands SET requeued_at = now() WHERE id IN ( \
        SELECT id FROM commands WHERE status = 'queued' \
        AND coalesce(requeued_at, created_at) < now() - make_interval(secs => $1) \
        ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
        RETURNING id, priority";
    let rows = client.query(SQL, &[&after.as_secs_f64(), &limit]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("priority")?)))
        .collect()
}
