//! A rough throughput measurement, not a test of speed (it asserts only that every
//! task went through). Run with:
//!
//! ```text
//! cargo test --release -p baton-store-sqlite --test throughput -- --ignored --nocapture
//! ```

use baton_core::lifecycle::Command;
use baton_core::{AgentId, InputPart, TaskSpec};
use baton_store::conformance::{spec_with, T0};
use baton_store::{ClaimRequest, Store, Update, UpdateOutcome};
use baton_store_sqlite::{Options, SqliteStore, Synchronous};
use std::sync::Arc;
use std::time::Instant;

const TASKS: usize = 100_000;
const SUBMIT_BATCH: usize = 1_000;
const CLAIM_BATCH: usize = 256;

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

fn request(worker: usize, now: u64) -> ClaimRequest {
    ClaimRequest {
        task_type: "bench".into(),
        max: CLAIM_BATCH,
        agent_id: AgentId::from_trusted(format!("agent-{worker}")),
        lease_owner: format!("session-{worker}"),
        lease_deadline_ms: now + 60_000,
        now,
    }
}

async fn complete(store: &SqliteStore, claimed: Vec<baton_store::Claimed>, now: u64) -> usize {
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
    let outcomes = store.update(updates, now).await.expect("complete");
    outcomes
        .iter()
        .filter(|o| matches!(o, UpdateOutcome::Applied { .. }))
        .count()
}

fn rate(n: usize, since: Instant) -> String {
    let secs = since.elapsed().as_secs_f64();
    format!("{:>8.0} tasks/s ({secs:.2} s)", n as f64 / secs)
}

/// Phases one after another, one caller: submit all, claim all, complete all.
async fn phases(synchronous: Synchronous) {
    let store = SqliteStore::open_temp_with(Options {
        synchronous,
        ..Options::default()
    })
    .expect("open");
    let all: Vec<TaskSpec> = (0..TASKS).map(task).collect();
    let start = Instant::now();

    let t = Instant::now();
    for chunk in all.chunks(SUBMIT_BATCH) {
        store.submit(chunk.to_vec(), T0).await.expect("submit");
    }
    let submit_rate = rate(TASKS, t);

    let t = Instant::now();
    let mut claimed = Vec::with_capacity(TASKS);
    loop {
        let batch = store.claim(request(0, T0 + 1)).await.expect("claim");
        if batch.is_empty() {
            break;
        }
        claimed.extend(batch);
    }
    assert_eq!(claimed.len(), TASKS);
    let claim_rate = rate(TASKS, t);

    let t = Instant::now();
    let mut done = 0;
    let mut claimed = claimed.into_iter();
    loop {
        let batch: Vec<_> = claimed.by_ref().take(CLAIM_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        done += complete(&store, batch, T0 + 2).await;
    }
    assert_eq!(done, TASKS);
    let complete_rate = rate(TASKS, t);

    println!("sequential, synchronous={synchronous:?}");
    println!("  submit   (batches of {SUBMIT_BATCH}): {submit_rate}");
    println!("  claim    (batches of {CLAIM_BATCH}):  {claim_rate}");
    println!("  complete (batches of {CLAIM_BATCH}):  {complete_rate}");
    println!(
        "  end to end (submit + claim + complete): {}",
        rate(TASKS, start)
    );
}

/// Submitters, claimers and completers at once, as a busy server would run them:
/// their operations share transactions (group commit).
async fn pipelined(synchronous: Synchronous, workers: usize) {
    let store = Arc::new(
        SqliteStore::open_temp_with(Options {
            synchronous,
            ..Options::default()
        })
        .expect("open"),
    );
    let start = Instant::now();

    let submitters: Vec<_> = (0..2)
        .map(|k| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mine: Vec<TaskSpec> = (0..TASKS).filter(|i| i % 2 == k).map(task).collect();
                for chunk in mine.chunks(SUBMIT_BATCH) {
                    store.submit(chunk.to_vec(), T0).await.expect("submit");
                }
            })
        })
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runners: Vec<_> = (0..workers)
        .map(|w| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                use std::sync::atomic::Ordering;
                while done.load(Ordering::Relaxed) < TASKS {
                    let claimed = store.claim(request(w, T0 + 1)).await.expect("claim");
                    if claimed.is_empty() {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let n = complete(&store, claimed, T0 + 2).await;
                    done.fetch_add(n, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.expect("submitter");
    }
    for r in runners {
        r.await.expect("runner");
    }
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        counts.by_status.get("completed").copied(),
        Some(TASKS as u64)
    );
    let stats = store.write_stats();
    println!(
        "pipelined, synchronous={synchronous:?}, 2 submitters, {workers} claim+complete workers: {} \
         ({} store calls in {} transactions)",
        rate(TASKS, start),
        stats.operations,
        stats.transactions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
async fn throughput() {
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        phases(synchronous).await;
        pipelined(synchronous, 4).await;
    }
}
