//! Baton's shared store: PostgreSQL, for several orchestrator replicas over one
//! database. It implements [`baton_store::Store`] and passes the same conformance
//! suite as the embedded SQLite store; every transition is decided by
//! `baton_core::lifecycle::apply` (load the row, apply, write the result back), so
//! both backends make the same decisions.
//!
//! ```no_run
//! # async fn demo() -> baton_store::Result<()> {
//! use baton_store_postgres::{Options, PgStore};
//! let store = PgStore::connect("postgres://baton@db.internal/baton", Options::default()).await?;
//! let mut work = store.subscribe_work(); // task types that got queued work
//! # Ok(()) }
//! ```
//!
//! # Schema (version 1, tracked in `baton_schema_migrations`)
//!
//! Everything lives in one PostgreSQL schema ([`Options::schema`], `baton` by
//! default), created if missing; every connection of the store has it as its
//! `search_path`. Migrations run at [`PgStore::connect`], each once, in its own
//! transaction, under an advisory lock so that replicas starting together apply
//! each exactly once; a schema written by a newer build is refused.
//!
//! `tasks` holds one small row per task, the only row a transition rewrites;
//! `task_specs` holds the spec, written once at submit and only read after:
//!
//! | column           | type       | meaning                                                     |
//! |------------------|------------|-------------------------------------------------------------|
//! | `seq`            | `BIGINT`   | identity, primary key: submission order, FIFO tie-break, list cursor |
//! | `id`             | `TEXT`     | the task id, `UNIQUE`                                       |
//! | `task_type`      | `TEXT`     |                                                             |
//! | `status`         | `SMALLINT` | `Status::code()`: 0 queued, 1 running, 2 retry_wait, 3 completed, 4 failed, 5 cancelled, 6 dead_lettered, 7 waiting |
//! | `priority`       | `SMALLINT` | `Priority::rank()`: 0 background … 4 critical               |
//! | `ready_at`       | `BIGINT`   | end of the retry wait, ms (retry_wait only)                 |
//! | `lease_owner`    | `TEXT`     | who holds the running attempt (running only)                |
//! | `lease_deadline` | `BIGINT`   | lease end set by the claim, ms (running only); the lease really ends at the later of this and the owner's row in `lease_owners`, which is what reads report |
//! | `state`          | `JSON`     | the `TaskState`, events included: the task's execution history (seed 003's `task_execution_history`: status, attempts, output, error, times) |
//!
//! `task_specs (seq BIGINT PRIMARY KEY, spec JSON)`: the `TaskSpec` (its `run_id`
//! names the workflow run it is a step of), same `seq` as its task, written by the
//! same statement. The columns of `tasks` other than `state` are copies of fields
//! of the state or spec, written together, so that SQL can select and order on
//! them. Task documents are `JSON`, not `JSONB`: stored and returned byte for byte
//! (no re-parsing on every transition), and any string a client sent, `\u0000`
//! included, is accepted.
//!
//! `flows (name TEXT, version BIGINT, definition JSONB, created_at BIGINT,
//! PRIMARY KEY (name, version))`: the flow registry; versions are immutable.
//!
//! `runs`: workflow runs (seed 003's `flow_run_history`), the engine's document
//! kept opaque in `body` and the fields the store filters on beside it:
//! `run_id TEXT PRIMARY KEY, seq BIGINT identity UNIQUE (creation order, list
//! cursor), flow_name TEXT, status TEXT, active BOOLEAN, revision BIGINT,
//! created_at BIGINT, updated_at BIGINT, body JSONB`. Writes are compare-and-set
//! on `revision`. (`JSONB` refuses the `\u0000` escape: such a document is refused
//! with `Error::Other`.)
//!
//! `lease_owners (owner TEXT PRIMARY KEY, deadline BIGINT)`: one row per lease
//! owner (an agent session on some replica). A replica extends all its sessions'
//! leases with one upsert on these rows; no task row is written by a heartbeat.
//! Rows a minute past their deadline are deleted by the expiry sweep, and an
//! owner's row when it is released.
//!
//! `leadership (name TEXT PRIMARY KEY, holder TEXT, epoch BIGINT, expires_at
//! BIGINT)`: one row, `duties`, for the singleton duties (`expire_leases`,
//! `promote_due`). `acquire_leadership` locks it `FOR UPDATE` and applies
//! `baton_store::next_leadership`; a fenced duty first reads it `FOR SHARE` and is
//! refused unless its fence (holder, epoch, lease running) still matches.
//!
//! Times are milliseconds since the epoch as `BIGINT`: the clock is the caller's,
//! as everywhere in the `Store` contract.
//!
//! Indexes, each for one query:
//!
//! - `tasks_queued (task_type, priority DESC, seq) WHERE status = 0`: claims, queued
//!   counts, and `queued_types` (a skip scan: one probe per type);
//! - `tasks_running_owner (lease_owner) WHERE status = 1`: releasing one owner's
//!   leases, counting what extended owners hold, and lease expiry (a scan of this
//!   small index, each row checked against its owner's row);
//! - `tasks_retry_ready (ready_at) WHERE status = 2`: `next_wake` and `promote_due`;
//! - `tasks_by_status (status, seq)`, `tasks_by_type (task_type, seq)`: listing,
//!   newest first, and the counts by status;
//! - `runs_by_status (status, seq)`, `runs_by_flow (flow_name, seq)`,
//!   `runs_active (seq) WHERE active`: listing runs, and the runs to resume.
//!
//! # Several replicas
//!
//! No method relies on anything held in the process (`exclusive()` is `false`).
//! Each store call is one transaction on a pooled connection:
//!
//! - `claim` picks with `SELECT … ORDER BY priority DESC, seq LIMIT n FOR UPDATE
//!   SKIP LOCKED` over `tasks_queued`: concurrent claimers, on any replica, lock
//!   disjoint rows and never wait for each other; the claim is written before the
//!   locks are released, so no attempt is handed out twice.
//! - `update` and `release_owner` lock their rows (`FOR UPDATE`, in
//!   `seq` order, so transactions never wait on each other in a cycle) before the
//!   lifecycle sees them: the attempt fencing holds across replicas. The sweeps
//!   (`expire_leases`, `promote_due`) skip rows another transaction holds.
//! - A transaction PostgreSQL aborts for a deadlock or a serialization failure is
//!   run again, up to [`MAX_TX_TRIES`] times.
//! - `counts`, `queued_types` and `next_wake` query the database each time.
//!
//! Batches are one transaction and few statements: `submit` inserts every task
//! with one `INSERT … SELECT FROM UNNEST(…)`, and every operation writes the rows it
//! changed back with one `UPDATE … FROM UNNEST(…)`.
//!
//! # Work notifications
//!
//! Every transaction that queues tasks (submit, release, promote, reprocess)
//! runs `NOTIFY baton_work, '<task_type>'` for each type it queued, delivered by
//! PostgreSQL when (and only if) it commits. [`PgStore::subscribe_work`] hands out
//! receivers of a listener on a dedicated connection; see there.

mod codec;
mod leader;
mod listen;
mod runs;
mod schema;
mod tasks;
mod temp;

pub use schema::SCHEMA_VERSION;
pub use tasks::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, WORK_CHANNEL};
pub use temp::TEMP_SCHEMA_PREFIX;

use async_trait::async_trait;
use baton_core::lifecycle::Failure;
use baton_core::{Millis, TaskId, TaskSpec};
use baton_store::{
    ClaimRequest, Claimed, Counts, Error, Fence, FlowOutcome, FlowRecord, Leadership, ListFilter,
    Page, Result, RunFilter, RunPage, RunRecord, RunWrite, RunWriteOutcome, Selected,
    SelectedOutcome, StartAt, Store, SubmitOutcome, TaskRecord, Update, UpdateOutcome,
};
use codec::{db_error, describe, Fault, Res};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use listen::Listener;
use std::sync::Mutex;
use std::time::Duration;
use tasks::{Jitter, Work};
use temp::TempSchema;
use tokio::sync::broadcast;
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

/// How many times a transaction aborted by a deadlock or serialization failure is
/// tried in all.
pub const MAX_TX_TRIES: u32 = 5;

/// Connection settings of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct Options {
    /// The PostgreSQL schema holding Baton's tables (default `baton`); created if
    /// missing. Lowercase ASCII letters, digits and `_`, not starting with a digit
    /// or `pg_`, at most 63 bytes.
    pub schema: String,
    /// Most connections the pool opens (default 16); the work listener has one more
    /// of its own.
    pub max_connections: usize,
    /// Bound on opening one connection when the URL sets none (default 5 s).
    pub connect_timeout: Duration,
    /// Bound on waiting for a free pooled connection (default 30 s).
    pub wait_timeout: Duration,
    /// PostgreSQL ends a session left idle inside a transaction this long
    /// (`idle_in_transaction_session_timeout`, default 2 s; a URL's own
    /// `options` may set another). A replica stalled mid-transaction (stopped,
    /// swapped out) would otherwise hold its row locks for good: the
    /// leadership row's among them, and no other replica could take over.
    pub idle_in_transaction_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            schema: "baton".into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(2),
        }
    }
}

/// A schema name we can put in SQL text unquoted-safe and that PostgreSQL keeps
/// as is (no case folding, no truncation, not a system schema).
pub(crate) fn valid_schema_name(name: &str) -> bool {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_")
}

/// The store. Cheap to share behind an `Arc`; dropping it closes its connections
/// and stops its work listener (and drops its schema if it is temporary).
pub struct PgStore {
    pool: Pool,
    /// The parsed URL with the store's settings applied: for the listener and
    /// for `reopen`.
    config: tokio_postgres::Config,
    options: Options,
    /// Where the listener task is spawned.
    runtime: tokio::runtime::Handle,
    jitter: Jitter,
    listener: Mutex<Option<Listener>>,
    /// Declared last: the schema is dropped after the pool is closed.
    temp: Option<TempSchema>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &server(&self.config))
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Where a config points, for messages (never the password).
fn server(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!(
        "{} (database {}, user {})",
        if hosts.is_empty() {
            "localhost:5432".to_string()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)")
    )
}

/// Runs `$body`, an expression using `$tx` (a `&tasks::Tx`), in a transaction on a
/// pooled connection and commits it if it returns `Ok`. A transaction that
/// PostgreSQL aborted for a deadlock or serialization failure runs again.
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut tries = 1;
        loop {
            let result: Res<_> = async {
                let mut client = $store.client().await?;
                let owned = client.transaction().await?;
                let value: Res<_> = async {
                    let $tx = &owned;
                    Ok($body)
                }
                .await;
                match value {
                    Ok(value) => {
                        owned.commit().await?;
                        Ok(value)
                    }
                    Err(fault) => {
                        // Rolled back now rather than when the connection is next
                        // used: locks go at once.
                        let _ = owned.rollback().await;
                        Err(fault)
                    }
                }
            }
            .await;
            match result {
                Ok(value) => break Ok(value),
                Err(fault) if fault.is_retryable() && tries < MAX_TX_TRIES => {
                    tracing::debug!(error = %describe_fault(&fault), tries, "postgres transaction aborted; running it again");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
                    tries += 1;
                }
                Err(fault) => break Err(fault.into_store()),
            }
        }
    }};
}

fn describe_fault(fault: &Fault) -> String {
    match fault {
        Fault::Db(e) => describe(e),
        Fault::Store(e) => e.to_string(),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db?…`
    /// or `host=… user=…`), creates [`Options::schema`] if missing and applies the
    /// migrations it lacks. A bad URL, unknown database or user, refused
    /// credentials or an unreachable server are `Error::Unavailable` with a message
    /// that says which.
    pub async fn connect(url: &str, options: Options) -> Result<PgStore> {
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| Error::Unavailable(format!("invalid postgres url: {}", describe(&e))))?;
        Self::open(config, options, None).await
    }

    /// Connects with a new schema of its own (named `baton_test_…`), dropped with
    /// the store: for tests. Also drops such schemas left behind an hour ago or
    /// more (by killed test processes). `options.schema` is ignored.
    pub async fn connect_temp(url: &str, options: Options) -> Result<PgStore> {
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| Error::Unavailable(format!("invalid postgres url: {}", describe(&e))))?;
        let name = temp::unique_name();
        // Its connections carry the schema's name, so that dropping the schema can
        // end any of them left behind.
        let mut config = config;
        config.application_name(&name);
        let options = Options {
            schema: name.clone(),
            ..options
        };
        let temp = TempSchema {
            name,
            config: config.clone(),
        };
        let store = Self::open(config, options, Some(temp)).await?;
        let client = store.client().await.map_err(Fault::into_store)?;
        temp::sweep(&client).await;
        Ok(store)
    }

    /// Closes the store and connects again to the same database and schema, as a
    /// restarted server would. A temporary schema stays owned by the new store.
    pub async fn reopen(mut self) -> Result<PgStore> {
        let config = self.config.clone();
        let options = self.options.clone();
        let temp = self.temp.take();
        drop(self);
        Self::open(config, options, temp).await
    }

    async fn open(
        mut config: tokio_postgres::Config,
        options: Options,
        temp: Option<TempSchema>,
    ) -> Result<PgStore> {
        if !valid_schema_name(&options.schema) {
            return Err(Error::Other(format!(
                "postgres options: invalid schema name {:?} (lowercase letters, digits and _, at most 63, not starting with a digit or pg_)",
                options.schema
            )));
        }
        if options.max_connections == 0 {
            return Err(Error::Other(
                "postgres options: max_connections must be at least 1".into(),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Other("PgStore::connect must be called within a tokio runtime".into())
        })?;
        // Later `-c` settings win over earlier ones, so the URL's own options stay
        // in force except for the search path.
        let idle = format!(
            "-c idle_in_transaction_session_timeout={}",
            options.idle_in_transaction_timeout.as_millis().max(1)
        );
        let search_path = format!("-c search_path={}", options.schema);
        let startup = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{idle} {given} {search_path}"),
            _ => format!("{idle} {search_path}"),
        };
        config.options(startup);
        if config.get_application_name().is_none() {
            config.application_name("baton");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        let where_to = server(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Other(format!("cannot build the postgres pool: {e}")))?;
        let store = PgStore {
            pool,
            config,
            options,
            runtime,
            jitter: Jitter::seeded(),
            listener: Mutex::new(None),
            temp,
        };
        let mut client = store
            .client()
            .await
            .map_err(|fault| match fault.into_store() {
                Error::Unavailable(m) => {
                    Error::Unavailable(format!("cannot connect to postgres at {where_to}: {m}"))
                }
                other => other,
            })?;
        schema::migrate(&mut client, &store.options.schema).await?;
        drop(client);
        tracing::info!(server = %where_to, schema = %store.options.schema, "postgres store open");
        Ok(store)
    }

    async fn client(&self) -> Res<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| {
            Fault::Store(match e {
                PoolError::Backend(e) => db_error(&e),
                PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                    Error::Unavailable(format!(
                        "all {} postgres connections stayed busy for {:?}",
                        self.options.max_connections, self.options.wait_timeout
                    ))
                }
                PoolError::Timeout(_) => Error::Unavailable(format!(
                    "postgres did not answer within {:?}",
                    self.options.connect_timeout
                )),
                PoolError::Closed => Error::Unavailable("the postgres store is closed".into()),
                other => Error::Unavailable(format!("postgres pool: {other}")),
            })
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The schema this store's tables are in.
    pub fn schema(&self) -> &str {
        &self.options.schema
    }

    /// Task types that got queued work, for a server that wants to learn of new
    /// work without polling: each commit that queues tasks (by any replica) sends
    /// their types on [`WORK_CHANNEL`], and the store's listener broadcasts them to
    /// every receiver.
    ///
    /// The listener starts with the first call and runs on a connection of its own
    /// until the store is dropped, reconnecting with backoff (100 ms doubling to
    /// 5 s). Each time it starts listening it also sends every type that has
    /// queued tasks, so work queued before the first call, or while it was
    /// reconnecting, is not missed. A receiver only sees what is sent after it
    /// subscribed: a later subscriber should look at [`Store::queued_types`] once.
    ///
    /// A type means "look", not "there is work for you": it may come more than
    /// once, its tasks may already be claimed, and the channel is shared by every
    /// schema of the database. A receiver that falls more than 1,024 types behind
    /// gets `RecvError::Lagged` and should then look at every type.
    pub fn subscribe_work(&self) -> broadcast::Receiver<String> {
        let mut listener = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        listener
            .get_or_insert_with(|| Listener::spawn(self.config.clone(), &self.runtime))
            .sender
            .subscribe()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.pool.close();
    }
}

#[async_trait]
impl Store for PgStore {
    async fn submit_starting(
        &self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
    ) -> Result<Vec<SubmitOutcome>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| {
            let mut work = Work::default();
            let out = tasks::submit(tx, &tasks, &starts, now, &mut work).await?;
            work.announce(tx).await?;
            out
        })
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        if request.max == 0 {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| {
            tasks::claim(tx, &request, &self.jitter, &mut Work::default()).await?
        })
    }

    async fn claim_selected(
        &self,
        selected: Vec<Selected>,
        lease_deadline_ms: Millis,
        now: Millis,
    ) -> Result<Vec<SelectedOutcome>> {
        if selected.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| {
            tasks::claim_selected(
                tx,
                &selected,
                lease_deadline_ms,
                now,
                &self.jitter,
                &mut Work::default(),
            )
            .await?
        })
    }

    async fn update(&self, updates: Vec<Update>, now: Millis) -> Result<Vec<UpdateOutcome>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| {
            let mut work = Work::default();
            let out = tasks::update(tx, &updates, now, &self.jitter, &mut work).await?;
            work.announce(tx).await?;
            out
        })
    }

    async fn extend_leases(
        &self,
        lease_owners: &[String],
        lease_deadline_ms: Millis,
    ) -> Result<u64> {
        transaction!(self, |tx| {
            tasks::extend_leases(tx, lease_owners, lease_deadline_ms).await?
        })
    }

    async fn expire_leases(&self, now: Millis, fence: &Fence) -> Result<Vec<TaskId>> {
        transaction!(self, |tx| {
            leader::check(tx, fence, now).await?;
            tasks::expire_leases(tx, now, &self.jitter, &mut Work::default()).await?
        })
    }

    async fn release_owner(
        &self,
        lease_owner: &str,
        failure: Failure,
        now: Millis,
    ) -> Result<Vec<TaskId>> {
        transaction!(self, |tx| {
            let mut work = Work::default();
            tasks::release_owner(tx, lease_owner, &failure, now, &self.jitter, &mut work).await?
        })
    }

    async fn acquire_leadership(
        &self,
        candidate: &str,
        now: Millis,
        ttl_ms: u64,
    ) -> Result<Leadership> {
        transaction!(self, |tx| {
            leader::acquire(tx, candidate, now, ttl_ms).await?
        })
    }

    async fn resign_leadership(&self, fence: &Fence) -> Result<()> {
        transaction!(self, |tx| leader::resign(tx, fence).await?)
    }

    async fn promote_due(&self, now: Millis, fence: &Fence) -> Result<Vec<String>> {
        transaction!(self, |tx| {
            leader::check(tx, fence, now).await?;
            let mut work = Work::default();
            tasks::promote_due(tx, now, &self.jitter, &mut work).await?;
            work.announce(tx).await?;
            work.into_types()
        })
    }

    async fn next_wake(&self) -> Result<Option<Millis>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        tasks::next_wake(&client).await.map_err(Fault::into_store)
    }

    async fn get(&self, task_id: &TaskId) -> Result<Option<TaskRecord>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        tasks::get(&client, task_id)
            .await
            .map_err(Fault::into_store)
    }

    async fn list(&self, filter: ListFilter) -> Result<Page> {
        codec::decode_cursor(filter.cursor.as_deref())?;
        let client = self.client().await.map_err(Fault::into_store)?;
        tasks::list(&client, &filter)
            .await
            .map_err(Fault::into_store)
    }

    async fn counts(&self) -> Result<Counts> {
        let client = self.client().await.map_err(Fault::into_store)?;
        tasks::counts(&client).await.map_err(Fault::into_store)
    }

    async fn queued_types(&self) -> Result<Vec<String>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        tasks::queued_types(&client)
            .await
            .map_err(Fault::into_store)
    }

    async fn peek_queued(
        &self,
        task_type: &str,
        limit: usize,
        skip: Vec<TaskId>,
    ) -> Result<Vec<TaskSpec>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        tasks::peek_queued(&client, task_type, limit, &skip)
            .await
            .map_err(Fault::into_store)
    }

    async fn queued_by_priority(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        tasks::queued_by_priority(&client)
            .await
            .map_err(Fault::into_store)
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn work_notifications(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.subscribe_work())
    }

    async fn ping(&self) -> Result<()> {
        // Readiness must answer promptly even when the pool waits for a dead server.
        let ping = async {
            let client = self.client().await.map_err(Fault::into_store)?;
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| db_error(&e))
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), ping)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(
                    "postgres did not answer within 2 s".into(),
                ))
            })
    }

    async fn put_flow(
        &self,
        name: &str,
        version: Option<u32>,
        definition: serde_json::Value,
        now: Millis,
    ) -> Result<FlowOutcome> {
        transaction!(self, |tx| {
            runs::put_flow(tx, name, version, &definition, now).await?
        })
    }

    async fn get_flow(&self, name: &str, version: Option<u32>) -> Result<Option<FlowRecord>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        runs::get_flow(&client, name, version)
            .await
            .map_err(Fault::into_store)
    }

    async fn list_flows(&self) -> Result<Vec<FlowRecord>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        runs::list_flows(&client).await.map_err(Fault::into_store)
    }

    async fn write_runs(&self, writes: Vec<RunWrite>, now: Millis) -> Result<Vec<RunWriteOutcome>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| {
            let mut work = Work::default();
            let out = runs::write_runs(tx, &writes, now, &mut work).await?;
            work.announce(tx).await?;
            out
        })
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        runs::get_run(&client, run_id)
            .await
            .map_err(Fault::into_store)
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage> {
        codec::decode_cursor(filter.cursor.as_deref())?;
        let client = self.client().await.map_err(Fault::into_store)?;
        runs::list_runs(&client, &filter)
            .await
            .map_err(Fault::into_store)
    }

    async fn active_runs(&self) -> Result<Vec<RunRecord>> {
        let client = self.client().await.map_err(Fault::into_store)?;
        runs::active_runs(&client).await.map_err(Fault::into_store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for good in ["baton", "_x", "baton_test_1_2_3", &"a".repeat(63)] {
            assert!(valid_schema_name(good), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Baton",
            "a-b",
            "a b",
            "pg_temp",
            "x\"y",
            &"a".repeat(64),
        ] {
            assert!(!valid_schema_name(bad), "{bad}");
        }
    }

    #[test]
    fn messages_name_the_server_but_not_the_password() {
        let config: tokio_postgres::Config = "postgres://u:secret@db.example:6543/app"
            .parse()
            .expect("url");
        let text = server(&config);
        assert_eq!(text, "db.example:6543 (database app, user u)");
        assert!(!text.contains("secret"));
    }
}
