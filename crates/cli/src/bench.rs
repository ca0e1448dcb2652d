//! `baton bench`: an end-to-end load generator. It starts (or targets) a server,
//! runs agents as separate processes over gRPC, and prints one line per figure in
//! the peers' format (`baton <scenario> <value> <unit>`), with latencies from HDR
//! histograms. The latency scenario is open-loop: each task has a scheduled send
//! time and its latency counts from that time, so a stall cannot hide behind
//! requests that were never sent (coordinated omission).

use crate::client::{enc, Client};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Scenarios to run: throughput, throughput.seq, latency, queued-memory, and the
    /// workflow ones: chains (3-step chains), fanout (10 parallel steps + 1 fan-in),
    /// wide (one run of 10,000 parallel steps); failover (with --replicas 2+: one
    /// replica SIGKILLed mid-run); routing and discovery (the scheduler's core in
    /// process, no server: see the --sched-* options).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,throughput.seq,latency"
    )]
    scenarios: Vec<String>,
    /// Target this REST URL instead of starting a server.
    #[arg(long)]
    server: Option<String>,
    /// gRPC URL of the target server (for the agents), with --server.
    #[arg(long)]
    grpc: Option<String>,
    /// Agent processes to start (0: use agents already connected).
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Concurrency of each agent process.
    #[arg(long, default_value_t = 128)]
    agent_concurrency: usize,
    /// MAX_WORKERS of a server started by the bench.
    #[arg(long, default_value_t = 512)]
    max_workers: usize,
    /// durability of a server started by the bench: full or normal.
    #[arg(long, default_value = "full")]
    durability: String,
    /// Tasks in the throughput scenarios.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Tasks per batch request in the bulk scenario.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Concurrent HTTP requests in the one-request-per-task scenario.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Runs in the chains scenario (fanout uses a quarter of it).
    #[arg(long, default_value_t = 4_000)]
    runs: usize,
    /// Start the workflow scenarios' runs in batches of this many
    /// (`POST /api/v1/runs/batch`, 4 in flight, like the peers' bulk add);
    /// 0: one `POST /api/v1/runs` per run over --connections.
    #[arg(long, default_value_t = 0)]
    run_batch: usize,
    /// Offered rate of the latency scenario, tasks/s.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Tasks in the latency scenario.
    #[arg(long, default_value_t = 5_000)]
    latency_tasks: usize,
    /// Write each latency-scenario task's scheduled send offset and its
    /// submit->complete latency (µs), and the server's receipt, start and
    /// finish (ms after the scheduled send), as CSV to this file: to see
    /// whether slow tasks are spread out or bunched in one stall, and where.
    #[arg(long)]
    latency_out: Option<std::path::PathBuf>,
    /// Tasks queued in the queued-memory scenario.
    #[arg(long, default_value_t = 1_000_000)]
    queued: usize,
    /// Data directory of a server started by the bench [default: a new temporary one].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Run the servers on this PostgreSQL (postgres://…) instead of the embedded
    /// store, in a schema of the bench's own, dropped at the end.
    #[arg(long)]
    store: Option<String>,
    /// Servers (replicas) to start on --store; agents and submissions are spread
    /// across them.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Give the no-op tasks a `concurrency_key` out of this many (0: none), so
    /// that they take the scheduler's per-task path (issue 4's benchmark).
    #[arg(long, default_value_t = 0)]
    concurrency_keys: usize,
    /// Give the no-op tasks a `rate_limit_key` out of this many (0: none).
    #[arg(long, default_value_t = 0)]
    rate_limit_keys: usize,
    #[command(flatten)]
    sched: crate::bench_sched::SchedArgs,
}

/// Scheduling keys the no-op tasks carry (set once from the arguments).
static KEYS: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();

struct Proc {
    child: Child,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::debug!(name = %self.name, "stopped");
    }
}

struct Server {
    proc: Option<Proc>,
    http: String,
    grpc: String,
    data_dir: std::path::PathBuf,
}

fn exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the baton executable")
}

fn spawn_server(
    data_dir: &std::path::Path,
    max_workers: usize,
    durability: &str,
    extra: &[String],
) -> Result<(Proc, String, String)> {
    let mut child = Command::new(exe()?)
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            // Metrics stay on the REST port; 8000 may be taken by another server.
            "--metrics-addr",
            "off",
            "--log-level",
            "warn",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--max-workers",
            &max_workers.to_string(),
            "--durability",
            durability,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start baton serve")?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let field = |name: &str| -> Result<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(String::from)
            .ok_or_else(|| anyhow!("server did not report its {name} address: {line:?}"))
    };
    let http = format!("http://{}", field("http")?);
    let grpc = format!("http://{}", field("grpc")?);
    Ok((
        Proc {
            child,
            name: "server".into(),
        },
        http,
        grpc,
    ))
}

/// Starts `n` echo agents; agent `i` knows every endpoint, starting with replica
/// `i mod replicas`, so that agents are spread and each can fail over.
fn spawn_agents(n: usize, grpcs: &[String], concurrency: usize) -> Result<Vec<Proc>> {
    (0..n)
        .map(|i| {
            let grpc = (0..grpcs.len())
                .map(|k| grpcs[(i + k) % grpcs.len()].as_str())
                .collect::<Vec<_>>()
                .join(",");
            let grpc = grpc.as_str();
            let child = Command::new(exe()?)
                .args([
                    "agent",
                    "--type",
                    "echo",
                    "--orchestrator",
                    grpc,
                    "--log-level",
                    "warn",
                ])
                .args([
                    "--concurrency",
                    &concurrency.to_string(),
                    "--agent-id",
                    &format!("bench-echo-{i}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("cannot start baton agent")?;
            Ok(Proc {
                child,
                name: format!("agent-{i}"),
            })
        })
        .collect()
}

/// Waits until `n` agents are connected across the replicas `clients` talk to.
async fn wait_agents(clients: &[Arc<Client>], n: usize) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut connected = 0;
        for client in clients {
            let v = client.get("/api/v1/agents").await?;
            connected += v["agents"].as_array().map_or(0, |a| a.len());
        }
        if connected >= n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("agents did not connect within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(client: &Client, status: &str) -> Result<u64> {
    let v = client.get("/health").await?;
    Ok(v["stats"]["tasks"][status].as_u64().unwrap_or(0))
}

/// Waits until `completed` reaches `target`; returns when it did.
async fn wait_completed(client: &Client, target: u64, budget: Duration) -> Result<Instant> {
    let start = Instant::now();
    loop {
        if count(client, "completed").await? >= target {
            return Ok(Instant::now());
        }
        if start.elapsed() > budget {
            bail!("tasks did not complete within {} s", budget.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn line(scenario: &str, value: f64, unit: &str) {
    let txt = if value >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    println!("baton {scenario} {txt} {unit}");
}

/// `n` no-op tasks in batches of `batch`.
fn noop_batches(n: usize, batch: usize, tag: &str) -> Vec<Vec<Value>> {
    (0..n)
        .map(|i| noop(i, tag))
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(<[Value]>::to_vec)
        .collect()
}

fn noop(i: usize, tag: &str) -> Value {
    let mut task = json!({"task_type": "echo", "task_id": format!("{tag}-{i}"), "inputs": [{"type": "json", "data": {"i": i}}]});
    let (concurrency, rate) = KEYS.get().copied().unwrap_or((0, 0));
    if concurrency > 0 {
        task["metadata"]["concurrency_key"] = format!("tenant-{}", i % concurrency).into();
    }
    if rate > 0 {
        task["metadata"]["rate_limit_key"] = format!("api-{}", i % rate).into();
    }
    task
}

/// Bulk submission, the batches spread round-robin over `clients` (the replicas).
async fn throughput_bulk(clients: &[Arc<Client>], n: usize, batch: usize, tag: &str) -> Result<()> {
    let client = &clients[0];
    let base = count(client, "completed").await?;
    let start = Instant::now();
    let chunks = noop_batches(n, batch, tag);
    // A few batches in flight at once, as a real producer would.
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut handles = Vec::new();
    for (k, chunk) in chunks.into_iter().enumerate() {
        let client = clients[k % clients.len()].clone();
        let permit = sem.clone().acquire_owned().await?;
        handles.push(tokio::spawn(async move {
            let r = client
                .post("/api/v1/tasks/batch", &json!({"tasks": chunk}))
                .await;
            drop(permit);
            r
        }));
    }
    for h in handles {
        h.await??;
    }
    let submitted = start.elapsed();
    let done = wait_completed(client, base + n as u64, Duration::from_secs(300)).await?;
    let secs = done.duration_since(start).as_secs_f64();
    line("throughput", n as f64 / secs, "tasks/s");
    eprintln!(
        "{}",
        json!({"scenario": "throughput", "tasks": n, "batch": batch, "submit_s": submitted.as_secs_f64(), "total_s": secs})
    );
    Ok(())
}

async fn throughput_seq(
    client: &Arc<Client>,
    n: usize,
    connections: usize,
    tag: &str,
) -> Result<()> {
    let base = count(client, "completed").await?;
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        let next = next.clone();
        let tag = tag.to_string();
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                client.post("/api/v1/tasks", &noop(i, &tag)).await?;
            }
        }));
    }
    for h in handles {
        h.await??;
    }
    let submitted = start.elapsed();
    let done = wait_completed(client, base + n as u64, Duration::from_secs(300)).await?;
    let secs = done.duration_since(start).as_secs_f64();
    line("throughput.seq", n as f64 / secs, "tasks/s");
    eprintln!(
        "{}",
        json!({"scenario": "throughput.seq", "tasks": n, "connections": connections, "submit_s": submitted.as_secs_f64(), "total_s": secs})
    );
    Ok(())
}

/// How the workflow scenarios start their runs.
#[derive(Clone, Copy)]
struct RunLoad {
    /// Runs per `POST /api/v1/runs/batch`; 0: one `POST /api/v1/runs` each.
    batch: usize,
    /// Requests in flight when starting runs one at a time.
    connections: usize,
}

/// Starts `n` runs of `def` (in batches, or one request each with
/// `connections` in flight, as `load` says) and waits until all their tasks
/// completed.
#[allow(clippy::too_many_arguments)]
async fn runs(
    client: &Arc<Client>,
    def: &Value,
    steps: usize,
    n: usize,
    load: RunLoad,
    tag: &str,
    scenario: &str,
    unit: &str,
) -> Result<()> {
    let base = count(client, "completed").await?;
    let start = Instant::now();
    let bodies: Vec<Value> = (0..n)
        .map(|i| json!({"run_id": format!("{tag}-{i}"), "definition": def}))
        .collect();
    let (path, requests, in_flight): (&str, Vec<Value>, usize) = if load.batch > 0 {
        let batches = bodies
            .chunks(load.batch)
            .map(|c| json!({"runs": c}))
            .collect();
        ("/api/v1/runs/batch", batches, 4)
    } else {
        ("/api/v1/runs", bodies, load.connections.max(1))
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut handles = Vec::with_capacity(requests.len());
    for body in requests {
        let client = client.clone();
        let permit = sem.clone().acquire_owned().await?;
        handles.push(tokio::spawn(async move {
            let r = client.post(path, &body).await;
            drop(permit);
            r
        }));
    }
    for h in handles {
        h.await??;
    }
    let submitted = start.elapsed();
    let done = wait_completed(client, base + (n * steps) as u64, Duration::from_secs(600)).await?;
    let secs = done.duration_since(start).as_secs_f64();
    line(scenario, n as f64 / secs, unit);
    eprintln!(
        "{}",
        json!({"scenario": scenario, "runs": n, "steps_per_run": steps, "run_batch": load.batch, "submit_s": submitted.as_secs_f64(), "total_s": secs})
    );
    Ok(())
}

/// CPU time PostgreSQL's processes used during a scenario (read from `/proc`: the
/// database runs on this machine in the benchmarks).
struct DbCpu {
    ticks: u64,
}

fn postgres_cpu_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            // pid (comm) state ... utime stime are fields 14 and 15.
            let (head, rest) = stat.rsplit_once(')')?;
            if !head.ends_with("(postgres") {
                return None;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

impl DbCpu {
    fn start(on: bool) -> Option<Self> {
        on.then(|| Self {
            ticks: postgres_cpu_ticks(),
        })
    }

    fn report(self, elapsed: Duration, tasks: usize) {
        // Linux reports CPU time in ticks of 1/100 s (USER_HZ).
        let cpu_s = postgres_cpu_ticks().saturating_sub(self.ticks) as f64 / 100.0;
        let secs = elapsed.as_secs_f64();
        let cores = cpu_s / secs;
        let per_1k = cores / (tasks as f64 / secs / 1_000.0);
        line("db_cpu_cores", cores, "cores");
        line("db_cpu_per_1k_tasks_s", per_1k, "cores");
    }
}

/// Submits `n` no-op tasks in batches over the `survivors` and `victim`, SIGKILLs
/// the victim once a quarter of the batches went out (the rest go to the
/// survivors), and reports how long after the kill the tasks it stranded (running
/// there, retried elsewhere once their leases lapsed) completed: the recovery time.
async fn failover(
    survivors: &[Arc<Client>],
    victim: &mut Server,
    n: usize,
    batch: usize,
    tag: &str,
) -> Result<()> {
    let client = &survivors[0];
    let base = count(client, "completed").await?;
    let mut targets: Vec<Arc<Client>> = survivors.to_vec();
    targets.push(Arc::new(Client::new(&victim.http)?));
    let chunks = noop_batches(n, batch, tag);
    let kill_after = chunks.len() / 4;
    let mut killed = None;
    for (k, chunk) in chunks.into_iter().enumerate() {
        if k == kill_after.max(1) && killed.is_none() {
            victim.proc.take(); // SIGKILL
            killed = Some((Instant::now(), wall_ms()));
            targets.pop();
        }
        targets[k % targets.len()]
            .post("/api/v1/tasks/batch", &json!({"tasks": chunk}))
            .await?;
    }
    let (killed, killed_wall) = killed.ok_or_else(|| anyhow!("too few batches to kill mid-run"))?;
    let done = wait_completed(client, base + n as u64, Duration::from_secs(300)).await?;
    // The stranded tasks: those that needed a second attempt.
    let mut stranded = 0;
    let mut last_ms = killed_wall;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!(
                "/api/v1/tasks?status=completed&limit=1000&cursor={}",
                enc(c)
            ),
            None => "/api/v1/tasks?status=completed&limit=1000".into(),
        };
        let page = client.get(&path).await?;
        for t in page["tasks"].as_array().into_iter().flatten() {
            if !t["task_id"].as_str().is_some_and(|id| id.starts_with(tag))
                || t["metrics"]["retry_count"].as_u64().unwrap_or(0) == 0
            {
                continue;
            }
            stranded += 1;
            let ended = t["agent_executions"]
                .as_array()
                .and_then(|e| e.last())
                .and_then(|e| e["finished_at"].as_str())
                .and_then(parse_rfc3339_ms);
            if let Some(ended) = ended {
                last_ms = last_ms.max(ended);
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    line("failover.recovery", (last_ms - killed_wall) / 1000.0, "s");
    line("failover.stranded_tasks", stranded as f64, "tasks");
    line(
        "failover.all_done_after_kill",
        done.duration_since(killed).as_secs_f64(),
        "s",
    );
    eprintln!(
        "{}",
        json!({"scenario": "failover", "tasks": n, "note": "recovery: SIGKILL to the completion of the last task the dead replica stranded"})
    );
    Ok(())
}

fn parse_rfc3339_ms(s: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64() * 1000.0)
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

async fn latency(
    client: &Arc<Client>,
    n: usize,
    rate: u64,
    tag: &str,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let wall_start = wall_ms();
    // Paced from a plain thread: tokio's timer rounds sleeps up to whole
    // milliseconds, which would add up to 1 ms of the bench's own lateness.
    let runtime = tokio::runtime::Handle::current();
    let client2 = client.clone();
    let tag2 = tag.to_string();
    let pacer = std::thread::spawn(move || {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let scheduled = start + interval * i as u32;
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let client = client2.clone();
            let tag = tag2.clone();
            let scheduled_wall = wall_start + (interval * i as u32).as_secs_f64() * 1000.0;
            handles.push(runtime.spawn(async move {
                let id = format!("{tag}-{i}");
                // Submit and wait in one request, as a user waiting for a result
                // would; a wait that runs out goes on with GETs.
                let mut v = client
                    .post("/api/v1/tasks?wait_ms=30000", &noop(i, &tag))
                    .await?;
                loop {
                    let status = v["status"].as_str().unwrap_or("");
                    if status == "completed" {
                        let complete = scheduled.elapsed();
                        let started = v["agent_executions"][0]["started_at"]
                            .as_str()
                            .and_then(parse_rfc3339_ms);
                        let to_start = started.map(|s| (s - scheduled_wall).max(0.0));
                        // Where the time went, for --latency-out: the server's
                        // receipt and end, from the scheduled send (ms).
                        let at = |k: &str| {
                            v[k].as_str()
                                .and_then(parse_rfc3339_ms)
                                .map(|t| t - scheduled_wall)
                        };
                        let marks = [at("created_at"), to_start, at("finished_at")];
                        return Ok::<_, anyhow::Error>((complete, to_start, marks));
                    }
                    if matches!(status, "failed" | "dead_lettered" | "cancelled") {
                        bail!("task {id} ended {status}");
                    }
                    v = client
                        .get(&format!("/api/v1/tasks/{}?wait_ms=30000", enc(&id)))
                        .await?;
                }
            }));
        }
        handles
    });
    let handles = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow!("pacer thread panicked"))?;
    let mut complete = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut to_start = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut csv =
        out.map(|_| String::from("sent_us,latency_us,received_ms,started_ms,finished_ms\n"));
    for (i, h) in handles.into_iter().enumerate() {
        let (c, s, marks) = h.await??;
        complete.record((c.as_micros() as u64).max(1))?;
        if let Some(csv) = csv.as_mut() {
            let [received, started, finished] =
                marks.map(|m| m.map(|m| format!("{m:.0}")).unwrap_or_default());
            csv.push_str(&format!(
                "{},{},{received},{started},{finished}\n",
                (interval * i as u32).as_micros(),
                c.as_micros(),
            ));
        }
        if let Some(s) = s {
            to_start.record(((s * 1000.0) as u64).max(1))?;
        }
    }
    if let (Some(out), Some(csv)) = (out, csv) {
        std::fs::write(out, csv).with_context(|| format!("writing {}", out.display()))?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    line("latency_p50", ms(&complete, 0.50), "ms");
    line("latency_p95", ms(&complete, 0.95), "ms");
    line("latency_p99", ms(&complete, 0.99), "ms");
    line("latency_max", complete.max() as f64 / 1000.0, "ms");
    line("start_latency_p50", ms(&to_start, 0.50), "ms");
    line("start_latency_p99", ms(&to_start, 0.99), "ms");
    eprintln!(
        "{}",
        json!({"scenario": "latency", "tasks": n, "rate": rate, "note": "submit->complete measured by the client from the scheduled send time; submit->start from the server's start event (millisecond resolution)"})
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

async fn queued_memory(args: &BenchArgs, data_dir: &std::path::Path) -> Result<()> {
    let (proc, http, _grpc) = spawn_server(data_dir, args.max_workers, &args.durability, &[])?;
    let pid = proc.child.id();
    let client = Arc::new(Client::new(&http)?);
    let n = args.queued;
    let pb = indicatif::ProgressBar::new(n as u64);
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + args.batch).min(n);
        let tasks: Vec<Value> = (i..end).map(|j| noop(j, "queued")).collect();
        client
            .post("/api/v1/tasks/batch", &json!({"tasks": tasks}))
            .await?;
        pb.inc((end - i) as u64);
        i = end;
    }
    pb.finish_and_clear();
    let submit_s = start.elapsed().as_secs_f64();
    let (rss, hwm) = rss_kib(pid).ok_or_else(|| anyhow!("cannot read server memory"))?;
    line("queued_tasks", n as f64, "tasks");
    line("queued_rss", rss as f64 / 1024.0, "MiB");
    line("queued_peak_rss", hwm as f64 / 1024.0, "MiB");
    line("bulk_submit_only", n as f64 / submit_s, "tasks/s");
    // SIGKILL, then time how long until the restarted server serves again.
    drop(proc);
    let restart = Instant::now();
    let (proc2, http2, _) = spawn_server(data_dir, args.max_workers, &args.durability, &[])?;
    let client2 = Client::new(&http2)?;
    loop {
        if let Ok(v) = client2.get("/health").await {
            if v["healthy"] == true {
                break;
            }
        }
        if restart.elapsed() > Duration::from_secs(120) {
            bail!("server did not come back within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    line(
        "restart_to_healthy",
        restart.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    let v = client2.get("/health").await?;
    let queued = v["stats"]["tasks"]["queued"].as_u64().unwrap_or(0);
    line("queued_after_restart", queued as f64, "tasks");
    if queued < n as u64 {
        bail!("only {queued} of {n} queued tasks survived the restart");
    }
    drop(proc2);
    Ok(())
}

pub async fn run(mut args: BenchArgs) -> Result<()> {
    let _ = KEYS.set((args.concurrency_keys, args.rate_limit_keys));
    crate::serve::init_logging("warn", baton_server::config::LogFormat::Text, None);
    // The scheduler scenarios need no server: run them here, then the rest.
    let (sched, rest): (Vec<String>, Vec<String>) = std::mem::take(&mut args.scenarios)
        .into_iter()
        .partition(|s| crate::bench_sched::SCENARIOS.contains(&s.as_str()));
    if !sched.is_empty() {
        let sched_args = args.sched.clone();
        tokio::task::spawn_blocking(move || crate::bench_sched::run(&sched, &sched_args)).await??;
    }
    if rest.is_empty() {
        return Ok(());
    }
    args.scenarios = rest;
    let tmp = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("baton-bench-{}", std::process::id()))
    });
    let run_id = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    if args.replicas == 0 || (args.replicas > 1 && args.store.is_none()) {
        bail!("--replicas needs --store postgres://… (replicas share one store), and at least 1");
    }
    // A schema of the bench's own on the shared store, dropped when it ends.
    let schema = match &args.store {
        Some(url) => Some(
            baton_store_postgres::PgStore::connect_temp(url, Default::default())
                .await
                .context("cannot prepare a schema on --store")?,
        ),
        None => None,
    };
    let store_args: Vec<String> = match (&args.store, &schema) {
        (Some(url), Some(schema)) => vec![
            "--store".into(),
            url.clone(),
            "--store-schema".into(),
            schema.schema().to_string(),
        ],
        _ => Vec::new(),
    };
    let mut replicas: Vec<Server> = Vec::new();
    let mut server = match (&args.server, &args.grpc) {
        (Some(http), Some(grpc)) => Server {
            proc: None,
            http: http.clone(),
            grpc: grpc.clone(),
            data_dir: tmp.clone(),
        },
        (Some(_), None) => bail!("--server needs --grpc (the agents' address)"),
        _ => {
            if args.scenarios.iter().any(|s| s != "queued-memory") {
                for r in 1..args.replicas {
                    let dir = tmp.join(format!("replica-{r}"));
                    let (p, http, grpc) =
                        spawn_server(&dir, args.max_workers, &args.durability, &store_args)?;
                    replicas.push(Server {
                        proc: Some(p),
                        http,
                        grpc,
                        data_dir: dir,
                    });
                }
                let (p, http, grpc) =
                    spawn_server(&tmp, args.max_workers, &args.durability, &store_args)?;
                Server {
                    proc: Some(p),
                    http,
                    grpc,
                    data_dir: tmp.clone(),
                }
            } else {
                Server {
                    proc: None,
                    http: String::new(),
                    grpc: String::new(),
                    data_dir: tmp.clone(),
                }
            }
        }
    };
    println!(
        "# baton {} bench, {} cpus, agents {}x{}, max_workers {}, store {}, replicas {}",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.agents,
        args.agent_concurrency,
        args.max_workers,
        if args.store.is_some() {
            "postgresql".to_string()
        } else {
            format!("embedded (durability {})", args.durability)
        },
        args.replicas
    );
    let mut agents = Vec::new();
    if !server.http.is_empty() {
        let client = Arc::new(Client::new(&server.http)?);
        let mut clients = vec![client.clone()];
        for r in &replicas {
            clients.push(Arc::new(Client::new(&r.http)?));
        }
        let grpcs: Vec<String> = std::iter::once(server.grpc.clone())
            .chain(replicas.iter().map(|r| r.grpc.clone()))
            .collect();
        agents = spawn_agents(args.agents, &grpcs, args.agent_concurrency)?;
        if args.agents > 0 {
            wait_agents(&clients, args.agents).await?;
        }
        // Warm-up, not counted.
        throughput_bulk(
            &clients,
            1_000.min(args.tasks),
            args.batch,
            &format!("warm-{run_id}"),
        )
        .await
        .ok();
        let run_load = RunLoad {
            batch: args.run_batch,
            connections: args.connections,
        };
        for s in &args.scenarios {
            match s.as_str() {
                "throughput" => {
                    let cpu = DbCpu::start(args.store.is_some());
                    let start = Instant::now();
                    throughput_bulk(&clients, args.tasks, args.batch, &format!("tp-{run_id}"))
                        .await?;
                    if let Some(cpu) = cpu {
                        cpu.report(start.elapsed(), args.tasks);
                    }
                }
                "failover" => {
                    let Some(victim) = replicas.last_mut() else {
                        bail!("the failover scenario needs --replicas 2 or more");
                    };
                    failover(
                        &clients[..clients.len() - 1],
                        victim,
                        args.tasks,
                        args.batch,
                        &format!("fo-{run_id}"),
                    )
                    .await?
                }
                "throughput.seq" => {
                    throughput_seq(
                        &client,
                        args.tasks,
                        args.connections,
                        &format!("seq-{run_id}"),
                    )
                    .await?
                }
                "latency" => {
                    latency(
                        &client,
                        args.latency_tasks,
                        args.rate,
                        &format!("lat-{run_id}"),
                        args.latency_out.as_deref(),
                    )
                    .await?
                }
                "queued-memory" => {}
                "chains" => {
                    let def = json!({"execution_mode": "sequential", "steps": [
                        {"id": "a", "task_type": "echo"},
                        {"id": "b", "task_type": "echo"},
                        {"id": "c", "task_type": "echo"}
                    ]});
                    runs(
                        &client,
                        &def,
                        3,
                        args.runs,
                        run_load,
                        &format!("ch-{run_id}"),
                        "chains",
                        "chains/s",
                    )
                    .await?
                }
                "fanout" => {
                    let mut steps: Vec<Value> = (0..10)
                        .map(|k| json!({"id": format!("p{k}"), "task_type": "echo"}))
                        .collect();
                    steps.push(json!({"id": "join", "task_type": "echo",
                        "dependencies": (0..10).map(|k| format!("p{k}")).collect::<Vec<_>>()}));
                    let def = json!({"steps": steps});
                    runs(
                        &client,
                        &def,
                        11,
                        args.runs / 4,
                        run_load,
                        &format!("fo-{run_id}"),
                        "fanout",
                        "runs/s",
                    )
                    .await?
                }
                "wide" => {
                    let steps: Vec<Value> = (0..10_000)
                        .map(|k| json!({"id": format!("w{k}"), "task_type": "echo"}))
                        .collect();
                    let def = json!({"steps": steps});
                    let pid = server.proc.as_ref().map(|p| p.child.id());
                    let start = Instant::now();
                    runs(
                        &client,
                        &def,
                        10_000,
                        1,
                        RunLoad {
                            batch: 0,
                            connections: 1,
                        },
                        &format!("wd-{run_id}"),
                        "wide",
                        "runs/s",
                    )
                    .await?;
                    line("wide.time", start.elapsed().as_secs_f64(), "s");
                    if let Some((_, hwm)) = pid.and_then(rss_kib) {
                        line("wide.server_peak_rss", hwm as f64 / 1024.0, "MiB");
                    }
                }
                other => bail!("unknown scenario {other:?}"),
            }
        }
    }
    drop(agents);
    server.proc.take();
    replicas.clear();
    drop(schema);
    if args.scenarios.iter().any(|s| s == "queued-memory") {
        let dir = server.data_dir.join("queued");
        queued_memory(&args, &dir).await?;
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
