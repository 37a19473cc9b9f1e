-- Interactive commands (issue 18): standard input fed while a command runs,
-- a pseudo-terminal, and the input events themselves. Added columns with
-- constant defaults and a new table only: no rewrite, and older binaries
-- run against this schema (they never read these).

-- `true`: standard input is a pipe fed through `POST …/stdin` or `…/attach`
-- (`"stdin": "pipe"`); `false`: /dev/null, or the fixed `stdin` bytes.
ALTER TABLE commands ADD COLUMN stdin_pipe boolean NOT NULL DEFAULT false;
-- Set once end-of-file was sent: later input is refused.
ALTER TABLE commands ADD COLUMN stdin_closed boolean NOT NULL DEFAULT false;
-- A pseudo-terminal of this size (`"tty": {"cols", "rows"}`), or none.
ALTER TABLE commands ADD COLUMN tty_cols integer;
ALTER TABLE commands ADD COLUMN tty_rows integer;
ALTER TABLE commands ADD CONSTRAINT commands_tty_both
    CHECK ((tty_cols IS NULL) = (tty_rows IS NULL));
-- The last `seq` given to an input event of this command.
ALTER TABLE commands ADD COLUMN input_seq bigint NOT NULL DEFAULT 0;

-- Input events in order: the durable copy the worker reads when a live
-- message was missed. `data` is sealed like `commands.stdin` (the bytes
-- people type include passwords); `arg` holds a resize or a signal.
CREATE TABLE command_input (
    command_id uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    kind       text NOT NULL CHECK (kind IN ('data', 'eof', 'resize', 'signal')),
    data       bytea,
    arg        jsonb,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (command_id, seq)
);
