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

/// CPU seconds (user + system) of the threads whose name starts with `prefix`, or
/// of the whole process for `None`; from `/proc`, so Linux only (0 elsewhere).
/// Less noisy than wall time on a shared machine.
fn cpu_seconds(prefix: Option<&str>) -> f64 {
    fn ticks(stat_path: &std::path::Path) -> u64 {
        let Ok(stat) = std::fs::read_to_string(stat_path) else {
            return 0;
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        field(14).unwrap_or(0) + field(15).unwrap_or(0)
    }
    const TICKS_PER_SECOND: f64 = 100.0;
    let Some(prefix) = prefix else {
        return ticks(std::path::Path::new("/proc/self/stat")) as f64 / TICKS_PER_SECOND;
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            total += ticks(&task.path().join("stat"));
        }
    }
    total as f64 / TICKS_PER_SECOND
}

/// Writer-thread and whole-process CPU per task since `(writer, process)`.
fn cpu(n: usize, since: (f64, f64)) -> String {
    let (writer, process) = (cpu_seconds(Some("baton-sqlite")), cpu_seconds(None));
    format!(
        "writer {:.1} us/task, process {:.1} us/task",
        (writer - since.0) * 1e6 / n as f64,
        (process - since.1) * 1e6 / n as f64
    )
}

fn cpu_now() -> (f64, f64) {
    (cpu_seconds(Some("baton-sqlite")), cpu_seconds(None))
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
    let c = cpu_now();
    for chunk in all.chunks(SUBMIT_BATCH) {
        store.submit(chunk.to_vec(), T0).await.expect("submit");
    }
    let submit_rate = format!("{}, {}", rate(TASKS, t), cpu(TASKS, c));

    let t = Instant::now();
    let c = cpu_now();
    let mut claimed = Vec::with_capacity(TASKS);
    loop {
        let batch = store.claim(request(0, T0 + 1)).await.expect("claim");
        if batch.is_empty() {
            break;
        }
        claimed.extend(batch);
    }
    assert_eq!(claimed.len(), TASKS);
    let claim_rate = format!("{}, {}", rate(TASKS, t), cpu(TASKS, c));

    let t = Instant::now();
    let c = cpu_now();
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
    let complete_rate = format!("{}, {}", rate(TASKS, t), cpu(TASKS, c));

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
    let c = cpu_now();

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
        "pipelined, synchronous={synchronous:?}, 2 submitters, {workers} claim+complete workers: {}, {} \
         ({} store calls in {} transactions)",
        rate(TASKS, start),
        cpu(TASKS, c),
        stats.operations,
        stats.transactions
    );
}

/// Like a busy server: many small calls at once. Each of `workers` claims up to
/// `claim_max` tasks, then reports each result in a call of its own (as agents send
/// a results frame per finished task), so the writer commits many small operations.
async fn chatty(synchronous: Synchronous, workers: usize, claim_max: usize) {
    let store = Arc::new(
        SqliteStore::open_temp_with(Options {
            synchronous,
            ..Options::default()
        })
        .expect("open"),
    );
    let tasks = TASKS / 2;
    let start = Instant::now();
    let c = cpu_now();
    let submitter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let all: Vec<TaskSpec> = (0..tasks).map(task).collect();
            for chunk in all.chunks(SUBMIT_BATCH) {
                store.submit(chunk.to_vec(), T0).await.expect("submit");
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runners: Vec<_> = (0..workers)
        .map(|w| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                use std::sync::atomic::Ordering;
                while done.load(Ordering::Relaxed) < tasks {
                    let mut req = request(w, T0 + 1);
                    req.max = claim_max;
                    let claimed = store.claim(req).await.expect("claim");
                    if claimed.is_empty() {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let each = claimed
                        .into_iter()
                        .map(|c| complete(&store, vec![c], T0 + 2));
                    let n: usize = futures::future::join_all(each).await.into_iter().sum();
                    done.fetch_add(n, Ordering::Relaxed);
                }
            })
        })
        .collect();
    submitter.await.expect("submitter");
    for r in runners {
        r.await.expect("runner");
    }
    let stats = store.write_stats();
    println!(
        "chatty, synchronous={synchronous:?}, {workers} workers claiming {claim_max} and reporting one by one: {}, {} \
         ({} store calls in {} transactions)",
        rate(tasks, start),
        cpu(tasks, c),
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
        chatty(synchronous, 16, 16).await;
    }
}
