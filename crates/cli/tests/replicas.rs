//! Several `baton serve` replicas on one PostgreSQL, started and killed as a user
//! (or Kubernetes) would: agents spread across them, a replica killed with SIGKILL
//! mid-run, the leader stalled and killed. Each test gets a schema of its own,
//! dropped afterwards. PostgreSQL is `BATON_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`.

mod common;

use baton_store_postgres::{Options, PgStore};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn pg_url() -> String {
    std::env::var("BATON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of the test's own (migrated, dropped when this is dropped).
async fn schema() -> PgStore {
    PgStore::connect_temp(&pg_url(), Options::default())
        .await
        .expect("connect to postgres (see BATON_TEST_POSTGRES_URL)")
}

/// Short leases, so that a dead replica's work moves on within seconds.
const FAST: &[(&str, &str)] = &[
    ("BATON_LEASE_MS", "2000"),
    ("BATON_HEARTBEAT_INTERVAL_MS", "500"),
    ("BATON_AGENT_TIMEOUT_MS", "2000"),
    ("BATON_LEADER_LEASE_MS", "1500"),
];

fn replica(dir: &TempDir, schema: &PgStore, n: usize) -> Server {
    let data = dir.0.join(format!("r{n}"));
    let url = pg_url();
    Server::start_with_env(
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--store", &url, "--store-schema", schema.schema()],
        FAST,
    )
}

/// The agent's endpoints: its own replica first, then the others.
fn endpoints_from(servers: &[Server], first: usize) -> String {
    (0..servers.len())
        .map(|i| servers[(first + i) % servers.len()].grpc.clone())
        .collect::<Vec<_>>()
        .join(",")
}

async fn health(api: &Api) -> Option<Value> {
    let resp = api
        .http
        .get(format!("{}/health", api.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

fn count(health: &Value, status: &str) -> u64 {
    health["stats"]["tasks"][status].as_u64().unwrap_or(0)
}

/// Waits until a replica's `/health` satisfies `check`; returns it.
async fn until(api: &Api, within: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(h) = health(api).await {
            if check(&h) {
                return h;
            }
            last = h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {within:?}; last health: {last}");
}

fn is_leader(h: &Value) -> bool {
    h["stats"]["replica"]["leader"] == json!(true)
}

/// 3 replicas, an agent on each (each knowing all three), 10,000 tasks submitted
/// across them; one replica is killed with SIGKILL mid-run. Every task completes,
/// exactly once in the final state, and the dead replica's agent finishes its work
/// on another replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_lose_nothing_when_one_is_killed() {
    let schema = schema().await;
    let dir = TempDir::new("replicas");
    let mut servers: Vec<Server> = (0..3).map(|n| replica(&dir, &schema, n)).collect();
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(&s.http)).collect();
    let _agents: Vec<AgentProc> = (0..3)
        .map(|i| AgentProc::start(&endpoints_from(&servers, i), "sleep", 32, &format!("a{i}")))
        .collect();
    for api in &apis {
        api.wait_agents(1).await;
    }

    const TOTAL: usize = 10_000;
    const BATCH: usize = 500;
    for b in 0..TOTAL / BATCH {
        let tasks: Vec<Value> = (0..BATCH)
            .map(|i| {
                json!({"task_id": format!("t{}", b * BATCH + i), "task_type": "sleep",
                       "metadata": {"sleep_ms": 2}})
            })
            .collect();
        let r = apis[b % 3]
            .post("/api/v1/tasks/batch", &json!({ "tasks": tasks }))
            .await;
        assert!(r.status < 300, "batch {b}: {} {}", r.status, r.body);
    }

    // Kill replica 0 (whatever it was doing) once the run is well under way.
    until(&apis[1], Duration::from_secs(60), "progress", |h| {
        count(h, "completed") >= 2_000
    })
    .await;
    let killed_at = Instant::now();
    servers[0].kill();

    let done = until(
        &apis[1],
        Duration::from_secs(120),
        "all tasks completed",
        |h| count(h, "completed") == TOTAL as u64,
    )
    .await;
    let recovery = killed_at.elapsed();
    for status in [
        "queued",
        "running",
        "retry_wait",
        "failed",
        "dead_lettered",
        "cancelled",
    ] {
        assert_eq!(count(&done, status), 0, "{status}: {done}");
    }
    // Each task exactly once: the ids are distinct and every one of them is completed.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tasks?status=completed&limit=1000&cursor={c}"),
            None => "/api/v1/tasks?status=completed&limit=1000".to_string(),
        };
        let page = apis[2].get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for t in page.body["tasks"].as_array().expect("tasks") {
            let id = t["task_id"].as_str().expect("task_id").to_string();
            assert!(seen.insert(id.clone()), "{id} listed twice");
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), TOTAL);
    eprintln!("all {TOTAL} tasks completed {recovery:?} after the SIGKILL");
}

/// Two replicas, each with an agent of its own type: a run's steps alternate
/// between the types, so they finish on either replica, and the replica that
/// hears of a step advances the run. Both write the same runs and each finds
/// the other's writes (a revision conflict, then the run read back). Every run
/// completes, and every step ran once, on the agent of its type.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_advanced_by_two_replicas_complete_with_each_step_once() {
    let schema = schema().await;
    let dir = TempDir::new("replica-runs");
    let servers: Vec<Server> = (0..2).map(|n| replica(&dir, &schema, n)).collect();
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(&s.http)).collect();
    let types = ["echo", "sleep"];
    let _agents: Vec<AgentProc> = (0..2)
        .map(|i| AgentProc::start(&servers[i].grpc, types[i], 8, &format!("ra{i}")))
        .collect();
    for api in &apis {
        api.wait_agents(1).await;
    }
    const RUNS: usize = 60;
    let steps = ["a", "b", "c", "d", "e"];
    let def = json!({"execution_mode": "sequential",
        "steps": steps.iter().enumerate()
            .map(|(k, id)| json!({"id": id, "task_type": types[k % 2]}))
            .collect::<Vec<_>>()});
    let started = Instant::now();
    for i in 0..RUNS {
        let r = apis[i % 2]
            .post(
                "/api/v1/runs",
                &json!({"run_id": format!("rr{i}"), "definition": def}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    for i in 0..RUNS {
        let run = wait_finished(&apis[(i + 1) % 2], &format!("rr{i}")).await;
        assert_eq!(run["status"], "completed", "{run}");
        for (k, id) in steps.iter().enumerate() {
            let s = step(&run, id);
            assert_eq!(s["status"], "completed", "{run}");
            let tasks = s["tasks"].as_array().unwrap();
            assert_eq!(tasks.len(), 1, "{run}");
            assert_eq!(tasks[0]["attempts"], 1, "step {id} ran again: {run}");
            let agent = format!("ra{}", k % 2);
            assert_eq!(tasks[0]["agent_id"], json!(agent), "{run}");
        }
    }
    // A replica hears at once of a step another replica started: not at the
    // run's next reconcile, which comes only after 5 s quiet (each of these
    // runs changes replica at every step).
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "the runs took {took:?}");
    // Each replica lets go of its copies of the runs, those another replica
    // ended too: at their next reconcile (5 s after they went quiet), each is
    // read back and, found ended, dropped.
    for server in &servers {
        let metrics = server.metrics.as_deref().expect("metrics on");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = reqwest::get(format!("{metrics}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let held = text
                .lines()
                .find_map(|l| l.strip_prefix("orchestrator_active_runs "))
                .map(|v| v.trim().to_string());
            if held.as_deref() == Some("0") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica still holds runs that ended: {held:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The leader stalls (SIGSTOP): another replica takes the role within the lease;
/// the stalled one, resumed, finds itself a follower. Then the leader is killed:
/// the last replica takes over and does the singleton duties (a retried task's
/// promotion), so work that needs them still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_or_killed_leader_is_replaced_within_its_lease() {
    let schema = schema().await;
    let dir = TempDir::new("leader");
    let mut servers: Vec<Server> = (0..3).map(|n| replica(&dir, &schema, n)).collect();
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(&s.http)).collect();

    // Exactly one leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let mut leaders = Vec::new();
        for (i, api) in apis.iter().enumerate() {
            if health(api).await.is_some_and(|h| is_leader(&h)) {
                leaders.push(i);
            }
        }
        if leaders.len() == 1 {
            break leaders[0];
        }
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first_epoch = health(&apis[leader]).await.expect("health")["stats"]["replica"]["epoch"]
        .as_u64()
        .expect("epoch");

    // Stall it.
    let pid = servers[leader].pid().to_string();
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP");
    assert!(stop.success());
    let stalled_at = Instant::now();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (successor, h) = 'found: loop {
        for &i in &others {
            if let Some(h) = health(&apis[i]).await.filter(is_leader) {
                break 'found (i, h);
            }
        }
        assert!(
            Instant::now() < deadline,
            "nobody took over from the stalled leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let takeover = stalled_at.elapsed();
    assert!(
        takeover < Duration::from_millis(1_500 + 1_500),
        "took {takeover:?}, more than the lease plus one renewal"
    );
    let second_epoch = h["stats"]["replica"]["epoch"].as_u64().expect("epoch");
    assert!(second_epoch > first_epoch, "{second_epoch} > {first_epoch}");

    let cont = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("kill -CONT");
    assert!(cont.success());
    let resumed = until(
        &apis[leader],
        Duration::from_secs(10),
        "the resumed replica learning it lost the role",
        |h| {
            let r = &h["stats"]["replica"];
            r["holder"].is_string() && r["holder"] != r["replica_id"] && !is_leader(h)
        },
    )
    .await;
    assert_eq!(
        resumed["stats"]["replica"]["epoch"].as_u64(),
        Some(second_epoch),
        "{resumed}"
    );
    assert!(
        health(&apis[successor])
            .await
            .is_some_and(|h| is_leader(&h)),
        "the successor kept the role"
    );

    // A task that fails once needs the leader to promote its retry. Kill the leader
    // first: the third replica must take over and do it.
    let _agent = AgentProc::start(&endpoints_from(&servers, leader), "fail", 4, "flaky");
    apis[leader].wait_agents(1).await;
    servers[successor].kill();
    let last = 3 - leader - successor;
    let t = apis[last]
        .submit(json!({"task_id": "flaky", "task_type": "fail",
                       "metadata": {"fail_times": 1},
                       "retry": {"max_attempts": 3, "backoff_base_ms": 100, "backoff_cap_ms": 100}}))
        .await;
    assert_eq!(t["task_id"], "flaky");
    let done = apis[last].wait_done("flaky", Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["metrics"]["retry_count"], 1, "{done}");
    let mut leaders = 0;
    for i in [leader, last] {
        if health(&apis[i]).await.is_some_and(|h| is_leader(&h)) {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "exactly one of the two survivors leads");
}

fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster");
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Brings PostgreSQL back even when the test fails half-way.
struct StartOnDrop;
impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                "pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            ])
            .status();
    }
}

/// PostgreSQL stops in the middle of a run and starts again. While it is down,
/// both replicas say they are unhealthy and refuse submissions with 503 in the
/// usual error shape; once it is back, every task accepted before completes, and
/// new submissions are accepted again.
///
/// It stops the machine's PostgreSQL, so it cannot run beside other tests: it is
/// ignored by default and `.ci/run` runs it on its own after the test suite
/// (`cargo nextest run -p baton-cli --test replicas --run-ignored only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops the shared PostgreSQL: run alone"]
async fn postgres_stopped_and_started_mid_run_loses_nothing() {
    let _restart = StartOnDrop;
    let schema = schema().await;
    let dir = TempDir::new("pg-outage");
    let servers: Vec<Server> = (0..2).map(|n| replica(&dir, &schema, n)).collect();
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(&s.http)).collect();
    let _agents: Vec<AgentProc> = (0..2)
        .map(|i| AgentProc::start(&endpoints_from(&servers, i), "sleep", 16, &format!("a{i}")))
        .collect();
    for api in &apis {
        api.wait_agents(1).await;
    }
    const TOTAL: usize = 3_000;
    let tasks: Vec<Value> = (0..TOTAL)
        .map(|i| json!({"task_id": format!("p{i}"), "task_type": "sleep", "metadata": {"sleep_ms": 10}}))
        .collect();
    let r = apis[0]
        .post("/api/v1/tasks/batch", &json!({ "tasks": tasks }))
        .await;
    assert!(r.status < 300, "{} {}", r.status, r.body);
    until(&apis[1], Duration::from_secs(60), "progress", |h| {
        count(h, "completed") >= 300
    })
    .await;

    pg_ctl("stop");
    for api in &apis {
        until(
            api,
            Duration::from_secs(20),
            "unhealthy while PostgreSQL is down",
            |h| h["healthy"] == json!(false) && h["stats"]["store"]["reachable"] == json!(false),
        )
        .await;
    }
    let refused = apis[1].post("/api/v1/tasks", &echo("during-outage")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["code"], "unavailable",
        "{}",
        refused.body
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    pg_ctl("start");
    let done = until(
        &apis[0],
        Duration::from_secs(90),
        "every accepted task completed",
        |h| count(h, "completed") == TOTAL as u64,
    )
    .await;
    for status in ["queued", "running", "retry_wait", "failed", "dead_lettered"] {
        assert_eq!(count(&done, status), 0, "{status}: {done}");
    }
    let after = apis[1].post("/api/v1/tasks", &echo("after-outage")).await;
    assert!(after.status < 300, "{} {}", after.status, after.body);
}

/// `baton serve` on a store it cannot use: a URL that does not parse is refused at
/// once; a server that does not answer is tried again with backoff, each failure
/// said, until `store_wait_ms`, then the command fails with the reason.
#[test]
fn an_unusable_store_at_start_is_retried_then_reported() {
    let dir = TempDir::new("bad-store");
    let run = |store: &str, wait_ms: &str| {
        let started = Instant::now();
        let out = serve_command(&dir.0)
            .args(["--metrics-addr", "off", "--store", store])
            .env("BATON_STORE_WAIT_MS", wait_ms)
            .env_remove("LOG_LEVEL")
            .output()
            .expect("run baton serve");
        (out, started.elapsed())
    };

    let (out, took) = run("postgres://postgres@127.0.0.1:notaport/test", "60000");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("invalid postgres url"), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "refused at once, took {took:?}"
    );

    let (out, took) = run("postgres://postgres@127.0.0.1:1/test", "2000");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let retries = stderr
        .matches("cannot open the PostgreSQL store yet")
        .count();
    assert!(retries >= 2, "{retries} retries logged: {stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "names the server: {stderr}");
    assert!(
        took >= Duration::from_millis(1_000) && took < Duration::from_secs(15),
        "gave up after store_wait_ms, took {took:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "never served"
    );
}
