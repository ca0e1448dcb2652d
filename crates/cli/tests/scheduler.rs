//! The scheduler end to end, through the real binary with agents as separate
//! processes: routing strategies chosen per task, concurrency keys, rate-limit
//! keys, resource requirements, circuit breakers, preemption, load shedding,
//! discovery, the scheduler view, and the bad inputs that must change nothing.

mod common;

use common::{baton, grpc_channel, step, wait_run, AgentProc, Api, Server, TempDir};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn ms(rfc3339: &Value) -> u64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().expect("a time")).expect("rfc 3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The agent that ran the task's last attempt.
fn agent_of(task: &Value) -> String {
    task["agent_executions"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|e| e["agent_id"].as_str())
        .unwrap_or_else(|| panic!("no execution: {task}"))
        .to_string()
}

/// A task type's queue in the scheduler view (null when absent).
fn queue_of(view: &Value, task_type: &str) -> Value {
    view["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["task_type"] == task_type))
        .cloned()
        .unwrap_or_default()
}

fn start_with_config(dir: &TempDir, toml: &str) -> Server {
    let path = dir.0.join("baton.toml");
    std::fs::write(&path, toml).unwrap();
    Server::start_on(
        &dir.0.join("data"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", path.to_str().unwrap()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_keys_and_rate_limits_shape_dispatch() {
    let dir = TempDir::new("sched-routing");
    let server = start_with_config(
        &dir,
        r#"
[scheduler]
key_concurrency = 1
[scheduler.keys.api]
rate_per_s = 5.0
burst = 1
"#,
    );
    let api = Api::new(&server.http);
    let _a1 = AgentProc::start(&server.grpc, "echo,sleep", 4, "a1");
    let _a2 = AgentProc::start(&server.grpc, "echo,sleep", 4, "a2");
    api.wait_agents(2).await;

    // Failover: an ordered preference, honoured while the first has room.
    for i in 0..3 {
        api.submit(json!({"task_id": format!("pref-{i}"), "task_type": "echo",
            "metadata": {"routing_strategy": "failover", "preferred_agents": ["a2", "a1"]}}))
            .await;
    }
    for i in 0..3 {
        let t = api
            .wait_done(&format!("pref-{i}"), Duration::from_secs(20))
            .await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(agent_of(&t), "a2", "preferred agent first: {t}");
    }

    // Consistent hashing: one routing key always lands on the same agent.
    let mut owners = std::collections::BTreeSet::new();
    for i in 0..6 {
        let id = format!("hash-{i}");
        api.submit(json!({"task_id": id, "task_type": "echo",
            "metadata": {"routing_strategy": "consistent_hash", "routing_key": "customer-42"}}))
            .await;
        owners.insert(agent_of(&api.wait_done(&id, Duration::from_secs(20)).await));
    }
    assert_eq!(owners.len(), 1, "one key, one agent: {owners:?}");

    // A concurrency key runs its tasks one at a time; another key is not held up.
    let mut keyed = Vec::new();
    for i in 0..4 {
        let id = format!("key-x-{i}");
        api.submit(json!({"task_id": id, "task_type": "sleep",
            "metadata": {"sleep_ms": 300, "concurrency_key": "tenant-x"}}))
            .await;
        keyed.push(id);
    }
    api.submit(json!({"task_id": "key-y", "task_type": "sleep",
        "metadata": {"sleep_ms": 300, "concurrency_key": "tenant-y"}}))
        .await;
    let mut spans = Vec::new();
    for (i, id) in keyed.iter().enumerate() {
        let t = api.wait_done(id, Duration::from_secs(30)).await;
        assert_eq!(t["status"], "completed", "{t}");
        // The type starts on the fast path, which takes tenant-x's first task
        // and hands the second back (its key is full): never sent, so neither
        // an execution nor a retry.
        let kinds = common::event_kinds(&t);
        if i == 1 {
            assert!(kinds.contains(&"handed_back"), "{t}");
        }
        assert_eq!(t["agent_executions"].as_array().unwrap().len(), 1, "{t}");
        assert_eq!(t["metrics"]["retry_count"], 0, "{t}");
        let e = &t["agent_executions"][0];
        spans.push((ms(&e["started_at"]), ms(&e["finished_at"])));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "tasks of one concurrency key overlapped: {spans:?}"
        );
    }
    let y = api.wait_done("key-y", Duration::from_secs(30)).await;
    let y_start = ms(&y["agent_executions"][0]["started_at"]);
    assert!(
        y_start < spans[1].0,
        "tenant-y waited behind tenant-x's queue: {y_start} vs {spans:?}"
    );

    // A rate-limited key: 5 per second with no burst spreads 6 tasks over ~1 s.
    for i in 0..6 {
        api.submit(json!({"task_id": format!("rate-{i}"), "task_type": "echo",
            "metadata": {"rate_limit_key": "api"}}))
            .await;
    }
    let mut starts = Vec::new();
    for i in 0..6 {
        let t = api
            .wait_done(&format!("rate-{i}"), Duration::from_secs(30))
            .await;
        starts.push(ms(&t["agent_executions"][0]["started_at"]));
    }
    starts.sort();
    let spread = starts[5] - starts[0];
    assert!(spread >= 800, "6 tasks at 5/s started within {spread} ms");

    // The scheduler view shows the paths, the keys and the agents.
    let view = api.get("/api/v1/scheduler").await;
    assert_eq!(view.status, 200);
    let echo = queue_of(&view.body, "echo");
    assert_eq!(echo["path"], "scheduled", "{echo}");
    assert_eq!(echo["agents"], 2);
    assert_eq!(view.body["agents"].as_array().unwrap().len(), 2);
    assert_eq!(view.body["agents"][0]["breaker"], "closed");
    let rated = &view.body["keys"]["rate_limited"][0];
    assert_eq!(rated["key"], "api");

    // Discovery by capability, health and version range.
    let found = api
        .get("/api/v1/agents/discover?capabilities=echo,sleep&min_health=0.5&version=>=0.0.0")
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    let ids: Vec<&str> = found.body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{}", found.body);
    assert!(found.body["agents"][0]["health"].as_f64().unwrap() >= 0.5);
    let none = api.get("/api/v1/agents/discover?capabilities=video").await;
    assert_eq!(none.body["agents"], json!([]));
    let bad = api.get("/api/v1/agents/discover?version=not-a-range").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["code"], "invalid_argument");
    let bad = api.get("/api/v1/agents/discover?min_health=2").await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Discovery over gRPC: the same answer, the same error for a bad range.
    let mut grpc = baton_proto::v1::baton_client::BatonClient::new(grpc_channel(&server).await);
    let found = grpc
        .discover_agents(baton_proto::v1::DiscoverAgentsRequest {
            capabilities: vec!["echo".into(), "sleep".into()],
            version: ">=0.0.0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.agents.len(), 2);
    assert!(found
        .agents
        .iter()
        .all(|a| a.agent.as_ref().unwrap().breaker == "closed"));
    let refused = grpc
        .discover_agents(baton_proto::v1::DiscoverAgentsRequest {
            version: "not-a-range".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // The same through the CLI: discovery, and the scheduler view for people.
    let (ok, out, err) = baton(
        &server,
        &["agents", "--capability", "sleep", "--limit", "1", "--json"],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["agents"].as_array().unwrap().len(), 1, "{v}");
    let (ok, out, _) = baton(&server, &["agents"]);
    assert!(ok);
    assert!(
        out.contains("BREAKER") && out.contains("a1") && out.contains("closed"),
        "{out}"
    );
    let (ok, _, err) = baton(&server, &["agents", "--version-req", "not a range"]);
    assert!(!ok);
    assert!(err.contains("version"), "{err}");
    let (ok, out, _) = baton(&server, &["scheduler"]);
    assert!(ok);
    assert!(
        out.contains("echo") && out.contains("scheduled") && out.contains("RATE KEY"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hourly_budget_per_agent_type_holds_plain_tasks_once_spent() {
    let dir = TempDir::new("sched-budget");
    let server = start_with_config(&dir, "[scheduler.hourly_budgets]\nbilled = 3.0\n");
    let api = Api::new(&server.http);
    // One hour of this agent's work costs 3,600,000: a task of the default
    // estimate (1 s, until its own average is known) costs 1,000, more than the
    // whole budget; nothing of its type may run.
    let _billed = AgentProc::start_args(
        &server.grpc,
        "echo",
        4,
        "billed-1",
        &["--agent-type", "billed", "--cost-factor", "3600000"],
    );
    api.wait_agents(1).await;
    for i in 0..3 {
        // Plain tasks: no cost_budget, no scheduling metadata at all.
        api.submit(json!({"task_id": format!("budget-{i}"), "task_type": "echo"}))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (view, echo) = loop {
        let view = api.get("/api/v1/scheduler").await.body;
        let echo = queue_of(&view, "echo");
        if echo["held"].as_array().is_some_and(|h| !h.is_empty()) || Instant::now() > deadline {
            break (view, echo);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(echo["path"], "scheduled", "{view}");
    let reason = echo["held"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("budget"), "{view}");
    assert_eq!(view["budgets"][0]["agent_type"], "billed", "{view}");
    assert_eq!(view["budgets"][0]["spent_last_hour"], 0.0, "{view}");
    for i in 0..3 {
        let t = api.get(&format!("/api/v1/tasks/budget-{i}")).await.body;
        assert_eq!(
            t["status"], "queued",
            "ran past its agent type's budget: {t}"
        );
    }
    // An agent of another type serving the same task type is not limited by it.
    let _free = AgentProc::start(&server.grpc, "echo", 4, "free-1");
    for i in 0..3 {
        let t = api
            .wait_done(&format!("budget-{i}"), Duration::from_secs(20))
            .await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(agent_of(&t), "free-1", "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scheduling_input_is_refused_and_changes_nothing() {
    let dir = TempDir::new("sched-bad");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    for (id, metadata, needle) in [
        (
            "bad-1",
            json!({"routing_strategy": "fastest"}),
            "routing_strategy",
        ),
        (
            "bad-2",
            json!({"min_health": 3, "cost_budget": -1}),
            "min_health",
        ),
        (
            "bad-3",
            json!({"routing_strategy": "broadcast"}),
            "broadcast",
        ),
        (
            "bad-4",
            json!({"preferred_agents": "a1"}),
            "preferred_agents",
        ),
        ("bad-5", json!({"concurrency_key": ""}), "concurrency_key"),
    ] {
        let r = api
            .post(
                "/api/v1/tasks",
                &json!({"task_id": id, "task_type": "echo", "metadata": metadata}),
            )
            .await;
        assert_eq!(r.status, 400, "{id}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_argument");
        assert!(
            r.body.to_string().contains(needle),
            "{id}: the error names {needle}: {}",
            r.body
        );
        assert_eq!(
            api.get(&format!("/api/v1/tasks/{id}")).await.status,
            404,
            "{id} was not stored"
        );
    }
    // Two problems at once are both listed.
    let r = api
        .post(
            "/api/v1/tasks",
            &json!({"task_type": "echo", "metadata": {"min_health": 3, "cost_budget": -1}}),
        )
        .await;
    assert_eq!(
        r.body["error"]["details"]["problems"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A config with an unknown strategy or a bad rule does not start.
    let cfg = dir.0.join("bad.toml");
    std::fs::write(
        &cfg,
        "[scheduler.task_types.echo]\nstrategy = \"fastest\"\nrate_per_s = -2.0\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(dir.0.join("other"))
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .env("BATON_METRICS_ADDR", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task_types.echo.strategy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_after_five_failures_and_closes_after_a_probe() {
    let dir = TempDir::new("sched-breaker");
    let server = start_with_config(
        &dir,
        "[scheduler]\nbreaker_failures = 5\nbreaker_open_ms = 3000\n",
    );
    let api = Api::new(&server.http);
    let _agent = AgentProc::start(&server.grpc, "fail,echo", 1, "flaky");
    api.wait_agents(1).await;
    // Five failures in a row on the only agent (one attempt each).
    for i in 0..5 {
        let id = format!("f{i}");
        api.submit(json!({"task_id": id, "task_type": "fail",
            "metadata": {"fail_times": 10}, "retry": {"max_attempts": 1}}))
            .await;
        let t = api.wait_done(&id, Duration::from_secs(20)).await;
        assert_eq!(t["status"], "dead_lettered", "{t}");
    }
    let opened = Instant::now();
    let agents = api.get("/api/v1/agents").await;
    assert_eq!(
        agents.body["agents"][0]["breaker"], "open",
        "{}",
        agents.body
    );
    // Out of routing: a task waits while the breaker is open…
    api.submit(common::echo("after")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = api.get("/api/v1/tasks/after").await;
    assert_eq!(t.body["status"], "queued", "{}", t.body);
    // …and goes through as the probe once it half-opens, closing it again.
    let t = api.wait_done("after", Duration::from_secs(20)).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(opened.elapsed() >= Duration::from_millis(2_500));
    let agents = api.get("/api/v1/agents").await;
    assert_eq!(agents.body["agents"][0]["breaker"], "closed");
    // A permanent failure (the task's own fault) does not count against it.
    for i in 0..6 {
        let id = format!("p{i}");
        api.submit(json!({"task_id": id, "task_type": "fail",
            "metadata": {"fail_times": 1, "permanent": true}}))
            .await;
        assert_eq!(
            api.wait_done(&id, Duration::from_secs(20)).await["status"],
            "failed"
        );
    }
    let agents = api.get("/api/v1/agents").await;
    assert_eq!(agents.body["agents"][0]["breaker"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_task_preempts_and_the_stopped_task_keeps_its_attempts() {
    let dir = TempDir::new("sched-preempt");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agent = AgentProc::start(&server.grpc, "sleep", 1, "only");
    api.wait_agents(1).await;
    api.submit(
        json!({"task_id": "long", "task_type": "sleep", "priority": "low",
        "metadata": {"sleep_ms": 5000}, "retry": {"max_attempts": 1}}),
    )
    .await;
    api.wait_for("long", Duration::from_secs(10), |t| {
        t["status"] == "running"
    })
    .await;
    let submitted = Instant::now();
    api.submit(
        json!({"task_id": "urgent", "task_type": "sleep", "priority": "critical",
        "metadata": {"sleep_ms": 10}}),
    )
    .await;
    let urgent = api.wait_done("urgent", Duration::from_secs(10)).await;
    assert_eq!(urgent["status"], "completed");
    assert!(
        submitted.elapsed() < Duration::from_millis(4_000),
        "the critical task waited for the slot instead of preempting"
    );
    // With max_attempts 1 the stopped attempt would have dead-lettered it had it
    // counted; it runs again and completes.
    let long = api.wait_done("long", Duration::from_secs(20)).await;
    assert_eq!(long["status"], "completed", "{long}");
    let kinds = common::event_kinds(&long);
    assert!(kinds.contains(&"preempted"), "{kinds:?}");
    assert_eq!(long["agent_executions"].as_array().unwrap().len(), 2);
    assert_eq!(long["agent_executions"][0]["status"], "preempted", "{long}");
    assert_eq!(long["agent_executions"][1]["status"], "completed", "{long}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_ninety_percent_the_lowest_priorities_are_shed_with_retry_after() {
    let dir = TempDir::new("sched-shed");
    let server = start_with_config(&dir, "[scheduler]\ncapacity = 10\n");
    let api = Api::new(&server.http);
    // No agent: everything stays queued.
    for i in 0..9 {
        api.submit(json!({"task_id": format!("n{i}"), "task_type": "echo"}))
            .await;
    }
    // 9 of 10 held: background is refused, with a hint; nothing is stored.
    let r = api
        .post(
            "/api/v1/tasks",
            &json!({"task_id": "bg", "task_type": "echo", "priority": "background"}),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "resource_exhausted");
    assert_eq!(r.body["error"]["details"]["reason"], "overloaded");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(api.get("/api/v1/tasks/bg").await.status, 404);
    // Normal still gets in at 90 %; at 100 % it does not, critical still does.
    api.submit(json!({"task_id": "n9", "task_type": "echo"}))
        .await;
    let r = api
        .post(
            "/api/v1/tasks",
            &json!({"task_id": "n10", "task_type": "echo"}),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    api.submit(json!({"task_id": "c1", "task_type": "echo", "priority": "critical"}))
        .await;
    // A batch sheds per task, keeping the rest.
    let r = api
        .post(
            "/api/v1/tasks/batch",
            &json!({"tasks": [
                {"task_id": "b-low", "task_type": "echo", "priority": "low"},
                {"task_id": "b-high", "task_type": "echo", "priority": "high"}
            ]}),
        )
        .await;
    assert!(r.status < 300, "{}", r.body);
    let text = r.body.to_string();
    assert!(text.contains("resource_exhausted"), "{text}");
    assert_eq!(api.get("/api/v1/tasks/b-high").await.status, 200);
    assert_eq!(api.get("/api/v1/tasks/b-low").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_requirements_send_tasks_only_to_agents_whose_labels_satisfy_them() {
    let dir = TempDir::new("sched-resources");
    let server = Server::start(&dir.0.join("data"));
    let api = Api::new(&server.http);
    // Ties in load go to the lowest id: without the requirement, "a-plain"
    // would take most of the work.
    let _plain = AgentProc::start(&server.grpc, "echo", 4, "a-plain");
    let _gpu = AgentProc::start_with_env(
        &server.grpc,
        "echo",
        4,
        "b-gpu",
        &[("AGENT_LABELS", "gpu=1,zone=eu,memory_mb=16384")],
    );
    api.wait_agents(2).await;
    let agents = api.get("/api/v1/agents").await.body;
    let gpu = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == "b-gpu")
        .unwrap();
    assert_eq!(gpu["labels"]["zone"], "eu", "{gpu}");

    let need = json!({"gpu": 1, "memory": "8Gi", "labels": {"zone": "eu"}});
    for i in 0..12 {
        api.submit(json!({"task_id": format!("gpu-{i}"), "task_type": "echo",
            "payload": {"i": i}, "metadata": {"resources": need}}))
            .await;
        api.submit(json!({"task_id": format!("any-{i}"), "task_type": "echo"}))
            .await;
    }
    let mut plain_used = std::collections::BTreeSet::new();
    for i in 0..12 {
        let t = api
            .wait_done(&format!("gpu-{i}"), Duration::from_secs(30))
            .await;
        assert_eq!(t["status"], "completed", "{t}");
        for e in t["agent_executions"].as_array().unwrap() {
            assert_eq!(
                e["agent_id"], "b-gpu",
                "a task needing a GPU ran elsewhere: {t}"
            );
        }
        let t = api
            .wait_done(&format!("any-{i}"), Duration::from_secs(30))
            .await;
        assert_eq!(t["status"], "completed", "{t}");
        plain_used.insert(agent_of(&t));
    }
    assert!(
        plain_used.contains("a-plain"),
        "tasks without requirements still use every agent: {plain_used:?}"
    );

    // A malformed requirement is refused at submission, every problem listed,
    // and nothing is stored.
    let bad = api
        .post(
            "/api/v1/tasks",
            &json!({"task_id": "bad-res", "task_type": "echo",
                "metadata": {"resources": {"cpu": "lots", "gpus": 1}}}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["code"], "invalid_argument");
    let fields: Vec<&str> = bad.body["error"]["details"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["metadata.resources.cpu", "metadata.resources.gpus"],
        "{}",
        bad.body
    );
    assert_eq!(api.get("/api/v1/tasks/bad-res").await.status, 404);

    // A workflow: the step the labelled agent serves runs there; the step no
    // agent can serve stays queued, and the run says why.
    let started = api
        .post(
            "/api/v1/runs",
            &json!({"run_id": "res-run", "definition": {"steps": [
                {"id": "train", "task_type": "echo", "input": {"x": 1},
                 "resources": {"gpu": 1, "labels": {"zone": "eu"}}},
                {"id": "huge", "task_type": "echo", "dependencies": ["train"],
                 "resources": {"gpu": 8}}]}}),
        )
        .await;
    assert!(
        started.status == 201 || started.status == 200,
        "{}",
        started.body
    );
    let run = wait_run(&api, "res-run", |r| {
        step(r, "huge")["waiting_for"].is_string()
    })
    .await;
    assert_eq!(step(&run, "train")["status"], "completed", "{run}");
    assert_eq!(step(&run, "train")["agents"], json!(["b-gpu"]), "{run}");
    let why = step(&run, "huge")["waiting_for"].as_str().unwrap();
    assert!(why.contains("\"gpu\":8"), "{why}");
    // Given time to be dispatched, it is still queued.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let huge = api.get("/api/v1/tasks/res-run:huge").await;
    assert_eq!(huge.body["status"], "queued", "{}", huge.body);
    let view = api.get("/api/v1/scheduler").await.body;
    assert!(
        view.to_string()
            .contains("no connected agent of its type satisfies"),
        "{view}"
    );
    let run = api.get("/api/v1/runs/res-run").await.body;
    assert_eq!(step(&run, "huge")["status"], "running", "{run}");
}
