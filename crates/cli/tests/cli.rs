//! The `baton` client commands against a real server: readable output for people,
//! JSON for scripts, exit codes, and errors in words.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

#[tokio::test]
async fn submit_wait_list_get_dlq_and_agents_from_the_cli() {
    let dir = TempDir::new("cli");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "echo,fail", 4, "cli-agent");
    Api::new(&server.http).wait_agents(1).await;

    let (ok, out, err) = baton(
        &server,
        &[
            "submit",
            "--type",
            "echo",
            "--task-id",
            "c1",
            "--input",
            "text:hello",
            "--wait",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"]["inputs"][0]["data"], "hello");

    let (ok, out, _) = baton(&server, &["get", "c1"]);
    assert!(ok);
    assert!(out.contains("status     completed"), "{out}");
    assert!(out.contains("cli-agent"), "{out}");

    let (ok, out, _) = baton(
        &server,
        &["submit", "--type", "echo", "--count", "25", "--wait"],
    );
    assert!(ok);
    assert!(
        out.contains("25 tasks finished: 25 completed, 0 did not"),
        "{out}"
    );

    let (ok, out, _) = baton(&server, &["list", "--json", "--limit", "1000"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 26);
    let (ok, out, _) = baton(&server, &["list", "--status", "completed", "--limit", "5"]);
    assert!(ok);
    assert!(
        out.contains("TASK ID") && out.contains("more: --cursor"),
        "{out}"
    );

    // A task that ends in the dead-letter queue makes `submit --wait` fail.
    let (ok, _, err) = baton(
        &server,
        &[
            "submit",
            "--type",
            "fail",
            "--task-id",
            "d1",
            "--max-attempts",
            "1",
            "--wait",
        ],
    );
    assert!(!ok);
    assert!(err.contains("did not complete"), "{err}");
    let (ok, out, _) = baton(&server, &["dlq", "list", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tasks"][0]["task_id"], "d1");
    let (ok, out, _) = baton(&server, &["dlq", "reprocess", "d1"]);
    assert!(ok);
    assert!(out.contains("task d1 is queued again"), "{out}");

    let (ok, out, _) = baton(&server, &["agents"]);
    assert!(ok);
    assert!(
        out.contains("cli-agent") && out.contains("echo,fail"),
        "{out}"
    );

    // Errors are said in words, with a non-zero exit.
    let (ok, _, err) = baton(&server, &["submit", "--type", "echo", "--priority", "99"]);
    assert!(!ok);
    assert!(
        err.contains("invalid_argument") && err.contains("priority"),
        "{err}"
    );
    let (ok, _, err) = baton(&server, &["get", "missing"]);
    assert!(!ok);
    assert!(err.contains("not_found"), "{err}");
    let (ok, _, err) = baton(&server, &["list", "--status", "bogus"]);
    assert!(!ok);
    assert!(err.contains("unknown status"), "{err}");
}

#[test]
fn serve_refuses_bad_configuration_with_a_clear_message() {
    // Runs `baton args` with `env` (a value, or None to unset), expects it to
    // fail, and returns what it said.
    let refused = |args: &[&str], env: &[(&str, Option<&str>)]| -> String {
        let mut cmd = Command::new(BATON);
        cmd.args(args);
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&["serve", "--max-workers", "0"], &[("MAX_WORKERS", None)]);
    assert!(err.contains("max_workers"), "{err}");
    let err = refused(&["serve"], &[("GRPC_PORT", Some("not-a-port"))]);
    assert!(err.contains("GRPC_PORT"));
    let err = refused(&["agent", "--type", "nonsense"], &[]);
    assert!(err.contains("unknown agent type"));
    // The runtime's size is checked before the runtime is built.
    let err = refused(&["dev"], &[("BATON_WORKER_THREADS", Some("5000"))]);
    assert!(
        err.contains("worker_threads (BATON_WORKER_THREADS) must be at most 1024"),
        "{err}"
    );
    let err = refused(
        &["agent", "--type", "echo", "--worker-threads", "5000"],
        &[],
    );
    assert!(err.contains("--worker-threads"));
}

#[test]
fn serve_runs_the_runtime_size_it_is_given() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("workers");
    let serving_with = |envs: &[(&str, &str)], args: &[&str]| -> Value {
        let mut child = serve_command(&dir.0)
            .args(["--metrics-addr", "off", "--log-format", "json"])
            .args(args)
            .env_remove("BATON_WORKER_THREADS")
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let line = stderr
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("baton is serving"))
            .expect("a serving line");
        child.kill().unwrap();
        child.wait().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let v = serving_with(&[], &["--worker-threads", "3"]);
    assert_eq!(v["fields"]["runtime_workers"], 3, "{v}");
    let v = serving_with(&[("BATON_WORKER_THREADS", "2")], &[]);
    assert_eq!(v["fields"]["runtime_workers"], 2, "{v}");
    // By default, one less than the CPUs, at least one.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let v = serving_with(&[], &[]);
    assert_eq!(
        v["fields"]["runtime_workers"],
        cpus.saturating_sub(1).max(1),
        "{v}"
    );
}

#[test]
fn two_servers_cannot_share_a_data_directory() {
    let dir = TempDir::new("lock");
    let _first = Server::start(&dir.0);
    let out = serve_command(&dir.0).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_latency_reports_percentiles_and_writes_each_task_with_latency_out() {
    let dir = TempDir::new("bench-latency");
    let csv = dir.0.join("latency.csv");
    let out = Command::new(BATON)
        .args([
            "bench",
            "--scenarios",
            "latency",
            "--latency-tasks",
            "40",
            "--rate",
            "200",
            "--agents",
            "1",
            "--latency-out",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "baton latency_p50 ",
        "baton latency_p99 ",
        "baton latency_max ",
    ] {
        assert!(stdout.contains(line), "{line} missing: {stdout}");
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("sent_us,latency_us,received_ms,started_ms,finished_ms")
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|f| f.parse::<f64>().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 40, "one row per task");
    for (i, row) in rows.iter().enumerate() {
        let [sent, latency, received, started, finished] = row[..] else {
            panic!("row {i}: {row:?}")
        };
        assert_eq!(sent, i as f64 * 5_000.0, "sent 5 ms apart at 200/s");
        assert!(latency > 0.0);
        // The server's times (ms, from the scheduled send) come in order and
        // within the latency the client saw.
        assert!(
            received <= started + 1.0 && started <= finished + 1.0,
            "{row:?}"
        );
        assert!(finished <= latency / 1000.0 + 1.0, "{row:?}");
    }
}
