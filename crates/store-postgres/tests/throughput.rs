//! A rough throughput measurement, not a test of speed (it asserts only that every
//! task went through). Run with:
//!
//! ```text
//! cargo test --release -p baton-store-postgres --test throughput -- --ignored --nocapture
//! ```
//!
//! `BATON_TEST_POSTGRES_URL` picks the server, `BATON_BENCH_TASKS` the task count
//! (10,000 by default).

use baton_core::lifecycle::Command;
use baton_core::{AgentId, InputPart, TaskSpec};
use baton_store::conformance::{spec_with, T0};
use baton_store::{ClaimRequest, Store, Update, UpdateOutcome};
use baton_store_postgres::{Options, PgStore};
use std::sync::Arc;
use std::time::Instant;

const SUBMIT_BATCH: usize = 1_000;
const CLAIM_BATCH: usize = 100;
const WORKERS: usize = 8;

fn task(i: usize) -> TaskSpec {
    spec_with(&format!("task-{i:07}"), "bench", |s| {
        s.inputs = vec![InputPart::text(
            "summarise the quarterly numbers for the board, in three bullet points",
        )];
        s.metadata.clear();
        s.metadata
            .insert("customer".into(), serde_json::json!("acme"));
    })
}

fn rate(n: usize, since: Instant) -> String {
    let secs = since.elapsed().as_secs_f64();
    format!("{:>8.0} tasks/s ({secs:.2} s)", n as f64 / secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "a measurement: run it by hand"]
async fn submit_claim_complete() {
    let tasks: usize = std::env::var("BATON_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let url = std::env::var("BATON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let store = Arc::new(
        PgStore::connect_temp(&url, Options::default())
            .await
            .expect("connect"),
    );

    let all = Instant::now();
    let started = Instant::now();
    let specs: Vec<TaskSpec> = (0..tasks).map(task).collect();
    let mut submitters = Vec::new();
    for (w, chunk) in specs.chunks(tasks.div_ceil(WORKERS)).enumerate() {
        let (store, chunk) = (Arc::clone(&store), chunk.to_vec());
        submitters.push(tokio::spawn(async move {
            for batch in chunk.chunks(SUBMIT_BATCH) {
                store.submit(batch.to_vec(), T0).await.expect("submit");
            }
            w
        }));
    }
    for s in submitters {
        s.await.expect("submitter");
    }
    println!(
        "submit   {} ({WORKERS} submitters, batches of {SUBMIT_BATCH})",
        rate(tasks, started)
    );

    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let store = Arc::clone(&store);
        workers.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let claimed = store
                    .claim(ClaimRequest {
                        task_type: "bench".into(),
                        max: CLAIM_BATCH,
                        agent_id: AgentId::from_trusted(format!("agent-{w}")),
                        lease_owner: format!("session-{w}"),
                        lease_deadline_ms: T0 + 60_000,
                        now: T0 + 1,
                    })
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    return done;
                }
                let updates: Vec<Update> = claimed
                    .into_iter()
                    .map(|c| Update {
                        task_id: c.spec.task_id,
                        command: Command::Succeed {
                            attempt: c.attempt,
                            output: serde_json::json!({"ok": true}),
                        },
                    })
                    .collect();
                let outcomes = store.update(updates, T0 + 2).await.expect("complete");
                done += outcomes
                    .iter()
                    .filter(|o| matches!(o, UpdateOutcome::Applied { .. }))
                    .count();
            }
        }));
    }
    let mut completed = 0;
    for w in workers {
        completed += w.await.expect("worker");
    }
    println!(
        "claim+complete {} ({WORKERS} workers, claims of {CLAIM_BATCH}, one update per claim)",
        rate(completed, started)
    );
    println!("end to end {}", rate(tasks, all));
    assert_eq!(completed, tasks);
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.by_status.get("completed"), Some(&(tasks as u64)));
}
