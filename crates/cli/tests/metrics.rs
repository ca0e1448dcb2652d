//! Observability end to end: a known workload against the real binary, then exact
//! counter values and histogram counts from `/metrics` (REST port and metrics
//! port), `promtool check metrics` on the exposition, the SLA view over REST and
//! the CLI, the probes, and readiness flipping while PostgreSQL is unreachable.

mod common;

use common::{serve_command, AgentProc, Api, Server, TempDir, BATON};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Samples of a classic text exposition: series (name and labels, as printed) to value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of a series given by name and labels in any order.
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find_map(|(series, v)| {
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series.as_str(), ""),
        };
        if n != name {
            return None;
        }
        let mut have: Vec<&str> = rest.split(',').filter(|s| !s.is_empty()).collect();
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        have.sort_unstable();
        want.sort_unstable();
        (have == want).then_some(*v)
    })
}

async fn scrape(base: &str) -> (String, String) {
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    (content_type, resp.text().await.unwrap())
}

/// promtool's lint findings that are accepted: seed 000 names this histogram with
/// its unit abbreviated, and the seed's name wins over the naming convention.
const ACCEPTED_LINT: &[&str] =
    &["task_execution_time_ms metric names should not contain abbreviated units"];

/// Runs `promtool check metrics` on the exposition: no parse error, and no lint
/// finding but [`ACCEPTED_LINT`]. Without promtool the test fails, unless
/// BATON_ALLOW_NO_PROMTOOL=1 says that is acceptable here.
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        let msg = "promtool is not on PATH: the exposition was NOT checked with \
                   `promtool check metrics` (install Debian's `prometheus` package; .ci/run does)";
        if std::env::var("BATON_ALLOW_NO_PROMTOOL").as_deref() == Ok("1") {
            eprintln!("WARNING: {msg}");
            return;
        }
        panic!("{msg}; set BATON_ALLOW_NO_PROMTOOL=1 to run without it");
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !ACCEPTED_LINT.contains(l))
        .collect();
    // Exit 3 means lint findings only; anything else but 0 is a parse failure.
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)) && findings.is_empty(),
        "promtool check metrics (exit {code:?}) reports:\n{}\n--- exposition ---\n{text}",
        findings.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_gives_exact_metrics_and_sla() {
    let dir = TempDir::new("metrics");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agent = AgentProc::start(&server.grpc, "echo,fail", 8, "metrics-agent");
    api.wait_agents(1).await;

    // 5 echo tasks succeed; 2 fail tasks fail twice each (1 retry) and are
    // dead-lettered; 1 fails permanently at once.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(api.submit(common::echo(&format!("m-echo-{i}"))).await);
    }
    for i in 0..2 {
        ids.push(
            api.submit(
                json!({"task_id": format!("m-fail-{i}"), "task_type": "fail",
                "retry": {"max_attempts": 2, "backoff_base_ms": 10, "jitter": 0}}),
            )
            .await,
        );
    }
    ids.push(
        api.submit(json!({"task_id": "m-perm", "task_type": "fail",
            "metadata": {"permanent": true}}))
            .await,
    );
    // The same task again is not a new submission.
    api.submit(common::echo("m-echo-0")).await;
    let mut statuses = BTreeMap::new();
    for t in &ids {
        let id = t["task_id"].as_str().unwrap();
        let done = api.wait_done(id, Duration::from_secs(30)).await;
        *statuses
            .entry(done["status"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([
            ("completed".to_string(), 5),
            ("dead_lettered".to_string(), 2),
            ("failed".to_string(), 1)
        ])
    );

    let (content_type, text) = scrape(&server.http).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let m = parse(&text);
    let echo = [("task_type", "echo")];
    let fail = [("task_type", "fail")];
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(
            value(&m, name, labels),
            Some(want),
            "{name}{labels:?}\n--- exposition ---\n{text}"
        );
    };
    expect("tasks_submitted_total", &echo, 5.0);
    expect("tasks_submitted_total", &fail, 3.0);
    expect("tasks_completed_total", &echo, 5.0);
    expect("tasks_failed_total", &fail, 3.0);
    expect("orchestrator_tasks_scheduled_total", &echo, 5.0);
    expect("orchestrator_tasks_scheduled_total", &fail, 5.0);
    expect("orchestrator_retry_attempts_total", &fail, 2.0);
    expect(
        "orchestrator_tasks_completed_total",
        &[("task_type", "echo"), ("status", "completed")],
        5.0,
    );
    expect(
        "orchestrator_tasks_completed_total",
        &[("task_type", "fail"), ("status", "dead_lettered")],
        2.0,
    );
    expect(
        "orchestrator_tasks_completed_total",
        &[("task_type", "fail"), ("status", "failed")],
        1.0,
    );
    expect("task_execution_time_ms_count", &echo, 5.0);
    expect("task_execution_time_ms_count", &fail, 5.0);
    expect(
        "task_execution_time_ms_bucket",
        &[("task_type", "fail"), ("le", "+Inf")],
        5.0,
    );
    expect("orchestrator_task_execution_seconds_count", &echo, 5.0);
    expect("orchestrator_dead_letter_queue_size", &[], 2.0);
    expect("orchestrator_active_tasks", &[], 0.0);
    expect("agent_healthy", &[("agent_type", "echo")], 1.0);
    expect("agent_healthy", &[("agent_type", "fail")], 1.0);
    expect("agent_utilization_ratio", &[("agent_type", "echo")], 0.0);
    expect("task_queue_depth", &[("priority", "CRITICAL")], 0.0);
    expect("baton_tasks", &[("status", "completed")], 5.0);
    expect("baton_store_up", &[], 1.0);
    expect("baton_agents_connected", &[], 1.0);
    // Eight distinct submissions plus the repeat: nine submit calls to the store.
    expect("baton_store_commit_seconds_count", &[("op", "submit")], 9.0);
    assert_eq!(value(&m, "queue_depth", &echo), None, "nothing queued");
    promtool_check(&text);

    // The metrics port serves the same families.
    let metrics_port = server.metrics.clone().expect("metrics port is on");
    let (_, text2) = scrape(&metrics_port).await;
    let m2 = parse(&text2);
    assert_eq!(value(&m2, "tasks_submitted_total", &echo), Some(5.0));
    // Probes answer on the metrics port too.
    for probe in ["/livez", "/readyz"] {
        let r = reqwest::get(format!("{metrics_port}{probe}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe} on the metrics port");
    }
    // OpenMetrics for scrapers that ask for it.
    let om = reqwest::Client::new()
        .get(format!("{metrics_port}/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(om.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let om = om.text().await.unwrap();
    assert!(om.contains("# TYPE tasks_submitted counter"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"));

    // The SLA view: 5 successes, 3 errors.
    let sla = api.get("/api/v1/sla").await;
    assert_eq!(sla.status, 200);
    let v = &sla.body["values"];
    assert_eq!(v["succeeded"], 5, "{}", sla.body);
    assert_eq!(v["errors"], 3, "{}", sla.body);
    assert_eq!(v["error_rate"], 3.0 / 8.0);
    assert!(v["p95_ms"].as_u64().is_some(), "{}", sla.body);
    assert_eq!(sla.body["compliant"], false);
    let checks = sla.body["checks"].as_array().unwrap();
    let verdict = |name: &str| {
        checks.iter().find(|c| c["name"] == name).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(verdict("error_rate"), "breach");
    assert_eq!(verdict("success_rate"), "breach");
    assert_eq!(sla.body["targets"]["p95_ms"], 500);

    // And through the CLI, for people and scripts.
    let out = Command::new(BATON)
        .args(["sla", "--server", &server.http, "--json"])
        .output()
        .unwrap();
    // Breached: the document is printed, and the exit status says so.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the SLA is breached"));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["values"]["succeeded"], 5);
    let out = Command::new(BATON)
        .args(["sla", "--server", &server.http])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("error_rate") && table.contains("BREACH"),
        "{table}"
    );
    assert!(!out.status.success(), "a breached SLA exits non-zero");

    // The probes.
    assert_eq!(api.get("/livez").await.status, 200);
    assert_eq!(api.get("/readyz").await.status, 200);
    assert_eq!(api.get("/health/ready").await.status, 200);
    let health = api.get("/health").await;
    assert_eq!(health.body["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_port_can_be_turned_off() {
    let dir = TempDir::new("metrics-off");
    let server = Server::start_with_env(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--metrics-addr", "off"],
        &[],
    );
    assert_eq!(server.metrics, None);
    let (_, text) = scrape(&server.http).await;
    assert_eq!(
        value(&parse(&text), "baton_store_up", &[]),
        Some(1.0),
        "{text}"
    );
}

/// Readiness follows PostgreSQL: connections to the server's database are refused
/// and cut, readiness turns 503 with the reason, and returns when they are allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_while_postgres_is_unreachable() {
    let admin_url = std::env::var("BATON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres (see BATON_TEST_POSTGRES_URL)");
    tokio::spawn(conn);
    let db = format!("baton_ready_{}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let store_url = format!("{base}/{db}");

    let dir = TempDir::new("ready-pg");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--store", &store_url],
    );
    let api = Api::new(&server.http);
    api.wait_healthy().await;
    assert_eq!(api.get("/readyz").await.status, 200);

    // The outage: no new connections, existing ones terminated.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{db}' AND pid <> pg_backend_pid();"
        ))
        .await
        .unwrap();
    let resp = wait_for_status(&api, "/readyz", 503).await;
    assert_eq!(resp.body["error"]["code"], "unavailable", "{}", resp.body);
    assert_eq!(resp.body["error"]["details"]["ready"], false);
    assert!(
        resp.body["error"]["details"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{}",
        resp.body
    );
    // Liveness does not depend on the store.
    assert_eq!(api.get("/livez").await.status, 200);
    // The metrics say so as well.
    let (_, text) = scrape(&server.http).await;
    assert_eq!(value(&parse(&text), "baton_store_up", &[]), Some(0.0));

    // Recovery.
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    wait_for_status(&api, "/readyz", 200).await;
    drop(server);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
}

async fn wait_for_status(api: &Api, path: &str, status: u16) -> common::Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.get(path).await;
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not answer {status} within 30 s; last: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// LOG_FORMAT=json gives one JSON object per line, with the task's id (and the
/// agent's) as fields of the events about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_task_and_agent_ids() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("json-logs");
    let log_path = dir.0.join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = serve_command(&dir.0.join("data"))
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .env("BATON_METRICS_ADDR", "off")
        .env_remove("GRPC_PORT")
        .env_remove("MAX_WORKERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let (http, grpc) = (
        format!("http://{}", field("http")),
        format!("http://{}", field("grpc")),
    );
    assert_eq!(field("metrics"), "off");
    let api = Api::new(&http);
    let _agent = AgentProc::start(&grpc, "fail", 2, "json-log-agent");
    api.wait_agents(1).await;
    api.submit(json!({"task_id": "json-log-task", "task_type": "fail",
        "metadata": {"permanent": true}}))
        .await;
    let done = api
        .wait_done("json-log-task", Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "failed");
    // The log line is written beside the answer, not before it: give it time to
    // reach the file before the server is killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("\"task failed\"")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed = events
        .iter()
        .find(|e| e["fields"]["message"] == "task failed")
        .unwrap_or_else(|| panic!("no 'task failed' event in:\n{text}"));
    assert_eq!(failed["level"], "INFO");
    assert_eq!(failed["fields"]["task_id"], "json-log-task");
    assert_eq!(failed["fields"]["agent_id"], "json-log-agent");
    assert_eq!(failed["fields"]["task_type"], "fail");
}

/// Workflow runs: a finished run is counted by status with its duration, its
/// tasks count as submitted, and it no longer counts as active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_runs_are_counted_when_they_end() {
    let dir = TempDir::new("metrics-runs");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agent = AgentProc::start(&server.grpc, "echo,fail", 4, "metrics-runs-agent");
    api.wait_agents(1).await;
    let ok = api
        .post(
            "/api/v1/runs",
            &json!({"run_id": "run-ok", "definition": {"steps": [
                {"id": "a", "task_type": "echo"},
                {"id": "b", "task_type": "echo", "dependencies": ["a"]}
            ]}}),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let bad = api
        .post(
            "/api/v1/runs",
            &json!({"run_id": "run-bad", "definition": {"steps": [
                {"id": "a", "task_type": "fail", "metadata": {"permanent": true}}
            ]}}),
        )
        .await;
    assert_eq!(bad.status, 201, "{}", bad.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let (_, text) = scrape(&server.http).await;
        let m = parse(&text);
        let done = |status: &str| {
            value(
                &m,
                "orchestrator_flow_runs_processed_total",
                &[("status", status)],
            )
        };
        if done("completed").is_some() && done("failed").is_some() {
            break m;
        }
        assert!(Instant::now() < deadline, "runs did not end:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let get = |name: &str, labels: &[(&str, &str)]| value(&m, name, labels);
    assert_eq!(
        get(
            "orchestrator_flow_runs_processed_total",
            &[("status", "completed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "orchestrator_flow_runs_processed_total",
            &[("status", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "orchestrator_run_execution_seconds_count",
            &[("status", "completed")]
        ),
        Some(1.0)
    );
    assert_eq!(get("orchestrator_active_runs", &[]), Some(0.0));
    assert_eq!(
        get("tasks_submitted_total", &[("task_type", "echo")]),
        Some(2.0)
    );
    assert_eq!(
        get("tasks_submitted_total", &[("task_type", "fail")]),
        Some(1.0)
    );
}
