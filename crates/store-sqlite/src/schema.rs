//! Connection settings and versioned schema migrations (`PRAGMA user_version`).

use crate::codec::sql_error;
use crate::Options;
use baton_store::{Error, Result};
use rusqlite::config::DbConfig;
use rusqlite::Connection;
use std::time::Duration;

/// Migration `i` takes the schema from version `i` to `i + 1`. Never edit a released
/// migration; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the tasks table and its indexes (see the crate docs for what each is for).
    "CREATE TABLE tasks (
        seq            INTEGER PRIMARY KEY,
        id             TEXT    NOT NULL UNIQUE,
        task_type      TEXT    NOT NULL,
        status         INTEGER NOT NULL,
        priority       INTEGER NOT NULL,
        attempt        INTEGER NOT NULL,
        ready_at       INTEGER,
        lease_owner    TEXT,
        lease_deadline INTEGER,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        spec           TEXT    NOT NULL,
        state          TEXT    NOT NULL
    );
    CREATE INDEX tasks_queued         ON tasks (task_type, priority DESC, seq) WHERE status = 0;
    CREATE INDEX tasks_running_lease  ON tasks (lease_deadline)               WHERE status = 1;
    CREATE INDEX tasks_running_owner  ON tasks (lease_owner)                  WHERE status = 1;
    CREATE INDEX tasks_retry_ready    ON tasks (ready_at)                     WHERE status = 2;
    CREATE INDEX tasks_by_status      ON tasks (status, seq);
    CREATE INDEX tasks_by_type        ON tasks (task_type, seq);",
    // 2: the immutable spec moves to its own table, written once at submit, so that a
    // transition rewrites only the small state row; columns nothing selects on
    // (attempt, created_at, updated_at: all inside `state`) go. Running attempts
    // keep one index, by owner, which also answers lease expiry (see the crate docs).
    "ALTER TABLE tasks RENAME TO tasks_v1;
    CREATE TABLE task_specs (
        seq  INTEGER PRIMARY KEY,
        spec TEXT    NOT NULL
    );
    CREATE TABLE tasks (
        seq            INTEGER PRIMARY KEY,
        id             TEXT    NOT NULL UNIQUE,
        task_type      TEXT    NOT NULL,
        status         INTEGER NOT NULL,
        priority       INTEGER NOT NULL,
        ready_at       INTEGER,
        lease_owner    TEXT,
        lease_deadline INTEGER,
        state          TEXT    NOT NULL
    );
    INSERT INTO task_specs (seq, spec) SELECT seq, spec FROM tasks_v1 ORDER BY seq;
    INSERT INTO tasks (seq, id, task_type, status, priority, ready_at, lease_owner, lease_deadline, state)
        SELECT seq, id, task_type, status, priority, ready_at, lease_owner, lease_deadline, state
        FROM tasks_v1 ORDER BY seq;
    DROP TABLE tasks_v1;
    CREATE INDEX tasks_queued         ON tasks (task_type, priority DESC, seq)  WHERE status = 0;
    CREATE INDEX tasks_running_owner  ON tasks (lease_owner, lease_deadline)    WHERE status = 1;
    CREATE INDEX tasks_retry_ready    ON tasks (ready_at)                       WHERE status = 2;
    CREATE INDEX tasks_by_status      ON tasks (status, seq);
    CREATE INDEX tasks_by_type        ON tasks (task_type, seq);",
    // 3: the flow registry and workflow runs (the run document is the engine's JSON).
    "CREATE TABLE flows (
        name       TEXT    NOT NULL,
        version    INTEGER NOT NULL,
        definition TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    ) WITHOUT ROWID;
    CREATE TABLE runs (
        seq        INTEGER PRIMARY KEY,
        run_id     TEXT    NOT NULL UNIQUE,
        flow_name  TEXT,
        status     TEXT    NOT NULL,
        active     INTEGER NOT NULL,
        revision   INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        body       TEXT    NOT NULL
    );
    CREATE INDEX runs_active    ON runs (seq) WHERE active = 1;
    CREATE INDEX runs_by_status ON runs (status, seq);
    CREATE INDEX runs_by_flow   ON runs (flow_name, seq);",
    // 4: leadership of the singleton duties (one process holds it; the same
    // contract as a shared store's).
    "CREATE TABLE leadership (
        name       TEXT    PRIMARY KEY,
        holder     TEXT    NOT NULL,
        epoch      INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO leadership VALUES ('duties', '', 0, 0);",
    // 5: queued and running tasks leave the status index. Every submit, claim and
    // result moved an entry of this full index; now only a task that comes to rest
    // (retry wait, or an end) enters it. Queued tasks are listed and counted from
    // `tasks_queued`, running ones (bounded by the server's workers) from
    // `tasks_running_owner`.
    "DROP INDEX tasks_by_status;
    CREATE INDEX tasks_by_status ON tasks (status, seq) WHERE status > 1;",
    // 6: a run's definition in a column of its own, written once with the run
    // instead of inside the document every write rewrites (NULL for older runs,
    // whose document still holds it).
    "ALTER TABLE runs ADD COLUMN definition TEXT;",
];

/// WAL file size kept after a reset.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

fn common(conn: &Connection, options: &Options) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Without this, a statement whose `LIMIT` is a parameter is compiled again on
    // every run (SQLite plans for the bound limit): the claim and list queries.
    // Every hot query names its index, so plans never depend on parameters anyway.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Prepares the single writer connection: WAL, the chosen durability, migrations.
pub(crate) fn configure_writer(conn: &mut Connection, options: &Options) -> Result<()> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sql_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Unavailable(format!(
            "sqlite refused WAL mode (journal_mode is {mode})"
        )));
    }
    // The connection runs NORMAL whatever the options say (it still syncs the
    // WAL before every checkpoint and the database after it): `Synchronous::Full`
    // is kept by the writer's syncer thread, which syncs the WAL after each
    // commit while the writer goes on with the next transaction, and answers
    // the commit's callers only then (see `writer::run`).
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql_error)?;
    common(conn, options).map_err(sql_error)?;
    // The checkpointer thread copies the WAL beside the writer (see
    // `checkpoint`); the writer checkpoints itself only past this backstop, which
    // bounds the WAL when the checkpointer cannot keep up. Its checkpoint runs
    // between two transactions, so it finishes and the WAL restarts from its start.
    conn.pragma_update(None, "wal_autocheckpoint", options.wal_backstop_pages)
        .map_err(sql_error)?;
    // After a checkpoint resets the WAL, trim the file back to this size.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
        .map_err(sql_error)?;
    migrate(conn)
}

/// The checkpointer's connection: it never writes a row and never checkpoints
/// on a commit of its own.
pub(crate) fn configure_checkpointer(conn: &Connection, options: &Options) -> Result<()> {
    common(conn, options).map_err(sql_error)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(sql_error)
}

pub(crate) fn configure_reader(conn: &Connection, options: &Options) -> Result<()> {
    common(conn, options).map_err(sql_error)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql_error)?;
    let version = usize::try_from(version)
        .map_err(|_| Error::Corrupt(format!("negative schema version {version}")))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Unavailable(format!(
            "database schema version {version} is newer than this build supports ({SCHEMA_VERSION}); upgrade baton"
        )));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(sql_error)?;
        tx.execute_batch(sql).map_err(sql_error)?;
        tx.pragma_update(None, "user_version", (from + 1) as i64)
            .map_err(sql_error)?;
        tx.commit().map_err(sql_error)?;
        tracing::info!(schema_version = from + 1, "sqlite store migrated");
    }
    Ok(())
}
