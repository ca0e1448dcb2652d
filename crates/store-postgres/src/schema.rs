//! Versioned schema migrations, applied at open, each once and in its own
//! transaction, recorded in `baton_schema_migrations`.

use crate::codec::{describe, Fault, Res};
use baton_store::Error;
use tokio_postgres::Client;

/// Migration `i` takes the schema from version `i` to `i + 1`. Never edit a released
/// migration; append a new one. See the crate docs for what each table and index
/// is for.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "tasks, task specs, flows and runs",
        "CREATE TABLE tasks (
        seq            BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id             TEXT     NOT NULL UNIQUE,
        task_type      TEXT     NOT NULL,
        status         SMALLINT NOT NULL,
        priority       SMALLINT NOT NULL,
        ready_at       BIGINT,
        lease_owner    TEXT,
        lease_deadline BIGINT,
        state          JSON     NOT NULL
    ) WITH (fillfactor = 90);
    CREATE TABLE task_specs (
        seq  BIGINT PRIMARY KEY,
        spec JSON   NOT NULL
    );
    CREATE INDEX tasks_queued        ON tasks (task_type, priority DESC, seq) WHERE status = 0;
    CREATE INDEX tasks_running_owner ON tasks (lease_owner)                   WHERE status = 1;
    CREATE INDEX tasks_retry_ready   ON tasks (ready_at)                      WHERE status = 2;
    CREATE INDEX tasks_by_status     ON tasks (status, seq);
    CREATE INDEX tasks_by_type       ON tasks (task_type, seq);

    CREATE TABLE flows (
        name       TEXT   NOT NULL,
        version    BIGINT NOT NULL,
        definition JSONB  NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (name, version)
    );

    CREATE TABLE runs (
        run_id     TEXT    PRIMARY KEY,
        seq        BIGINT  GENERATED ALWAYS AS IDENTITY UNIQUE,
        flow_name  TEXT,
        status     TEXT    NOT NULL,
        active     BOOLEAN NOT NULL,
        revision   BIGINT  NOT NULL,
        created_at BIGINT  NOT NULL,
        updated_at BIGINT  NOT NULL,
        body       JSONB   NOT NULL
    );
    CREATE INDEX runs_by_status ON runs (status, seq);
    CREATE INDEX runs_by_flow   ON runs (flow_name, seq);
    CREATE INDEX runs_active    ON runs (seq) WHERE active;",
    ),
    (
        "lease owners and leadership",
        "CREATE TABLE lease_owners (
        owner    TEXT   PRIMARY KEY,
        deadline BIGINT NOT NULL
    );
    CREATE TABLE leadership (
        name       TEXT   PRIMARY KEY,
        holder     TEXT   NOT NULL,
        epoch      BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    INSERT INTO leadership VALUES ('duties', '', 0, 0);",
    ),
    (
        "a run's definition beside its document",
        "ALTER TABLE runs ADD COLUMN definition JSONB;",
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Applies the migrations this schema lacks. Several replicas may start at once:
/// each migration runs in a transaction that first takes an advisory lock keyed by
/// the schema, so exactly one of them applies it and the others see it applied.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), Error> {
    migrate_inner(client, schema)
        .await
        .map_err(|fault| match fault {
            Fault::Db(e) => match crate::codec::db_error(&e) {
                Error::Other(_) => {
                    Error::Unavailable(format!("cannot migrate the schema: {}", describe(&e)))
                }
                other => other,
            },
            Fault::Store(e) => e,
        })
}

async fn migrate_inner(client: &mut Client, schema: &str) -> Res<()> {
    loop {
        let tx = client.transaction().await?;
        let applied = step(&tx, schema).await;
        match applied {
            Ok(done) => {
                tx.commit().await?;
                if done {
                    return Ok(());
                }
            }
            Err(fault) => {
                // At once, not whenever the connection is next used: the advisory
                // lock must not outlive this attempt.
                let _ = tx.rollback().await;
                return Err(fault);
            }
        }
    }
}

/// Applies the next missing migration, if any; whether the schema is up to date.
async fn step(tx: &tokio_postgres::Transaction<'_>, schema: &str) -> Res<bool> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('baton_schema_migrations'), hashtext($1))",
        &[&schema],
    )
    .await?;
    // Checked first: `CREATE ... IF NOT EXISTS` still needs the privilege to create.
    let exists = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await?;
    if !exists.try_get::<_, bool>(0)? {
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await?;
    }
    tx.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
        .await?;
    let table = tx
        .query_one(
            "SELECT to_regclass('baton_schema_migrations') IS NOT NULL",
            &[],
        )
        .await?;
    if !table.try_get::<_, bool>(0)? {
        tx.batch_execute(
            "CREATE TABLE baton_schema_migrations (
                    version     INTEGER     PRIMARY KEY,
                    description TEXT        NOT NULL,
                    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
        )
        .await?;
    }
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM baton_schema_migrations",
            &[],
        )
        .await?;
    let version: i32 = row.try_get(0)?;
    let version = u32::try_from(version)
        .map_err(|_| Error::Corrupt(format!("negative schema version {version}")))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Unavailable(format!(
                "schema {schema} is at version {version}, newer than this build supports ({SCHEMA_VERSION}); upgrade baton"
            ))
            .into());
    }
    let Some((description, sql)) = MIGRATIONS.get(version as usize) else {
        return Ok(true);
    };
    // The migration's statements name no schema: they land in `schema`, the
    // search_path of this transaction (and of every connection of the store).
    tx.batch_execute(sql).await?;
    tx.execute(
        "INSERT INTO baton_schema_migrations (version, description) VALUES ($1, $2)",
        &[&(version as i32 + 1), description],
    )
    .await?;
    tracing::info!(
        schema,
        schema_version = version + 1,
        "postgres store migrated"
    );
    Ok(false)
}
