//! End-to-end tests: the real `baton` binary on port 0, real agent processes over
//! gRPC, HTTP like a user; SIGKILL of agents and of the server.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn task_runs_on_an_agent_and_reports_seed_000_shape() {
    let dir = TempDir::new("success");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "echo", 4, "echo-1");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;

    let submitted = api
        .submit(json!({
            "task_id": "report-001", "task_type": "echo",
            "inputs": [{"type": "text", "data": "Q4 sales data..."}, {"type": "image", "data": "aGVsbG8="}],
            "execution_mode": "sequential", "priority": 5, "timeout_ms": 30000,
            "metadata": {"report_title": "Q4 Sales Analysis"}
        }))
        .await;
    assert_eq!(submitted["task_id"], "report-001");
    let t = api.wait_done("report-001", LONG).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        t["output"]["inputs"][0],
        json!({"type": "text", "data": "Q4 sales data..."})
    );
    assert_eq!(
        t["output"]["inputs"][1],
        json!({"type": "image", "data": "aGVsbG8="})
    );
    assert_eq!(t["agent_executions"].as_array().unwrap().len(), 1);
    assert_eq!(t["agent_executions"][0]["agent_id"], "echo-1");
    assert_eq!(t["agent_executions"][0]["status"], "completed");
    assert_eq!(t["metrics"]["retry_count"], 0);
    assert_eq!(t["metrics"]["agents_used"], 1);
    assert!(t["metrics"]["total_duration_ms"].is_u64());
    let kinds = common::event_kinds(&t);
    assert_eq!(kinds, ["submitted", "started", "succeeded"]);

    let h = api.get("/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["healthy"], true);
    assert!(h.body["version"].is_string() && h.body["uptime_seconds"].is_u64());
    assert_eq!(h.body["stats"]["tasks"]["completed"], 1);
    assert_eq!(h.body["stats"]["agents"]["connected"], 1);

    let agents = api.get("/api/v1/agents").await.body;
    assert_eq!(agents["agents"][0]["agent_id"], "echo-1");
    assert_eq!(agents["agents"][0]["completed"], 1);

    let openapi = api.get("/openapi.json").await;
    assert_eq!(openapi.status, 200);
    assert!(openapi.body["paths"]["/api/v1/tasks"]["post"].is_object());
    assert!(openapi.body["paths"]["/api/v1/dlq/{task_id}/reprocess"]["post"].is_object());
}

/// `POST /api/v1/tasks?wait_ms=` submits and waits in one request: it answers
/// with the task as it stands when it finished or when the wait ran out.
#[tokio::test]
async fn a_submit_with_wait_ms_answers_with_the_result() {
    let dir = TempDir::new("submit-wait");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "sleep", 4, "sleep-1");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    let submit_wait = |wait: &str, id: &str, sleep_ms: u64| {
        let path = format!("/api/v1/tasks?wait_ms={wait}");
        let task = json!({"task_id": id, "task_type": "sleep", "metadata": {"sleep_ms": sleep_ms}});
        let api = &api;
        async move { api.post(&path, &task).await }
    };

    // Finished within the wait: the answer is the finished task, still 201.
    let r = submit_wait("30000", "sw-1", 200).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "completed", "{}", r.body);
    assert_eq!(r.body["agent_executions"][0]["agent_id"], "sleep-1");
    let kinds = common::event_kinds(&r.body);
    assert_eq!(kinds, ["submitted", "started", "succeeded"]);

    // The same submit again: the existing task (200), already finished.
    let again = submit_wait("30000", "sw-1", 200).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["status"], "completed");

    // A wait that runs out answers with the task as it stands; it still runs.
    let started = std::time::Instant::now();
    let r = submit_wait("150", "sw-2", 1500).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "running", "{}", r.body);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(api.wait_done("sw-2", LONG).await["status"], "completed");

    // A bad wait is refused and submits nothing.
    let bad = submit_wait("soon", "sw-3", 1).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        bad.body["error"]["code"], "invalid_argument",
        "{}",
        bad.body
    );
    assert_eq!(api.get("/api/v1/tasks/sw-3").await.status, 404);

    // The CLI's `submit --wait` uses it: one request, the result printed.
    let args = [
        "submit",
        "--type",
        "sleep",
        "--task-id",
        "sw-4",
        "--wait",
        "--json",
    ];
    let (ok, out, err) = baton(&server, &args);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "completed", "{v}");
}

/// A task submitted while an agent of its type has a free slot and nothing of
/// the type is queued starts in its submit's own commit: the submit already
/// answers `running`, on that agent. Tasks submitted while every slot is taken
/// wait in the queue (highest priority first) and still run exactly once.
#[tokio::test]
async fn a_task_for_an_idle_agent_starts_at_submit_and_busy_agents_queue() {
    let dir = TempDir::new("start-at-submit");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "sleep", 1, "sleepy-1");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;

    let first = api
        .submit(json!({"task_id": "first", "task_type": "sleep", "metadata": {"sleep_ms": 600}}))
        .await;
    assert_eq!(first["status"], "running", "{first}");
    let kinds = common::event_kinds(&first);
    assert_eq!(kinds, ["submitted", "started"], "{first}");
    assert_eq!(first["events"][1]["agent_id"], "sleepy-1", "{first}");

    // The only slot is taken: these wait, and the higher priority goes first.
    let low = api
        .submit(json!({"task_id": "low", "task_type": "sleep", "priority": "low"}))
        .await;
    let high = api
        .submit(json!({"task_id": "high", "task_type": "sleep", "priority": "high"}))
        .await;
    assert_eq!(low["status"], "queued", "{low}");
    assert_eq!(high["status"], "queued", "{high}");

    let mut started = Vec::new();
    for id in ["first", "low", "high"] {
        let t = api.wait_done(id, LONG).await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["agent_executions"].as_array().unwrap().len(), 1, "{t}");
        assert_eq!(t["metrics"]["retry_count"], 0, "{t}");
        // RFC 3339 times in one format: they order as text.
        started.push(
            t["agent_executions"][0]["started_at"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(
        started[0] <= started[2] && started[2] <= started[1],
        "first, then high, then low: {started:?}"
    );
}

#[tokio::test]
async fn retry_then_success() {
    let dir = TempDir::new("retry");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "fail", 4, "fail-1");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    api.submit(
        json!({"task_id": "flaky", "task_type": "fail", "metadata": {"fail_times": 2},
                      "retry": {"max_attempts": 3, "backoff_base_ms": 20, "jitter": 0}}),
    )
    .await;
    let t = api.wait_done("flaky", LONG).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 3);
    assert_eq!(t["metrics"]["retry_count"], 2);
    assert_eq!(t["output"]["attempt"], 3);
    let statuses: Vec<&str> = t["agent_executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "failed", "completed"]);
}

#[tokio::test]
async fn exhausted_retries_dead_letter_then_reprocess_succeeds() {
    let dir = TempDir::new("dlq");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "fail", 4, "fail-1");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    api.submit(
        json!({"task_id": "doomed", "task_type": "fail", "metadata": {"fail_times": 3},
                      "retry": {"max_attempts": 3, "backoff_base_ms": 10, "jitter": 0}}),
    )
    .await;
    let t = api.wait_done("doomed", LONG).await;
    assert_eq!(t["status"], "dead_lettered", "{t}");
    assert_eq!(t["error"]["kind"], "retries_exhausted");

    let dlq = api.get("/api/v1/dlq").await;
    assert_eq!(dlq.status, 200);
    let ids: Vec<&str> = dlq.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["doomed"]);

    let r = api.post("/api/v1/dlq/doomed/reprocess", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    let t = api.wait_done("doomed", LONG).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        t["attempt"], 4,
        "attempt numbers keep growing after reprocess"
    );
    assert_eq!(
        t["attempt_floor"], 3,
        "the attempts before the reprocess no longer count: {t}"
    );
    assert!(api.get("/api/v1/dlq").await.body["tasks"]
        .as_array()
        .unwrap()
        .is_empty());

    // Reprocessing a task that is not dead-lettered is refused.
    let again = api.post("/api/v1/dlq/doomed/reprocess", &json!({})).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["error"]["code"], "failed_precondition");
    assert_eq!(
        api.post("/api/v1/dlq/nope/reprocess", &json!({}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn permanent_failure_fails_without_retry() {
    let dir = TempDir::new("perm");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "fail", 4, "fail-1");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    api.submit(json!({"task_id": "bad", "task_type": "fail", "metadata": {"permanent": true}}))
        .await;
    let t = api.wait_done("bad", LONG).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["kind"], "permanent");
    assert_eq!(t["attempt"], 1);
}

#[tokio::test]
async fn timeout_cancels_the_attempt_and_counts_it_as_failed() {
    let dir = TempDir::new("timeout");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "sleep", 1, "sleep-1");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    api.submit(json!({"task_id": "slow", "task_type": "sleep", "metadata": {"sleep_ms": 60000}, "timeout_ms": 300,
                      "retry": {"max_attempts": 2, "backoff_base_ms": 10, "jitter": 0}}))
        .await;
    let t = api.wait_done("slow", LONG).await;
    assert_eq!(t["status"], "dead_lettered", "{t}");
    let execs = t["agent_executions"].as_array().unwrap();
    assert_eq!(execs.len(), 2);
    assert!(execs.iter().all(|e| e["status"] == "timeout"), "{t}");
    // The agent (concurrency 1) was freed by the cancel: new work still runs.
    api.submit(json!({"task_id": "quick", "task_type": "sleep", "metadata": {"sleep_ms": 1}}))
        .await;
    assert_eq!(api.wait_done("quick", LONG).await["status"], "completed");
}

#[tokio::test]
async fn cancel_queued_and_running_tasks() {
    let dir = TempDir::new("cancel");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    // No agent yet: the task stays queued.
    api.submit(json!({"task_id": "waiting", "task_type": "sleep", "metadata": {"sleep_ms": 1}}))
        .await;
    let r = api
        .post(
            "/api/v1/tasks/waiting/cancel",
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "cancelled");

    let _agent = AgentProc::start(&server.grpc, "sleep", 1, "sleep-1");
    api.wait_agents(1).await;
    api.submit(json!({"task_id": "long", "task_type": "sleep", "metadata": {"sleep_ms": 60000}}))
        .await;
    api.wait_for("long", LONG, |t| t["status"] == "running")
        .await;
    let r = api.post("/api/v1/tasks/long/cancel", &json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "cancelled");
    let again = api.post("/api/v1/tasks/long/cancel", &json!({})).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(
        api.post("/api/v1/tasks/ghost/cancel", &json!({}))
            .await
            .status,
        404
    );
    // The cancelled attempt's slot is free again.
    api.submit(json!({"task_id": "next", "task_type": "sleep", "metadata": {"sleep_ms": 1}}))
        .await;
    assert_eq!(api.wait_done("next", LONG).await["status"], "completed");
    // The never-started task never ran.
    let w = api.get("/api/v1/tasks/waiting").await.body;
    assert_eq!(w["status"], "cancelled");
    assert!(w["agent_executions"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn agent_killed_mid_task_is_replaced() {
    let dir = TempDir::new("agentkill");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let mut first = AgentProc::start(&server.grpc, "sleep", 1, "doomed-agent");
    api.wait_agents(1).await;
    api.submit(
        json!({"task_id": "job", "task_type": "sleep", "metadata": {"sleep_ms": 1500},
                      "retry": {"max_attempts": 3, "backoff_base_ms": 10, "jitter": 0}}),
    )
    .await;
    api.wait_for("job", LONG, |t| t["status"] == "running")
        .await;
    first.kill();
    let _second = AgentProc::start(&server.grpc, "sleep", 1, "rescuer");
    let t = api.wait_done("job", LONG).await;
    assert_eq!(t["status"], "completed", "{t}");
    let execs = t["agent_executions"].as_array().unwrap();
    assert_eq!(execs.len(), 2, "{t}");
    assert_eq!(execs[0]["agent_id"], "doomed-agent");
    assert_eq!(execs[0]["status"], "agent_lost");
    assert_eq!(execs[1]["agent_id"], "rescuer");
    assert_eq!(t["metrics"]["agents_used"], 2);
}

#[tokio::test]
async fn server_sigkill_mid_run_loses_nothing_and_completes_each_task_once() {
    let dir = TempDir::new("crash");
    let mut server = Server::start(&dir.0);
    let (http_addr, grpc_addr) = (server.http_addr.clone(), server.grpc_addr.clone());
    let api = Api::new(&server.http);
    let _a1 = AgentProc::start(&server.grpc, "sleep", 16, "a1");
    let _a2 = AgentProc::start(&server.grpc, "sleep", 16, "a2");
    api.wait_agents(2).await;
    let n = 1500;
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"task_id": format!("t{i:04}"), "task_type": "sleep", "metadata": {"sleep_ms": 10},
                         "retry": {"max_attempts": 10, "backoff_base_ms": 10, "jitter": 0}}))
        .collect();
    let r = api
        .post("/api/v1/tasks/batch", &json!({"tasks": tasks}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["created"], n);
    // Let part of the work finish, then kill the server without warning while
    // attempts are running and tasks are still queued.
    loop {
        let h = api.get("/health").await.body;
        if h["stats"]["tasks"]["completed"].as_u64().unwrap() >= 100 {
            assert!(h["stats"]["tasks"]["queued"].as_u64().unwrap() > 0, "{h}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let server = Server::start_on(&dir.0, &http_addr, &grpc_addr, &[]);
    let api = Api::new(&server.http);
    api.wait_healthy().await;
    // The same agents reconnect by themselves.
    api.wait_agents(2).await;
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let h = api.get("/health").await.body;
        if h["stats"]["tasks"]["completed"].as_u64().unwrap() == n as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every task completed: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every accepted task is there, completed, with exactly one success.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tasks?limit=1000&cursor={c}"),
            None => "/api/v1/tasks?limit=1000".to_string(),
        };
        let page = api.get(&path).await.body;
        for t in page["tasks"].as_array().unwrap() {
            assert_eq!(t["status"], "completed", "{t}");
            let successes = t["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "succeeded")
                .count();
            assert_eq!(successes, 1, "{t}");
            assert!(
                seen.insert(t["task_id"].as_str().unwrap().to_string()),
                "listed twice: {t}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), n);
}

#[tokio::test]
async fn bad_input_gets_one_error_shape_and_changes_nothing() {
    let dir = TempDir::new("badinput");
    let server = Server::start_on(&dir.0, "127.0.0.1:0", "127.0.0.1:0", &[]);
    let api = Api::new(&server.http);
    let check = |r: &Resp, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{}", r.body);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            r.body
        );
        assert!(r.body["error"]["details"].is_object(), "{}", r.body);
    };
    let post_raw = |body: &'static str| {
        api.raw(
            reqwest::Method::POST,
            "/api/v1/tasks",
            Some(body.as_bytes().to_vec()),
        )
    };
    check(&post_raw("{not json").await, 400, "invalid_argument");
    check(&post_raw("").await, 400, "invalid_argument");
    // Wrong types and out-of-range values, each refused with the same shape.
    for body in [
        json!({"task_type": 42}),
        json!({"task_type": ""}),
        json!({"task_type": "echo", "priority": 11}),
        json!({"task_type": "echo", "priority": 0}),
        json!({"task_type": "echo", "timeout_ms": 0}),
        json!({"task_type": "echo", "timeout_ms": -5}),
        json!({"task_type": "echo", "inputs": "text"}),
        json!({"task_type": "echo", "inputs": [{"type": "image", "data": "%%%"}]}),
    ] {
        check(
            &api.post("/api/v1/tasks", &body).await,
            400,
            "invalid_argument",
        );
    }
    check(
        &api.get("/api/v1/tasks?status=exploded").await,
        400,
        "invalid_argument",
    );
    check(
        &api.get("/api/v1/tasks?limit=abc").await,
        400,
        "invalid_argument",
    );
    check(
        &api.get("/api/v1/tasks?limit=0").await,
        400,
        "invalid_argument",
    );
    check(&api.get("/api/v1/tasks/nope").await, 404, "not_found");
    check(&api.get("/api/v1/nothing-here").await, 404, "not_found");
    // A known endpoint with a method it does not take: 405, and what it takes.
    let r = api
        .raw(reqwest::Method::DELETE, "/api/v1/tasks/anything", None)
        .await;
    check(&r, 405, "method_not_allowed");
    assert_eq!(r.headers["allow"], "GET,HEAD");

    // Several problems are reported at once, each with its field.
    let r = api
        .post(
            "/api/v1/tasks",
            &json!({"task_type": "", "priority": 99, "timeout_ms": 0}),
        )
        .await;
    let fields: Vec<&str> = r.body["error"]["details"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["task_type", "priority", "timeout_ms"]);
    // The message names the first problem's field once, then counts the rest.
    assert_eq!(
        r.body["error"]["message"],
        "task_type must not be empty (and 2 more problems)"
    );
    assert_eq!(
        r.body["error"]["details"]["problems"][1]["message"],
        "99 is out of range: use 1..=10 or one of critical, high, normal, low, background"
    );

    // Too large (default limit 16 MiB).
    let big = format!(
        "{{\"task_type\": \"echo\", \"inputs\": [{{\"type\": \"text\", \"data\": \"{}\"}}]}}",
        "x".repeat(17 * 1024 * 1024)
    );
    // (its own connection: the server answers before reading the body and closes it)
    let fresh = Api::new(&server.http);
    check(
        &fresh
            .raw(
                reqwest::Method::POST,
                "/api/v1/tasks",
                Some(big.into_bytes()),
            )
            .await,
        413,
        "payload_too_large",
    );

    // A batch with one bad task stores none of them.
    let r = api.post("/api/v1/tasks/batch", &json!({"tasks": [{"task_id": "ok-1", "task_type": "echo"}, {"task_type": "echo", "priority": "urgent"}]})).await;
    check(&r, 400, "invalid_argument");
    assert_eq!(
        r.body["error"]["details"]["problems"][0]["field"],
        "tasks[1].priority"
    );
    assert_eq!(api.get("/api/v1/tasks/ok-1").await.status, 404);

    // Idempotency: same content again is fine, different content conflicts.
    let first = api.post("/api/v1/tasks", &echo("dup")).await;
    assert_eq!(first.status, 201);
    let same = api.post("/api/v1/tasks", &echo("dup")).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.body["task_id"], "dup");
    let mut different = echo("dup");
    different["metadata"] = json!({"x": 1});
    check(
        &api.post("/api/v1/tasks", &different).await,
        409,
        "conflict",
    );

    // Nothing above changed the store: only "dup" exists.
    let h = api.get("/health").await.body;
    let total: u64 = h["stats"]["tasks"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 1, "{h}");
    assert_eq!(
        api.get("/api/v1/tasks").await.body["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn silent_agent_loses_its_lease_and_its_late_result_is_refused() {
    let dir = TempDir::new("silent");
    let env = [
        ("BATON_HEARTBEAT_INTERVAL_MS", "200"),
        ("BATON_AGENT_TIMEOUT_MS", "1000"),
        ("BATON_LEASE_MS", "1000"),
    ];
    let server = Server::start_with_env(&dir.0, "127.0.0.1:0", "127.0.0.1:0", &[], &env);
    let api = Api::new(&server.http);
    let frozen = AgentProc::start(&server.grpc, "sleep", 1, "frozen");
    api.wait_agents(1).await;
    api.submit(
        json!({"task_id": "held", "task_type": "sleep", "metadata": {"sleep_ms": 1500},
                      "retry": {"max_attempts": 3, "backoff_base_ms": 10, "jitter": 0}}),
    )
    .await;
    api.wait_for("held", LONG, |t| t["status"] == "running")
        .await;
    // The agent stops answering (its connection stays open): no more heartbeats.
    frozen.signal("STOP");
    let _rescuer = AgentProc::start(&server.grpc, "sleep", 1, "rescuer");
    let t = api.wait_done("held", LONG).await;
    frozen.signal("CONT");
    assert_eq!(t["status"], "completed", "{t}");
    let execs = t["agent_executions"].as_array().unwrap();
    assert_eq!(execs[0]["agent_id"], "frozen");
    assert_eq!(execs[0]["status"], "agent_lost");
    assert_eq!(execs.last().unwrap()["agent_id"], "rescuer");
    // The frozen agent wakes up and reports its stale attempt: nothing changes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = api.get("/api/v1/tasks/held").await.body;
    assert_eq!(
        after["events"], t["events"],
        "a stale result changed the task"
    );
}

#[tokio::test]
async fn agent_drains_on_sigterm_and_finishes_what_it_holds() {
    let dir = TempDir::new("drain");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let mut agent = AgentProc::start(&server.grpc, "sleep", 2, "drainer");
    api.wait_agents(1).await;
    api.submit(json!({"task_id": "inflight", "task_type": "sleep", "metadata": {"sleep_ms": 800}}))
        .await;
    api.wait_for("inflight", LONG, |t| t["status"] == "running")
        .await;
    agent.signal("TERM");
    // Submitted during the drain: must not go to the draining agent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.submit(json!({"task_id": "later", "task_type": "sleep", "metadata": {"sleep_ms": 1}}))
        .await;
    let t = api.wait_done("inflight", LONG).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        t["attempt"], 1,
        "finished by the draining agent, not retried"
    );
    let status = tokio::task::spawn_blocking(move || agent.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "agent exit status {status:?}");
    let later = api.get("/api/v1/tasks/later").await.body;
    assert_eq!(later["status"], "queued", "{later}");
}

#[tokio::test]
async fn an_agent_serving_several_types_takes_them_in_turns() {
    let dir = TempDir::new("fair");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agent = AgentProc::start(&server.grpc, "sleep,echo", 1, "both");
    api.wait_agents(1).await;
    let flood: Vec<Value> = (0..100)
        .map(|i| json!({"task_id": format!("s{i}"), "task_type": "sleep", "metadata": {"sleep_ms": 10}}))
        .collect();
    assert_eq!(
        api.post("/api/v1/tasks/batch", &json!({"tasks": flood}))
            .await
            .status,
        200
    );
    api.submit(json!({"task_id": "urgent-echo", "task_type": "echo"}))
        .await;
    assert_eq!(
        api.wait_done("urgent-echo", LONG).await["status"],
        "completed"
    );
    let h = api.get("/health").await.body;
    let sleeps_done = h["stats"]["tasks"]["completed"].as_u64().unwrap() - 1;
    assert!(
        sleeps_done < 20,
        "the echo task waited behind {sleeps_done} sleep tasks"
    );
}

#[tokio::test]
async fn server_stops_cleanly_on_sigterm_and_keeps_its_tasks() {
    let dir = TempDir::new("sigterm");
    let mut server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agent = AgentProc::start(&server.grpc, "sleep", 1, "s1");
    api.wait_agents(1).await;
    api.submit(json!({"task_id": "kept", "task_type": "sleep", "metadata": {"sleep_ms": 60000}}))
        .await;
    api.wait_for("kept", LONG, |t| t["status"] == "running")
        .await;
    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "server still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    // The accepted task is still there after a restart, and runs again.
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let t = api.get("/api/v1/tasks/kept").await.body;
    assert!(
        matches!(
            t["status"].as_str(),
            Some("queued" | "retry_wait" | "running")
        ),
        "{t}"
    );
}
