//! `command_input` repository: the input events of interactive commands,
//! numbered per command (the durable copy of what the input exchange
//! carries; see [`crate::interactive`]).

use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, parse_col, prepared};
use crate::domain::CommandStatus;
use crate::interactive::{Input, InputSignal, TtySize};

/// The sealed `data` column (see [`crate::crypto`]).
pub const DATA_FIELD: &str = "command_input.data";

/// Most events read at once.
pub const READ_PAGE: i64 = 256;

/// An input event stored and numbered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its number.
    pub seq: i64,
    /// The worker running the command, if it started.
    pub worker_id: Option<String>,
}

/// Why an input event was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such command.
    NotFound,
    /// It has ended.
    Ended(CommandStatus),
    /// Its standard input is not a pipe (`"stdin": "pipe"` was not asked).
    NotAPipe,
    /// End-of-file was already sent.
    Closed,
    /// A resize for a command without a terminal.
    NoTty,
}

/// Numbers and stores one input event of a queued or running command, in
/// one statement (the command row's `input_seq` orders events from every
/// API instance). End-of-file also marks standard input closed.
pub async fn append(
    client: &impl deadpool_postgres::GenericClient,
    command_id: Uuid,
    input: &Input,
) -> Result<Result<Stored, Refused>, DbError> {
    const SQL: &str = "WITH c AS (UPDATE commands SET input_seq = input_seq + 1, \
        stdin_closed = stdin_closed OR $2 = 'eof' \
        WHERE id = $1 AND status IN ('queued', 'running') \
        AND CASE $2 WHEN 'data' THEN stdin_pipe AND NOT stdin_closed \
                    WHEN 'eof' THEN stdin_pipe AND NOT stdin_closed \
                    WHEN 'resize' THEN tty_cols IS NOT NULL \
                    ELSE true END \
        RETURNING id, input_seq, worker_id) \
        INSERT INTO command_input (command_id, seq, kind, data, arg) \
        SELECT c.id, c.input_seq, $2, $3, $4 FROM c \
        RETURNING seq, (SELECT worker_id FROM c)";
    let (data, arg) = columns(input);
    let row = client
        .query_opt(
            &prepared(client, SQL).await?,
            &[&command_id, &input.kind(), &data, &arg],
        )
        .await?;
    if let Some(row) = row {
        return Ok(Ok(Stored {
            seq: row.try_get(0)?,
            worker_id: row.try_get(1)?,
        }));
    }
    // Refused: say why.
    let row = client
        .query_opt(
            "SELECT status, stdin_pipe, stdin_closed, tty_cols IS NOT NULL FROM commands \
             WHERE id = $1",
            &[&command_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(Refused::NotFound));
    };
    let status: CommandStatus = parse_col(row.try_get::<_, &str>(0)?, "commands.status")?;
    let (pipe, closed, tty): (bool, bool, bool) =
        (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
    Ok(Err(if status.is_terminal() {
        Refused::Ended(status)
    } else if matches!(input, Input::Resize { .. }) && !tty {
        Refused::NoTty
    } else if !pipe {
        Refused::NotAPipe
    } else if closed {
        Refused::Closed
    } else {
        // It changed between the two statements (ended just now).
        Refused::Ended(status)
    }))
}

/// Events with `seq > after`, in order, at most [`READ_PAGE`].
pub async fn read_after(
    client: &impl deadpool_postgres::GenericClient,
    command_id: Uuid,
    after: i64,
) -> Result<Vec<(i64, Input)>, DbError> {
    const SQL: &str = "SELECT seq, kind, data, arg FROM command_input \
        WHERE command_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
    let rows = client
        .query(
            &prepared(client, SQL).await?,
            &[&command_id, &after, &READ_PAGE],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

fn columns(input: &Input) -> (Option<Vec<u8>>, Option<serde_json::Value>) {
    match input {
        Input::Data { data } => (Some(crate::crypto::ring().seal(data, DATA_FIELD)), None),
        Input::Eof => (None, None),
        Input::Resize { size } => (
            None,
            Some(serde_json::json!({"cols": size.cols, "rows": size.rows})),
        ),
        Input::Signal { signal } => (None, Some(serde_json::json!({"signal": signal.as_str()}))),
    }
}

fn from_row(row: &Row) -> Result<(i64, Input), DbError> {
    let corrupt = |what: &str| DbError::Corrupt(format!("command_input: {what}"));
    let seq: i64 = row.try_get("seq")?;
    let arg: Option<serde_json::Value> = row.try_get("arg")?;
    let input = match row.try_get::<_, &str>("kind")? {
        "data" => {
            let stored: Vec<u8> = row
                .try_get::<_, Option<Vec<u8>>>("data")?
                .ok_or_else(|| corrupt("data"))?;
            Input::Data {
                data: crate::crypto::ring().open(&stored, DATA_FIELD)?,
            }
        }
        "eof" => Input::Eof,
        "resize" => {
            let size: TtySize = arg
                .and_then(|a| serde_json::from_value(a).ok())
                .ok_or_else(|| corrupt("resize"))?;
            Input::Resize { size }
        }
        "signal" => {
            let signal: InputSignal = arg
                .as_ref()
                .and_then(|a| a.get("signal"))
                .and_then(|s| s.as_str())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("signal"))?;
            Input::Signal { signal }
        }
        other => return Err(corrupt(other)),
    };
    Ok((seq, input))
}
