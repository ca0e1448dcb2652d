//! The PostgreSQL store against a real server: the conformance suite (each case in
//! a schema of its own, dropped afterwards), then what the suite cannot express:
//! several replicas over one schema, work notifications, migrations, errors and
//! bad rows.
//!
//! The server is `BATON_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`.

use baton_core::lifecycle::{Command, Failure, FailureKind, Refusal};
use baton_core::{AgentId, InputPart, Status, TaskId};
use baton_store::conformance::{spec, T0};
use baton_store::{
    ClaimRequest, Claimed, Error, Fence, Store, SubmitOutcome, Update, UpdateOutcome,
};
use baton_store_postgres::{Options, PgStore, SCHEMA_VERSION, TEMP_SCHEMA_PREFIX};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::NoTls;

fn url() -> String {
    std::env::var("BATON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn temp_store() -> PgStore {
    PgStore::connect_temp(&url(), Options::default())
        .await
        .expect("connect to postgres (see BATON_TEST_POSTGRES_URL)")
}

baton_store::store_conformance_tests!(
    temp_store(),
    reopen =
        |store: PgStore| async move { store.reopen().await.expect("reconnect postgres store") },
);

/// Another replica: a second store over the same database and schema.
async fn replica_of(store: &PgStore) -> PgStore {
    let options = Options {
        schema: store.schema().to_string(),
        ..Options::default()
    };
    PgStore::connect(&url(), options)
        .await
        .expect("connect a second replica")
}

/// A plain connection, for looking behind the store's back.
async fn raw() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(connection);
    client
}

/// `name`'s fence for the singleton duties, held for a day from `T0`.
async fn leader(store: &PgStore, name: &str) -> Fence {
    store
        .acquire_leadership(name, T0, 86_400_000)
        .await
        .expect("acquire_leadership")
        .fence_for(name)
        .expect("the role was free")
}

fn claim_request(task_type: &str, max: usize, owner: &str, now: u64) -> ClaimRequest {
    ClaimRequest {
        task_type: task_type.into(),
        max,
        agent_id: AgentId::from_trusted(format!("agent-{owner}")),
        lease_owner: owner.into(),
        lease_deadline_ms: now + 60_000,
        now,
    }
}

fn succeed(claimed: &Claimed) -> Update {
    Update {
        task_id: claimed.spec.task_id.clone(),
        command: Command::Succeed {
            attempt: claimed.attempt,
            output: serde_json::json!({"ok": true}),
        },
    }
}

// ---------------------------------------------------------------------------
// Several replicas
// ---------------------------------------------------------------------------

/// Two stores (two orchestrator processes, as far as PostgreSQL can tell), each
/// with several claimers, race over the same queue: every task is claimed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_claim_disjoint_sets() {
    const TASKS: usize = 2_000;
    let first = Arc::new(temp_store().await);
    let second = Arc::new(replica_of(&first).await);
    let specs: Vec<_> = (0..TASKS)
        .map(|i| spec(&format!("t{i:05}"), "race"))
        .collect();
    for chunk in specs.chunks(500) {
        first.submit(chunk.to_vec(), T0).await.expect("submit");
    }

    let mut claimers = Vec::new();
    for (r, replica) in [&first, &second].into_iter().enumerate() {
        for c in 0..4 {
            let store = Arc::clone(replica);
            claimers.push(tokio::spawn(async move {
                let owner = format!("replica{r}-claimer{c}");
                let mut got = Vec::new();
                loop {
                    let batch = store
                        .claim(claim_request("race", 25, &owner, T0 + 1))
                        .await
                        .expect("claim");
                    if batch.is_empty() {
                        break;
                    }
                    got.extend(batch.into_iter().map(|c| (c.spec.task_id, c.attempt)));
                }
                (owner, got)
            }));
        }
    }
    let mut owner_of: BTreeMap<TaskId, String> = BTreeMap::new();
    let mut per_replica = [0usize; 2];
    for claimer in claimers {
        let (owner, got) = claimer.await.expect("claimer");
        per_replica[usize::from(owner.starts_with("replica1"))] += got.len();
        for (task, attempt) in got {
            assert_eq!(attempt, 1, "{task} claimed with attempt {attempt}");
            if let Some(other) = owner_of.insert(task.clone(), owner.clone()) {
                panic!("{task} claimed by both {other} and {owner}");
            }
        }
    }
    assert_eq!(owner_of.len(), TASKS, "every task claimed");
    assert!(
        per_replica.iter().all(|&n| n > 0),
        "both replicas claimed work: {per_replica:?}"
    );
    for store in [&first, &second] {
        let counts = store.counts().await.expect("counts");
        assert_eq!(
            counts.by_status,
            BTreeMap::from([("running".to_string(), TASKS as u64)]),
            "counts agree across replicas"
        );
        assert!(store.queued_types().await.expect("queued types").is_empty());
    }
}

/// Both replicas record the same results at once, in opposite orders: each attempt
/// completes exactly once, and row locks taken in one order never deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_recorded_by_two_replicas_apply_once() {
    let first = Arc::new(temp_store().await);
    let second = Arc::new(replica_of(&first).await);
    let specs: Vec<_> = (0..300)
        .map(|i| spec(&format!("r{i:04}"), "echo"))
        .collect();
    first.submit(specs, T0).await.expect("submit");
    let claimed = first
        .claim(claim_request("echo", 300, "owner", T0 + 1))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 300);

    let forward: Vec<Update> = claimed.iter().map(succeed).collect();
    let backward: Vec<Update> = claimed.iter().rev().map(succeed).collect();
    let mut recorders = Vec::new();
    for (store, updates) in [(&first, forward), (&second, backward)] {
        let store = Arc::clone(store);
        recorders.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for chunk in updates.chunks(30) {
                let out = store.update(chunk.to_vec(), T0 + 2).await.expect("update");
                outcomes.extend(chunk.iter().map(|u| u.task_id.clone()).zip(out));
            }
            outcomes
        }));
    }
    let mut applied: BTreeMap<TaskId, usize> = BTreeMap::new();
    for recorder in recorders {
        for (task, outcome) in recorder.await.expect("recorder") {
            match outcome {
                UpdateOutcome::Applied { record, .. } => {
                    assert_eq!(record.state.status, Status::Completed);
                    *applied.entry(task).or_default() += 1;
                }
                // Completed by the other replica first.
                UpdateOutcome::Refused(
                    Refusal::Illegal {
                        from: Status::Completed,
                        ..
                    }
                    | Refusal::StaleAttempt {
                        status: Status::Completed,
                        ..
                    },
                ) => {}
                other => panic!("{task}: unexpected {other:?}"),
            }
        }
    }
    assert_eq!(applied.len(), 300);
    assert!(
        applied.values().all(|&n| n == 1),
        "each result applied once"
    );
}

/// A replica whose lease expired cannot record its late result over the attempt
/// another replica started since.
#[tokio::test]
async fn a_late_result_is_fenced_off_across_replicas() {
    let first = temp_store().await;
    let second = replica_of(&first).await;
    first
        .submit(vec![spec("slow", "echo")], T0)
        .await
        .expect("submit");
    let mut request = claim_request("echo", 1, "first-session", T0 + 1);
    request.lease_deadline_ms = T0 + 1_000;
    let old = first.claim(request).await.expect("claim").remove(0);

    let duties = leader(&second, "second").await;
    let expired = second
        .expire_leases(T0 + 1_001, &duties)
        .await
        .expect("expire");
    assert_eq!(expired, vec![TaskId::from_trusted("slow")]);
    assert_eq!(
        second
            .promote_due(T0 + 60_000, &duties)
            .await
            .expect("promote"),
        vec!["echo"]
    );
    let new = second
        .claim(claim_request("echo", 1, "second-session", T0 + 60_001))
        .await
        .expect("claim")
        .remove(0);
    assert_eq!((old.attempt, new.attempt), (1, 2));

    let late = first
        .update(vec![succeed(&old)], T0 + 60_002)
        .await
        .expect("update");
    assert_eq!(
        late,
        vec![UpdateOutcome::Refused(Refusal::StaleAttempt {
            got: 1,
            current: 2,
            status: Status::Running
        })]
    );
    assert!(matches!(
        second
            .update(vec![succeed(&new)], T0 + 60_003)
            .await
            .expect("update")[0],
        UpdateOutcome::Applied { .. }
    ));
}

// ---------------------------------------------------------------------------
// Work notifications
// ---------------------------------------------------------------------------

/// Waits for `task_type` on `work`, skipping other types (other tests share the
/// channel), for at most 10 s.
async fn expect_work(work: &mut broadcast::Receiver<String>, task_type: &str) {
    let wait = async {
        loop {
            match work.recv().await {
                Ok(t) if t == task_type => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("work channel closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no work notification for {task_type}"));
}

/// Types that arrive within `window`.
async fn drain(work: &mut broadcast::Receiver<String>, window: Duration) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let _ = tokio::time::timeout(window, async {
        while let Ok(t) = work.recv().await {
            seen.insert(t);
        }
    })
    .await;
    seen
}

/// The pid of the store's listener connection, once it is listening.
async fn listener_pid(raw: &tokio_postgres::Client, app: &str, not: Option<i32>) -> i32 {
    for _ in 0..200 {
        let rows = raw
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("{app} listener")],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(pid) = rows
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .find(|p| Some(*p) != not)
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no listener connection named {app} listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_notifications_reach_other_replicas_and_survive_a_reconnect() {
    let store = temp_store().await;
    // A name of its own, to find its listener among other tests' connections.
    let app = store.schema().replace(TEMP_SCHEMA_PREFIX, "bt");
    let listening = PgStore::connect(
        &format!("{}?application_name={app}", url()),
        Options {
            schema: store.schema().to_string(),
            ..Options::default()
        },
    )
    .await
    .expect("second replica");
    let unique = |t: &str| format!("{t}-{}", store.schema());

    // Queued before anyone subscribed: announced when the listener starts.
    store
        .submit(vec![spec("early", &unique("early"))], T0)
        .await
        .expect("submit");
    let mut work = listening.subscribe_work();
    expect_work(&mut work, &unique("early")).await;
    let raw = raw().await;
    let pid = listener_pid(&raw, &app, None).await;

    // Submitted by the other replica.
    store
        .submit(vec![spec("a", &unique("submitted"))], T0)
        .await
        .expect("submit");
    expect_work(&mut work, &unique("submitted")).await;

    // A retry promoted, a dead letter reprocessed, a waiting task released.
    let retried = unique("retried");
    let mut one_attempt = spec("b", &retried);
    one_attempt.retry = baton_store::conformance::policy(1);
    store.submit(vec![one_attempt], T0).await.expect("submit");
    expect_work(&mut work, &retried).await;
    let claimed = store
        .claim(claim_request(&retried, 1, "o", T0 + 1))
        .await
        .expect("claim");
    let fail = Command::Fail {
        attempt: claimed[0].attempt,
        failure: Failure::new(FailureKind::Retryable, "boom"),
    };
    let update = |command| {
        vec![Update {
            task_id: TaskId::from_trusted("b"),
            command,
        }]
    };
    store.update(update(fail), T0 + 2).await.expect("fail");
    let quiet = drain(&mut work, Duration::from_millis(300)).await;
    assert!(
        !quiet.contains(&retried),
        "a dead letter is not work: {quiet:?}"
    );
    store
        .update(update(Command::Reprocess), T0 + 3)
        .await
        .expect("reprocess");
    expect_work(&mut work, &retried).await;

    let released = unique("released");
    let mut child = spec("child", &released);
    child.dependencies = vec![TaskId::from_trusted("a")];
    store.submit(vec![child], T0).await.expect("submit");
    let quiet = drain(&mut work, Duration::from_millis(300)).await;
    assert!(
        !quiet.contains(&released),
        "a waiting task is not work: {quiet:?}"
    );
    store
        .update(
            vec![Update {
                task_id: TaskId::from_trusted("child"),
                command: Command::Release,
            }],
            T0 + 4,
        )
        .await
        .expect("release");
    expect_work(&mut work, &released).await;

    let promoted = unique("promoted");
    store
        .submit(vec![spec("c", &promoted)], T0)
        .await
        .expect("submit");
    expect_work(&mut work, &promoted).await;
    let claimed = store
        .claim(claim_request(&promoted, 1, "o", T0 + 1))
        .await
        .expect("claim");
    store
        .update(
            vec![Update {
                task_id: TaskId::from_trusted("c"),
                command: Command::Fail {
                    attempt: claimed[0].attempt,
                    failure: Failure::new(FailureKind::Retryable, "again"),
                },
            }],
            T0 + 2,
        )
        .await
        .expect("fail");
    store
        .promote_due(T0 + 60_000, &leader(&store, "me").await)
        .await
        .expect("promote");
    expect_work(&mut work, &promoted).await;

    // The listener's connection dies: it comes back, and hears of new work.
    raw.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate the listener's connection");
    let new_pid = listener_pid(&raw, &app, Some(pid)).await;
    assert_ne!(new_pid, pid);
    let after = unique("after");
    store
        .submit(vec![spec("d", &after)], T0)
        .await
        .expect("submit");
    expect_work(&mut work, &after).await;

    // Dropping the store stops its listener.
    drop(work);
    drop(listening);
    for _ in 0..100 {
        let n = raw
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("{app} listener")],
            )
            .await
            .expect("pg_stat_activity")
            .len();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the listener outlived its store");
}

// ---------------------------------------------------------------------------
// Opening: URLs, errors, migrations, schemas
// ---------------------------------------------------------------------------

async fn connect_error(url: &str, options: Options) -> Error {
    match PgStore::connect(url, options).await {
        Ok(store) => panic!("connected to {url}: {store:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_unavailable_with_a_clear_message() {
    let cases = [
        ("definitely not a url", "invalid postgres url"),
        (
            "postgres://postgres@127.0.0.1:notaport/test",
            "invalid postgres url",
        ),
        ("postgres://postgres@127.0.0.1:1/test", "127.0.0.1:1"),
        (
            "postgres://postgres@127.0.0.1:5432/baton_no_such_database",
            "does not exist",
        ),
        (
            "postgres://baton_no_such_role@127.0.0.1:5432/test",
            "baton_no_such_role",
        ),
    ];
    for (url, expected) in cases {
        match connect_error(url, Options::default()).await {
            Error::Unavailable(message) => {
                assert!(message.contains(expected), "{url}: {message}");
                assert!(!message.contains("db error"), "{url}: vague: {message}");
            }
            other => panic!("{url}: expected Unavailable, got {other:?}"),
        }
    }
    // A password never appears in a message.
    match connect_error("postgres://u:hunter2@127.0.0.1:1/test", Options::default()).await {
        Error::Unavailable(message) => assert!(!message.contains("hunter2"), "{message}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    for schema in ["", "Upper", "x;drop", "pg_catalog"] {
        let options = Options {
            schema: schema.into(),
            ..Options::default()
        };
        assert!(
            matches!(connect_error(&url(), options).await, Error::Other(_)),
            "schema {schema:?}"
        );
    }
}

#[tokio::test]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let store = temp_store().await;
    let schema = store.schema().to_string();
    let raw = raw().await;
    let sql = format!("SELECT version FROM \"{schema}\".baton_schema_migrations ORDER BY version");
    let expected: Vec<i32> = (1..=SCHEMA_VERSION as i32).collect();
    let read = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<i32>>();
    assert_eq!(read(raw.query(&sql, &[]).await.unwrap()), expected);
    let store = store.reopen().await.expect("reopen");
    let _replica = replica_of(&store).await;
    assert_eq!(
        read(raw.query(&sql, &[]).await.unwrap()),
        expected,
        "applied once"
    );

    raw.execute(
        &format!(
            "INSERT INTO \"{schema}\".baton_schema_migrations (version, description) VALUES ($1, 'from the future')"
        ),
        &[&(SCHEMA_VERSION as i32 + 1)],
    )
    .await
    .unwrap();
    match store.reopen().await {
        Err(Error::Unavailable(message)) => assert!(message.contains("newer"), "{message}"),
        other => panic!("opened a schema from a newer build: {other:?}"),
    }
    // The temporary schema went with the store that failed to open.
    let left = raw
        .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .unwrap();
    assert!(left.is_empty(), "temporary schema {schema} left behind");
}

/// Several replicas starting at once on an empty schema: one migrates, none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once() {
    let holder = temp_store().await;
    let schema = format!("{}_fresh", holder.schema());
    let options = Options {
        schema: schema.clone(),
        ..Options::default()
    };
    let url = url();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let (url, options) = (url.clone(), options.clone());
            tokio::spawn(async move { PgStore::connect(&url, options).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("join").expect("connect"));
    }
    let raw = raw().await;
    let n: i64 = raw
        .query_one(
            &format!("SELECT COUNT(*) FROM \"{schema}\".baton_schema_migrations"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, i64::from(SCHEMA_VERSION));
    stores[0]
        .submit(vec![spec("x", "echo")], T0)
        .await
        .expect("submit");
    assert_eq!(
        stores[5].counts().await.unwrap().by_status.get("queued"),
        Some(&1)
    );
    drop(stores);
    raw.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_temporary_schema_is_dropped_with_its_store() {
    let store = temp_store().await;
    let schema = store.schema().to_string();
    assert!(schema.starts_with(TEMP_SCHEMA_PREFIX), "{schema}");
    assert!(!store.exclusive(), "a shared store");
    let store = store.reopen().await.expect("reopen");
    assert_eq!(store.schema(), schema, "reopen keeps the schema");
    drop(store);
    let raw = raw().await;
    let left = raw
        .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .unwrap();
    assert!(left.is_empty(), "{schema} is still there");
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

/// Task documents are JSON, not JSONB: any text a client sends, NUL included,
/// comes back as it went in.
#[tokio::test]
async fn any_text_round_trips() {
    let store = temp_store().await;
    let mut odd = spec("odd", "echo");
    odd.inputs = vec![InputPart::text(
        "nul \u{0} tab \t emoji 🦀 quote \" backslash \\",
    )];
    odd.metadata
        .insert("float".into(), serde_json::json!(0.30000000000000004));
    let out = store.submit(vec![odd.clone()], T0).await.expect("submit");
    assert!(matches!(out[0], SubmitOutcome::Created(_)));
    let stored = store
        .get(&TaskId::from_trusted("odd"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.spec, odd);
    assert!(matches!(
        store.submit(vec![odd], T0 + 1).await.expect("submit")[0],
        SubmitOutcome::Existing(_)
    ));
}

#[tokio::test]
async fn a_corrupt_row_fails_only_its_own_operation() {
    let store = temp_store().await;
    store
        .submit(vec![spec("bad", "broken"), spec("good", "echo")], T0)
        .await
        .expect("submit");
    let raw = raw().await;
    raw.execute(
        &format!(
            "UPDATE \"{}\".tasks SET state = '{{\"not\": \"a state\"}}' WHERE id = 'bad'",
            store.schema()
        ),
        &[],
    )
    .await
    .expect("corrupt the row");

    match store.get(&TaskId::from_trusted("bad")).await {
        Err(Error::Corrupt(message)) => assert!(message.contains("state"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(store
        .get(&TaskId::from_trusted("good"))
        .await
        .expect("get")
        .is_some());
    let cancel = vec![Update {
        task_id: TaskId::from_trusted("bad"),
        command: Command::Cancel { reason: None },
    }];
    assert!(matches!(
        store.update(cancel, T0 + 1).await,
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        store.claim(claim_request("broken", 1, "o", T0 + 1)).await,
        Err(Error::Corrupt(_))
    ));
    let claimed = store
        .claim(claim_request("echo", 10, "o", T0 + 1))
        .await
        .expect("other tasks are unaffected");
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store
            .get(&TaskId::from_trusted("good"))
            .await
            .unwrap()
            .unwrap()
            .state
            .status,
        Status::Running
    );
}

#[tokio::test]
async fn abandoned_temporary_schemas_are_swept() {
    let raw = raw().await;
    let abandoned = format!("{TEMP_SCHEMA_PREFIX}1000000000_{}_0_0", std::process::id());
    raw.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{abandoned}\""))
        .await
        .unwrap();
    let _store = temp_store().await;
    let left = raw
        .query(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&abandoned],
        )
        .await
        .unwrap();
    assert!(left.is_empty(), "{abandoned} was not swept");
}

/// Connections cut under the store (a database restart, a proxy dropping them):
/// calls fail as `Unavailable` at worst, and the pool replaces the connections.
#[tokio::test]
async fn the_store_recovers_when_its_connections_are_cut() {
    let store = temp_store().await;
    store
        .submit(vec![spec("before", "echo")], T0)
        .await
        .expect("submit");
    let raw = raw().await;
    let cut = raw
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&store.schema()],
        )
        .await
        .expect("terminate");
    assert!(!cut.is_empty(), "the store had connections to cut");
    let mut answered = false;
    for _ in 0..5 {
        match store.ping().await {
            Ok(()) => {
                answered = true;
                break;
            }
            Err(Error::Unavailable(_)) => {}
            Err(other) => panic!("a cut connection is not {other:?}"),
        }
    }
    assert!(answered, "the store did not reconnect");
    store
        .submit(vec![spec("after", "echo")], T0)
        .await
        .expect("submit after reconnecting");
    assert_eq!(
        store.counts().await.unwrap().by_status.get("queued"),
        Some(&2)
    );
}

/// Candidates on several replicas asking at the same moment: exactly one gets the
/// role, and every one of them is told who has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_for_leadership_elect_exactly_one() {
    let first = temp_store().await;
    let mut replicas = vec![Arc::new(first)];
    for _ in 0..3 {
        let next = replica_of(&replicas[0]).await;
        replicas.push(Arc::new(next));
    }
    for round in 0..20u64 {
        let now = T0 + round * 10_000;
        let asks = replicas.iter().enumerate().map(|(i, store)| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .acquire_leadership(&format!("r{i}"), now, 5_000)
                    .await
                    .expect("acquire")
            })
        });
        let mut answers = Vec::new();
        for ask in asks.collect::<Vec<_>>() {
            answers.push(ask.await.expect("join"));
        }
        let first = &answers[0];
        assert!(
            answers.iter().all(|a| a == first),
            "round {round}: replicas disagree: {answers:?}"
        );
        assert_eq!(first.epoch, round + 1, "one new epoch per lapsed round");
    }
}

/// Extending leases writes the owners' rows, never the tasks': a task row keeps
/// its row version (`xmin`) through any number of heartbeats.
#[tokio::test]
async fn heartbeats_do_not_rewrite_task_rows() {
    let store = temp_store().await;
    store
        .submit(vec![spec("held", "echo")], T0)
        .await
        .expect("submit");
    let mut request = claim_request("echo", 1, "session", T0 + 1);
    request.lease_deadline_ms = T0 + 1_000;
    store.claim(request).await.expect("claim");
    let client = raw().await;
    let sql = format!(
        "SELECT xmin::text FROM \"{}\".tasks WHERE id = 'held'",
        store.schema()
    );
    let version = || async {
        let row = client.query_one(&sql, &[]).await.expect("xmin");
        row.get::<_, String>(0)
    };
    let before = version().await;
    for beat in 1..=5u64 {
        let held = store
            .extend_leases(&["session".to_string()], T0 + 1_000 * beat + 1_000)
            .await
            .expect("extend");
        assert_eq!(held, 1);
    }
    assert_eq!(version().await, before, "the task row was rewritten");
    let record = store
        .get(&TaskId::from_trusted("held"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(record.state.lease_deadline_ms, Some(T0 + 6_000));
    let duties = leader(&store, "leader").await;
    assert!(store
        .expire_leases(T0 + 5_999, &duties)
        .await
        .expect("expire")
        .is_empty());
    assert_eq!(
        store
            .expire_leases(T0 + 6_001, &duties)
            .await
            .expect("expire"),
        vec![TaskId::from_trusted("held")]
    );
}
