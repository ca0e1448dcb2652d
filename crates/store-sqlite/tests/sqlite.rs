//! SQLite-specific behaviour the conformance suite cannot express: the data
//! directory lock, commit before reply, the commit hook, schema versions, and a failing operation
//! not taking its batch down with it.

use baton_core::lifecycle::Command;
use baton_core::TaskId;
use baton_store::conformance::{spec, T0};
use baton_store::{ClaimRequest, Error, Store, SubmitOutcome, SyncMode, Update};
use baton_store_sqlite::{Options, SqliteStore, Synchronous, DB_FILE, SCHEMA_VERSION};
use rusqlite::Connection;

fn raw(store: &SqliteStore) -> Connection {
    Connection::open(store.dir().join(DB_FILE)).expect("raw connection")
}

fn claim_request(task_type: &str, max: usize) -> ClaimRequest {
    ClaimRequest {
        task_type: task_type.into(),
        max,
        agent_id: baton_core::AgentId::from_trusted("agent"),
        lease_owner: "owner".into(),
        lease_deadline_ms: T0 + 60_000,
        now: T0 + 1,
    }
}

#[tokio::test]
async fn a_data_dir_is_opened_by_one_store_only() {
    let store = SqliteStore::open_temp().expect("open");
    let dir = store.dir().display().to_string();
    match SqliteStore::open(store.dir(), Options::default()) {
        Err(Error::Unavailable(message)) => {
            assert!(
                message.contains(&dir) && message.contains("in use"),
                "unclear message: {message}"
            );
        }
        other => panic!("a second store opened the same directory: {other:?}"),
    }
    // Dropping the first store releases the directory.
    let store = store.reopen().expect("reopen after close");
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn a_submitted_task_is_committed_before_submit_returns() {
    let store = SqliteStore::open_temp().expect("open");
    store
        .submit(vec![spec("a", "echo")], T0)
        .await
        .expect("submit");
    let conn = raw(&store);
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM tasks WHERE id = 'a'", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(
        stored, 1,
        "another connection sees the task as soon as submit returned"
    );
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION as i64);
}

#[tokio::test]
async fn the_commit_hook_sees_the_tasks_committed() {
    let store = SqliteStore::open_temp().expect("open");
    let db = store.dir().join(DB_FILE);
    let (tx, rx) = std::sync::mpsc::channel();
    let out = store
        .submit_starting_then(
            vec![spec("a", "echo")],
            Vec::new(),
            T0,
            Box::new(move |outcomes| {
                // On the writer thread, after COMMIT: another connection sees it.
                let conn = Connection::open(&db).expect("raw connection");
                let stored: i64 = conn
                    .query_row("SELECT COUNT(*) FROM tasks WHERE id = 'a'", [], |r| {
                        r.get(0)
                    })
                    .expect("count");
                let _ = tx.send((stored, outcomes.len()));
            }),
            SyncMode::Now,
        )
        .await
        .expect("submit");
    assert_eq!(out.len(), 1);
    assert_eq!(rx.try_recv(), Ok((1, 1)), "the hook ran, after the commit");
}

#[tokio::test]
async fn a_panicking_commit_hook_does_not_stop_the_writer() {
    let store = SqliteStore::open_temp().expect("open");
    let out = store
        .submit_starting_then(
            vec![spec("a", "echo")],
            Vec::new(),
            T0,
            Box::new(|_| panic!("a caller's bug")),
            SyncMode::Now,
        )
        .await
        .expect("the submit is answered");
    assert!(matches!(&out[0], SubmitOutcome::Created(_)));
    store
        .submit(vec![spec("b", "echo")], T0)
        .await
        .expect("the writer still works");
    assert_eq!(
        store
            .claim(claim_request("echo", 10))
            .await
            .expect("claim")
            .len(),
        2
    );
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let store = SqliteStore::open_temp().expect("open");
    raw(&store)
        .pragma_update(None, "user_version", SCHEMA_VERSION as i64 + 1)
        .expect("bump version");
    match store.reopen() {
        Err(Error::Unavailable(message)) => assert!(message.contains("newer"), "{message}"),
        other => panic!("opened a database from a newer schema: {other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_row_fails_only_its_own_operation() {
    let store = SqliteStore::open_temp().expect("open");
    store
        .submit(vec![spec("bad", "broken"), spec("good", "echo")], T0)
        .await
        .expect("submit");
    raw(&store)
        .execute("UPDATE tasks SET state = 'not json' WHERE id = 'bad'", [])
        .expect("corrupt the row");

    assert!(matches!(
        store.get(&TaskId::from_trusted("bad")).await,
        Err(Error::Corrupt(_))
    ));
    assert!(store
        .get(&TaskId::from_trusted("good"))
        .await
        .expect("get")
        .is_some());

    // Sent together so that they likely share a transaction; either way the
    // corrupt task's update fails and the submit commits.
    let cancel = vec![Update {
        task_id: TaskId::from_trusted("bad"),
        command: Command::Cancel { reason: None },
    }];
    let (updated, submitted) = tokio::join!(
        store.update(cancel, T0 + 1),
        store.submit(vec![spec("new", "echo")], T0 + 1)
    );
    assert!(matches!(updated, Err(Error::Corrupt(_))), "{updated:?}");
    assert!(matches!(
        submitted.expect("submit").as_slice(),
        [SubmitOutcome::Created(_)]
    ));
    assert!(matches!(
        store.claim(claim_request("broken", 1)).await,
        Err(Error::Corrupt(_))
    ));

    let claimed = store
        .claim(claim_request("echo", 10))
        .await
        .expect("the writer still works");
    assert_eq!(claimed.len(), 2);
}

#[tokio::test]
async fn options_are_checked_and_normal_sync_works() {
    assert!(SqliteStore::open_temp_with(Options {
        max_batch: 0,
        ..Options::default()
    })
    .is_err());
    assert!(SqliteStore::open_temp_with(Options {
        readers: 0,
        ..Options::default()
    })
    .is_err());
    let options = Options {
        synchronous: Synchronous::Normal,
        max_batch: 1,
        readers: 1,
        cache_size_kib: 1024,
        wal_backstop_pages: 1_000,
    };
    let store = SqliteStore::open_temp_with(options).expect("open");
    let specs = (0..50).map(|i| spec(&format!("t{i}"), "echo")).collect();
    store.submit(specs, T0).await.expect("submit");
    assert_eq!(
        store
            .claim(claim_request("echo", 100))
            .await
            .expect("claim")
            .len(),
        50
    );
    assert!(store.exclusive());
}

/// While another connection holds the write lock, the writer is stuck on its
/// first transaction; everything sent meanwhile must then commit together.
#[tokio::test]
async fn operations_queued_behind_a_commit_share_the_next_transaction() {
    const SUBMITS: usize = 40;
    let store = SqliteStore::open_temp().expect("open");
    let blocker = raw(&store);
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let before = store.write_stats();

    let submits = (0..SUBMITS).map(|i| store.submit(vec![spec(&format!("t{i}"), "echo")], T0));
    let release = async {
        // Runs after every submit above was polled once, i.e. queued for the writer.
        blocker
            .execute_batch("COMMIT")
            .expect("release the write lock");
    };
    let (outcomes, ()) = futures::future::join(futures::future::join_all(submits), release).await;
    for outcome in outcomes {
        assert!(matches!(
            outcome.expect("submit").as_slice(),
            [SubmitOutcome::Created(_)]
        ));
    }

    let after = store.write_stats();
    assert_eq!(after.operations - before.operations, SUBMITS as u64);
    let transactions = after.transactions - before.transactions;
    assert!(
        transactions <= 2,
        "{SUBMITS} submits took {transactions} transactions: no group commit"
    );
}

/// A data directory written by schema version 1 (spec and state in one row) opens
/// with its tasks intact, and they go on through their lifecycle.
#[tokio::test]
async fn a_version_1_database_is_migrated() {
    let dir = std::env::temp_dir().join(format!(
        "baton-store-sqlite-v1-{}-{}",
        std::process::id(),
        T0
    ));
    drop(std::fs::remove_dir_all(&dir));
    std::fs::create_dir_all(&dir).expect("data dir");
    let path = dir.join(DB_FILE);
    let store = {
        let conn = Connection::open(&path).expect("v1 database");
        conn.execute_batch(
            "CREATE TABLE tasks (
                seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, task_type TEXT NOT NULL,
                status INTEGER NOT NULL, priority INTEGER NOT NULL, attempt INTEGER NOT NULL,
                ready_at INTEGER, lease_owner TEXT, lease_deadline INTEGER,
                created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
                spec TEXT NOT NULL, state TEXT NOT NULL);
            CREATE INDEX tasks_queued ON tasks (task_type, priority DESC, seq) WHERE status = 0;
            CREATE INDEX tasks_running_lease ON tasks (lease_deadline) WHERE status = 1;
            CREATE INDEX tasks_running_owner ON tasks (lease_owner) WHERE status = 1;
            CREATE INDEX tasks_retry_ready ON tasks (ready_at) WHERE status = 2;
            CREATE INDEX tasks_by_status ON tasks (status, seq);
            CREATE INDEX tasks_by_type ON tasks (task_type, seq);
            PRAGMA user_version = 1;",
        )
        .expect("v1 schema");
        for name in ["old1", "old2"] {
            let spec = spec(name, "echo");
            let state = baton_core::lifecycle::TaskState::new_queued(T0);
            conn.execute(
                "INSERT INTO tasks (id, task_type, status, priority, attempt, created_at,
                    updated_at, spec, state)
                VALUES (?1, 'echo', 0, ?2, 0, ?3, ?3, ?4, ?5)",
                rusqlite::params![
                    name,
                    spec.priority.rank(),
                    T0 as i64,
                    serde_json::to_string(&spec).expect("spec json"),
                    serde_json::to_string(&state).expect("state json"),
                ],
            )
            .expect("v1 row");
        }
        drop(conn);
        SqliteStore::open(&dir, Options::default()).expect("open a v1 database")
    };

    let version: i64 = raw(&store)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION as i64);
    let old = store
        .get(&TaskId::from_trusted("old1"))
        .await
        .expect("get")
        .expect("the v1 task is still there");
    assert_eq!(old.spec, spec("old1", "echo"));
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.by_status.get("queued"), Some(&2));
    assert_eq!(counts.queued_by_type.get("echo"), Some(&2));
    let claimed = store.claim(claim_request("echo", 10)).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].spec, spec("old1", "echo"));
    drop(store);
    drop(std::fs::remove_dir_all(&dir));
}

/// The checkpointer thread copies the WAL into the database without the
/// writer: with the writer's own checkpoint out of reach, every frame of a
/// moderate load is copied ("backfilled") soon after it is written.
#[tokio::test]
async fn the_checkpointer_copies_the_wal_beside_the_writer() {
    let store = SqliteStore::open_temp_with(Options {
        wal_backstop_pages: 1_000_000,
        ..Options::default()
    })
    .unwrap();
    // The wal-index header in the `-shm` file (SQLite's documented WAL format,
    // native byte order): `mxFrame`, the last valid frame, at byte 16, and
    // `nBackfill`, the frames copied into the database, at byte 96.
    let shm = store.dir().join(format!("{DB_FILE}-shm"));
    let frames = || {
        let bytes = std::fs::read(&shm).expect("read the -shm file");
        let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        (word(16), word(96))
    };
    for round in 0..5 {
        let specs = (0..200)
            .map(|i| spec(&format!("c-{round}-{i}"), "echo"))
            .collect();
        store.submit(specs, T0).await.unwrap();
    }
    let (written, _) = frames();
    assert!(written > 10, "the submits wrote {written} WAL frames");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (last, copied) = frames();
        if copied >= written && copied == last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpointer copied {copied} of {last} frames"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A busy writer with readers active must not grow the WAL without bound: the
/// checkpoint has to finish now and then so that the WAL restarts from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_constant_writes_and_reads() {
    let store = std::sync::Arc::new(
        SqliteStore::open_temp_with(Options {
            synchronous: Synchronous::Normal,
            // The writer's own checkpoint at 16 MiB, as the bound checked below.
            wal_backstop_pages: 4_000,
            ..Options::default()
        })
        .unwrap(),
    );
    let wal = store.dir().join(format!("{DB_FILE}-wal"));
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (store, reading) = (store.clone(), reading.clone());
        tokio::spawn(async move {
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                store.counts().await.unwrap();
                store.get(&TaskId::from_trusted("t-0-0")).await.unwrap();
            }
        })
    };
    // Several writers at once keep the writer thread busy, as a loaded server does.
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..40 {
                let task_type = format!("bulk{w}");
                let specs: Vec<_> = (0..100)
                    .map(|i| spec(&format!("t-{w}-{round}-{i}"), &task_type))
                    .collect();
                store.submit(specs, T0).await.unwrap();
                let claimed = store
                    .claim(ClaimRequest {
                        task_type,
                        max: 100,
                        agent_id: baton_core::AgentId::from_trusted("a"),
                        lease_owner: format!("s{w}"),
                        lease_deadline_ms: T0 + 60_000,
                        now: T0,
                    })
                    .await
                    .unwrap();
                let updates = claimed
                    .into_iter()
                    .map(|c| Update {
                        task_id: c.spec.task_id,
                        command: Command::Succeed {
                            attempt: c.attempt,
                            output: serde_json::json!({"x": "y".repeat(200)}),
                        },
                    })
                    .collect();
                store.update(updates, T0 + 1).await.unwrap();
            }
        }));
    }
    let mut max_wal = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        max_wal = max_wal.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    reader.await.unwrap();
    // 16,000 tasks rewrite far more than 64 MiB of pages in all; a bounded WAL stays
    // near the backstop (16 MiB) plus one batch, whatever the checkpointer
    // thread manages beside the writer.
    assert!(max_wal < 40 * 1024 * 1024, "WAL grew to {max_wal} bytes");
}

/// Queued and running tasks are not in the status index (schema version 5): they
/// are still listed newest first, page by page, and counted when a store opens.
#[tokio::test]
async fn queued_and_running_tasks_are_listed_and_counted_without_the_status_index() {
    use baton_core::Status;
    use baton_store::ListFilter;

    let store = SqliteStore::open_temp().expect("open");
    let specs: Vec<_> = (0..7)
        .map(|i| spec(&format!("t{i}"), if i % 2 == 0 { "even" } else { "odd" }))
        .collect();
    store.submit(specs, T0).await.expect("submit");
    // t0 and t2 run; t0 then completes.
    let claimed = store.claim(claim_request("even", 2)).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    let done = Update {
        task_id: TaskId::from_trusted("t0"),
        command: Command::Succeed {
            attempt: 1,
            output: serde_json::json!({}),
        },
    };
    store.update(vec![done], T0 + 2).await.expect("complete");

    let list = |status: Status, task_type: Option<&str>, limit: usize| {
        let store = &store;
        let task_type = task_type.map(str::to_string);
        async move {
            let mut ids = Vec::new();
            let mut cursor = None;
            loop {
                let page = store
                    .list(ListFilter {
                        status: Some(status),
                        task_type: task_type.clone(),
                        limit,
                        cursor,
                    })
                    .await
                    .expect("list");
                ids.extend(page.tasks.into_iter().map(|t| t.spec.task_id.to_string()));
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => return ids,
                }
            }
        }
    };
    assert_eq!(
        list(Status::Queued, None, 2).await,
        ["t6", "t5", "t4", "t3", "t1"]
    );
    assert_eq!(list(Status::Queued, Some("even"), 1).await, ["t6", "t4"]);
    assert_eq!(list(Status::Running, None, 1).await, ["t2"]);
    assert_eq!(
        list(Status::Running, Some("odd"), 10).await,
        Vec::<String>::new()
    );
    assert_eq!(list(Status::Completed, None, 10).await, ["t0"]);
    assert_eq!(list(Status::Completed, Some("even"), 10).await, ["t0"]);

    let before = store.counts().await.expect("counts");
    let store = store.reopen().expect("reopen");
    let after = store.counts().await.expect("counts");
    assert_eq!(after, before, "the counts at open match the ones kept");
    assert_eq!(after.by_status.get("queued"), Some(&5));
    assert_eq!(after.by_status.get("running"), Some(&1));
    assert_eq!(after.by_status.get("completed"), Some(&1));
}

#[tokio::test]
async fn run_documents_are_stored_compressed_and_plain_ones_still_read() {
    use baton_store::conformance::run_record;
    use baton_store::RunWrite;
    let store = SqliteStore::open_temp().expect("open");
    let mut record = run_record("r-big", "running", true, 1, T0);
    // A document like the engine's: steps and events that repeat their shape.
    let steps: Vec<serde_json::Value> = (0..50)
        .map(|i| serde_json::json!({"id": format!("s{i}"), "status": "completed", "started_at_ms": T0 + i}))
        .collect();
    record.body = serde_json::json!({"run": {"steps": steps, "events": []}}).into();
    let text_len = record.body.as_str().len();
    store
        .write_runs(
            vec![RunWrite {
                record: record.clone(),
                expected_revision: None,
                tasks: vec![],
                starts: vec![],
            }],
            T0,
        )
        .await
        .expect("write");
    let conn = raw(&store);
    let (kind, stored_len): (String, i64) = conn
        .query_row(
            "SELECT typeof(body), length(body) FROM runs WHERE run_id = 'r-big'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("stored row");
    assert_eq!(kind, "blob");
    assert!(
        (stored_len as usize) * 3 < text_len,
        "{stored_len} bytes stored for {text_len} of JSON"
    );
    let back = store.get_run("r-big").await.expect("get").expect("found");
    assert_eq!(back.body, record.body);

    // A run an earlier build wrote as JSON text reads the same.
    conn.execute(
        "UPDATE runs SET body = ?1 WHERE run_id = 'r-big'",
        [record.body.as_str()],
    )
    .expect("plain text body");
    let back = store.get_run("r-big").await.expect("get").expect("found");
    assert_eq!(back.body, record.body);
    let listed = store
        .list_runs(Default::default())
        .await
        .expect("list")
        .runs;
    assert_eq!(listed[0].body, record.body);

    // A blob that is not a compressed document is corrupt, not a panic.
    conn.execute(
        "UPDATE runs SET body = x'0500000001' WHERE run_id = 'r-big'",
        [],
    )
    .expect("bad blob");
    assert!(matches!(
        store.get_run("r-big").await,
        Err(Error::Corrupt(_))
    ));
}
