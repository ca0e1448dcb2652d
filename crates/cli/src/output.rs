//! Client commands. Tables for people by default, `--json` for scripts, and a
//! progress bar for bulk submits and waits.

use crate::client::{enc, Client};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// REST URL(s) of the orchestrator, comma-separated; the next is tried when one is unreachable.
    #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Print JSON for scripts instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    pub fn client(&self) -> Result<Client> {
        Client::new(&self.server)
    }
}

#[derive(Args, Clone)]
pub struct SubmitArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// JSON file with one task, an array of tasks, or {"tasks": [...]}; "-" reads stdin.
    #[arg(long, short)]
    file: Option<String>,
    /// Task type (when not using --file).
    #[arg(long = "type", short = 't')]
    task_type: Option<String>,
    /// Input part as KIND:VALUE — text:hello, json:{"a":1}, image:@photo.png, video:@clip.bin, binary:@file (repeatable).
    #[arg(long = "input", short = 'i')]
    inputs: Vec<String>,
    /// Metadata as a JSON object.
    #[arg(long, short)]
    metadata: Option<String>,
    /// 1..=10 or critical, high, normal, low, background.
    #[arg(long, short)]
    priority: Option<String>,
    /// Per-attempt timeout [server default: 30000].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Attempts in all, the first included [server default: 3].
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Delay before the first retry, doubling after each [server default: 1000].
    #[arg(long)]
    backoff_base_ms: Option<u64>,
    /// Task id [default: generated]; the same id with the same content is accepted once.
    #[arg(long)]
    task_id: Option<String>,
    /// sequential, parallel or hybrid.
    #[arg(long)]
    execution_mode: Option<String>,
    /// RFC 3339 time after which the task fails.
    #[arg(long)]
    deadline: Option<String>,
    /// Submit this many copies (bulk, with generated ids).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Wait for the tasks to finish and print their results.
    #[arg(long, short)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300)]
    wait_timeout_s: u64,
}

fn parse_input(raw: &str) -> Result<Value> {
    let (kind, value) = raw
        .split_once(':')
        .ok_or_else(|| anyhow!("--input {raw:?} must look like KIND:VALUE, e.g. text:hello"))?;
    let data = match kind {
        "text" => Value::String(value.to_string()),
        "json" => serde_json::from_str(value)
            .with_context(|| format!("--input json:{value} is not valid JSON"))?,
        "image" | "video" | "binary" => {
            let bytes = match value.strip_prefix('@') {
                Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
                None => value.as_bytes().to_vec(),
            };
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        other => bail!("unknown input kind {other:?}: use text, json, image, video or binary"),
    };
    Ok(json!({"type": kind, "data": data}))
}

fn task_from_flags(a: &SubmitArgs) -> Result<Value> {
    let task_type = a
        .task_type
        .clone()
        .ok_or_else(|| anyhow!("give --type (or --file)"))?;
    let mut t = serde_json::Map::new();
    t.insert("task_type".into(), task_type.into());
    if let Some(id) = &a.task_id {
        t.insert("task_id".into(), id.clone().into());
    }
    if !a.inputs.is_empty() {
        t.insert(
            "inputs".into(),
            a.inputs
                .iter()
                .map(|i| parse_input(i))
                .collect::<Result<Vec<_>>>()?
                .into(),
        );
    }
    if let Some(m) = &a.metadata {
        t.insert(
            "metadata".into(),
            serde_json::from_str(m).context("--metadata is not valid JSON")?,
        );
    }
    if let Some(p) = &a.priority {
        t.insert(
            "priority".into(),
            p.parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| p.clone().into()),
        );
    }
    if let Some(v) = a.timeout_ms {
        t.insert("timeout_ms".into(), v.into());
    }
    let mut retry = serde_json::Map::new();
    if let Some(v) = a.max_attempts {
        retry.insert("max_attempts".into(), v.into());
    }
    if let Some(v) = a.backoff_base_ms {
        retry.insert("backoff_base_ms".into(), v.into());
    }
    if !retry.is_empty() {
        t.insert("retry".into(), retry.into());
    }
    if let Some(v) = &a.execution_mode {
        t.insert("execution_mode".into(), v.clone().into());
    }
    if let Some(v) = &a.deadline {
        t.insert("deadline".into(), v.clone().into());
    }
    Ok(Value::Object(t))
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

pub async fn submit(a: SubmitArgs) -> Result<()> {
    let client = a.c.client()?;
    let tasks: Vec<Value> = match &a.file {
        Some(path) => {
            let text = if path == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
            };
            let v: Value =
                serde_json::from_str(&text).with_context(|| format!("{path} is not valid JSON"))?;
            match v {
                Value::Array(items) => items,
                Value::Object(ref o) if o.contains_key("tasks") => {
                    o["tasks"].as_array().cloned().unwrap_or_default()
                }
                other => vec![other],
            }
        }
        None => {
            let t = task_from_flags(&a)?;
            if a.count > 1 {
                if a.task_id.is_some() {
                    bail!("--count cannot be combined with --task-id");
                }
                vec![t; a.count]
            } else {
                vec![t]
            }
        }
    };
    if tasks.is_empty() {
        bail!("no tasks to submit");
    }
    let mut ids = Vec::with_capacity(tasks.len());
    let mut submitted = Vec::new();
    if tasks.len() == 1 {
        // With --wait, the one request also waits for the result.
        let path = if a.wait {
            format!(
                "/api/v1/tasks?wait_ms={}",
                (a.wait_timeout_s * 1000).min(30_000)
            )
        } else {
            "/api/v1/tasks".to_string()
        };
        let v = client.post(&path, &tasks[0]).await?;
        ids.push(v["task_id"].as_str().unwrap_or_default().to_string());
        submitted.push(v);
    } else {
        let pb = (!a.c.json).then(|| progress(tasks.len() as u64, "submitting"));
        for chunk in tasks.chunks(1000) {
            let v = client
                .post("/api/v1/tasks/batch", &json!({"tasks": chunk}))
                .await?;
            for item in v["tasks"].as_array().into_iter().flatten() {
                if let Some(e) = item.get("error") {
                    eprintln!(
                        "task {}: {}: {}",
                        item["task_id"].as_str().unwrap_or("?"),
                        e["code"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    );
                } else {
                    ids.push(item["task_id"].as_str().unwrap_or_default().to_string());
                }
                submitted.push(item.clone());
            }
            if let Some(pb) = &pb {
                pb.inc(chunk.len() as u64);
            }
        }
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
    }
    if !a.wait {
        if a.c.json {
            print_json_one_or_many(submitted)?;
        } else if submitted.len() == 1 {
            print_task(&submitted[0]);
        } else {
            println!("submitted {} tasks", ids.len());
        }
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.wait_timeout_s);
    let pb = (!a.c.json && ids.len() > 1).then(|| progress(ids.len() as u64, "waiting"));
    let mut finished = Vec::with_capacity(ids.len());
    let mut failures = 0;
    // A single task may have finished within its submit's own wait.
    let mut answered = submitted
        .into_iter()
        .filter(|v| ids.len() == 1 && is_terminal(v["status"].as_str().unwrap_or("")));
    for id in &ids {
        let v = loop {
            if let Some(v) = answered.next() {
                break v;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "gave up waiting after {} s; task {id} is still running (see `baton get {id}`)",
                    a.wait_timeout_s
                );
            }
            let wait_ms = left.as_millis().min(30_000);
            let v = client
                .get(&format!("/api/v1/tasks/{}?wait_ms={wait_ms}", enc(id)))
                .await?;
            if is_terminal(v["status"].as_str().unwrap_or("")) {
                break v;
            }
        };
        if v["status"] != "completed" {
            failures += 1;
        }
        if let Some(pb) = &pb {
            pb.inc(1);
        }
        finished.push(v);
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if a.c.json {
        print_json_one_or_many(finished)?;
    } else if finished.len() == 1 {
        print_task(&finished[0]);
    } else {
        println!(
            "{} tasks finished: {} completed, {} did not",
            finished.len(),
            finished.len() - failures,
            failures
        );
    }
    if failures > 0 {
        bail!("{failures} task(s) did not complete");
    }
    Ok(())
}

/// One task as an object, several as an array.
fn print_json_one_or_many(mut items: Vec<Value>) -> Result<()> {
    let v = if items.len() == 1 {
        items.remove(0)
    } else {
        Value::Array(items)
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn is_terminal(status: &str) -> bool {
    matches!(
        status,
        "completed" | "failed" | "cancelled" | "dead_lettered"
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

/// One task, for people.
pub fn print_task(v: &Value) {
    println!("task       {}", s(&v["task_id"]));
    println!("type       {}", s(&v["task_type"]));
    println!("status     {}", s(&v["status"]));
    // A flow task (seed 000's use cases) has steps rather than one priority and attempt.
    if !v["priority"].is_null() {
        println!("priority   {}", s(&v["priority"]));
    }
    if !v["attempt"].is_null() {
        match v["attempt_floor"].as_u64() {
            // Reprocessed or preempted: the earlier attempts no longer count.
            Some(floor) => println!(
                "attempt    {} ({} of {} counted)",
                s(&v["attempt"]),
                v["attempt"].as_u64().unwrap_or(0).saturating_sub(floor),
                s(&v["max_attempts"])
            ),
            None => println!(
                "attempt    {} of {}",
                s(&v["attempt"]),
                s(&v["max_attempts"])
            ),
        }
    }
    println!("created    {}", s(&v["created_at"]));
    if !v["finished_at"].is_null() {
        println!("finished   {}", s(&v["finished_at"]));
    }
    if let Some(m) = v.get("metrics") {
        println!(
            "metrics    total {} ms, {} retries, {} agents",
            s(&m["total_duration_ms"]),
            s(&m["retry_count"]),
            s(&m["agents_used"])
        );
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        println!("error      {}: {}", s(&e["kind"]), s(&e["message"]));
    }
    if let Some(execs) = v["agent_executions"].as_array().filter(|a| !a.is_empty()) {
        let steps = execs.iter().any(|e| e.get("step").is_some());
        let mut t = if steps {
            table(&["STEP", "ATTEMPTS", "AGENT", "STATUS", "DURATION", "ERROR"])
        } else {
            table(&["ATTEMPT", "AGENT", "STATUS", "DURATION", "ERROR"])
        };
        for e in execs {
            let dur = e["duration_ms"]
                .as_u64()
                .map(|d| format!("{d} ms"))
                .unwrap_or_default();
            let mut row = if steps {
                vec![s(&e["step"]), s(&e["attempts"])]
            } else {
                vec![s(&e["attempt"])]
            };
            row.extend([s(&e["agent_id"]), s(&e["status"]), dur, s(&e["error"])]);
            t.add_row(row);
        }
        println!("{t}");
    }
    if !v["output"].is_null() {
        println!(
            "output:\n{}",
            serde_json::to_string_pretty(&v["output"]).unwrap_or_default()
        );
    }
}

#[derive(Args, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// The task to show.
    task_id: String,
    /// Wait up to this many seconds for the task to finish.
    #[arg(long, default_value_t = 0)]
    wait: u64,
}

pub async fn get(a: GetArgs) -> Result<()> {
    let client = a.c.client()?;
    let mut path = format!("/api/v1/tasks/{}", enc(&a.task_id));
    if a.wait > 0 {
        path.push_str(&format!("?wait_ms={}", (a.wait * 1000).min(60_000)));
    }
    let v = client.get(&path).await?;
    if a.c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_task(&v);
    }
    Ok(())
}

#[derive(Args, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// queued, running, retry_wait, completed, failed, cancelled or dead_lettered.
    #[arg(long)]
    status: Option<String>,
    #[command(flatten)]
    page: PageArgs,
}

/// Filters and paging shared by `list` and `dlq list`.
#[derive(Args, Clone)]
pub struct PageArgs {
    /// Only tasks of this type.
    #[arg(long = "type")]
    task_type: Option<String>,
    /// Tasks per page (1..=1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Where the previous page ended (printed after a full page).
    #[arg(long)]
    cursor: Option<String>,
}

impl PageArgs {
    fn query(&self, status: Option<&str>) -> String {
        let mut q = format!("limit={}", self.limit);
        if let Some(v) = status {
            q.push_str(&format!("&status={}", enc(v)));
        }
        if let Some(v) = &self.task_type {
            q.push_str(&format!("&task_type={}", enc(v)));
        }
        if let Some(v) = &self.cursor {
            q.push_str(&format!("&cursor={}", enc(v)));
        }
        q
    }
}

fn print_list(v: &Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let mut t = table(&[
        "TASK ID", "TYPE", "STATUS", "PRIORITY", "ATTEMPT", "CREATED", "ERROR",
    ]);
    let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
    for task in &tasks {
        let err = task
            .get("error")
            .map(|e| s(&e["message"]))
            .unwrap_or_default();
        let err = if err.len() > 60 {
            format!("{}…", &err[..err.floor_char_boundary(60)])
        } else {
            err
        };
        t.add_row(vec![
            s(&task["task_id"]),
            s(&task["task_type"]),
            s(&task["status"]),
            s(&task["priority"]),
            s(&task["attempt"]),
            s(&task["created_at"]),
            err,
        ]);
    }
    if tasks.is_empty() {
        println!("no tasks");
    } else {
        println!("{t}");
    }
    if let Some(c) = v["next_cursor"].as_str() {
        println!("more: --cursor {c}");
    }
    Ok(())
}

pub async fn list(a: ListArgs) -> Result<()> {
    let q = a.page.query(a.status.as_deref());
    let v = a.c.client()?.get(&format!("/api/v1/tasks?{q}")).await?;
    print_list(&v, a.c.json)
}

#[derive(Args, Clone)]
pub struct CancelArgs {
    #[command(flatten)]
    c: ClientArgs,
    task_id: String,
    #[arg(long)]
    reason: Option<String>,
}

pub async fn cancel(a: CancelArgs) -> Result<()> {
    let client = a.c.client()?;
    let body = a
        .reason
        .as_ref()
        .map(|r| json!({"reason": r}))
        .unwrap_or_else(|| json!({}));
    let v = client
        .post(&format!("/api/v1/tasks/{}/cancel", enc(&a.task_id)), &body)
        .await?;
    if a.c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("task {} is {}", s(&v["task_id"]), s(&v["status"]));
    }
    Ok(())
}

#[derive(Subcommand, Clone)]
pub enum DlqCmd {
    /// List dead-lettered tasks.
    List {
        #[command(flatten)]
        c: ClientArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Send a dead-lettered task back to its queue with a fresh attempt budget.
    Reprocess {
        #[command(flatten)]
        c: ClientArgs,
        task_id: String,
    },
}

pub async fn dlq(cmd: DlqCmd) -> Result<()> {
    match cmd {
        DlqCmd::List { c, page } => {
            let v = c
                .client()?
                .get(&format!("/api/v1/dlq?{}", page.query(None)))
                .await?;
            print_list(&v, c.json)
        }
        DlqCmd::Reprocess { c, task_id } => {
            let v = c
                .client()?
                .post(
                    &format!("/api/v1/dlq/{}/reprocess", enc(&task_id)),
                    &json!({}),
                )
                .await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("task {} is {} again", s(&v["task_id"]), s(&v["status"]));
            }
            Ok(())
        }
    }
}

/// `baton agents`: the connected agents, or with any filter seed 004's
/// discovery (capabilities, minimum health, version range, location).
#[derive(clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only agents with this capability (task type); repeatable.
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
    /// Only agents at least this healthy (0..1).
    #[arg(long)]
    pub min_health: Option<f64>,
    /// A semver range the agent's version must match, e.g. ">=1.2, <2".
    #[arg(long = "version-req")]
    pub version: Option<String>,
    /// Agents in this location first.
    #[arg(long)]
    pub location: Option<String>,
    /// Only agents with this tag; repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// At most this many (discovery only).
    #[arg(long)]
    pub limit: Option<usize>,
}

pub async fn agents(a: AgentsArgs) -> Result<()> {
    let discovering = !a.capabilities.is_empty()
        || a.min_health.is_some()
        || a.version.is_some()
        || a.location.is_some()
        || !a.tags.is_empty()
        || a.limit.is_some();
    let c = &a.client;
    let v = if discovering {
        let mut q = Vec::new();
        if !a.capabilities.is_empty() {
            q.push(format!("capabilities={}", enc(&a.capabilities.join(","))));
        }
        if let Some(h) = a.min_health {
            q.push(format!("min_health={h}"));
        }
        if let Some(v) = &a.version {
            q.push(format!("version={}", enc(v)));
        }
        if let Some(l) = &a.location {
            q.push(format!("location={}", enc(l)));
        }
        if !a.tags.is_empty() {
            q.push(format!("tags={}", enc(&a.tags.join(","))));
        }
        if let Some(n) = a.limit {
            q.push(format!("limit={n}"));
        }
        let found = c
            .client()?
            .get(&format!("/api/v1/agents/discover?{}", q.join("&")))
            .await?;
        // The same rows as the plain listing, in discovery's order.
        let agents: Vec<Value> = found["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d["agent"].clone())
            .collect();
        if c.json {
            println!("{}", serde_json::to_string_pretty(&found)?);
            return Ok(());
        }
        serde_json::json!({ "agents": agents })
    } else {
        c.client()?.get("/api/v1/agents").await?
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let agents = v["agents"].as_array().cloned().unwrap_or_default();
    if agents.is_empty() {
        println!(
            "{}",
            if discovering {
                "no agent matches"
            } else {
                "no agents connected"
            }
        );
        return Ok(());
    }
    let mut t = table(&[
        "AGENT",
        "TYPES",
        "IN FLIGHT",
        "VERSION",
        "HEALTH",
        "BREAKER",
        "LOCATION",
        "COMPLETED",
        "FAILED",
        "STATE",
    ]);
    for a in &agents {
        let types = a["task_types"]
            .as_array()
            .map(|t| t.iter().map(s).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let state = if a["draining"] == true {
            "draining"
        } else {
            "active"
        };
        t.add_row(vec![
            s(&a["agent_id"]),
            types,
            format!("{}/{}", s(&a["in_flight"]), s(&a["max_concurrent"])),
            s(&a["version"]),
            a["health"]
                .as_f64()
                .map_or("-".into(), |h| format!("{h:.2}")),
            s(&a["breaker"]),
            a["location"].as_str().unwrap_or("-").to_string(),
            s(&a["completed"]),
            s(&a["failed"]),
            state.into(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `baton scheduler`: per queue (path, strategy, running, rate-limit tokens,
/// held tasks and why), per key and per agent, and load shedding.
pub async fn scheduler(c: ClientArgs) -> Result<()> {
    let v = c.client()?.get("/api/v1/scheduler").await?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let shed = &v["shedding"];
    println!(
        "load: {} tasks held of {} ({:.0}%), shedding from 90% lowest priorities first; preemption {}",
        s(&shed["held"]),
        if shed["capacity"] == 0 { "unlimited".to_string() } else { s(&shed["capacity"]) },
        shed["utilization"].as_f64().unwrap_or(0.0) * 100.0,
        if v["preemption"] == true { "on" } else { "off" },
    );
    let mut t = table(&[
        "QUEUE",
        "PATH",
        "STRATEGY",
        "AGENTS",
        "RUNNING",
        "RATE TOKENS",
        "HELD",
    ]);
    for q in v["queues"].as_array().into_iter().flatten() {
        let rate = match q["rate_limit"].as_object() {
            Some(r) => format!(
                "{:.1} ({}/s, burst {})",
                r["tokens"].as_f64().unwrap_or(0.0),
                s(&r["rate_per_s"]),
                s(&r["burst"])
            ),
            None => "-".into(),
        };
        let held = q["held"].as_array().map_or(0, Vec::len);
        t.add_row(vec![
            s(&q["task_type"]),
            s(&q["path"]),
            s(&q["strategy"]),
            s(&q["agents"]),
            s(&q["running"]),
            rate,
            held.to_string(),
        ]);
    }
    println!("{t}");
    for q in v["queues"].as_array().into_iter().flatten() {
        for h in q["held"].as_array().into_iter().flatten() {
            println!("  held {}: {}", s(&h["task_id"]), s(&h["reason"]));
        }
    }
    let keys = v["keys"]["concurrency"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !keys.is_empty() {
        let mut t = table(&["CONCURRENCY KEY", "RUNNING", "LIMIT"]);
        for k in &keys {
            t.add_row(vec![s(&k["key"]), s(&k["running"]), s(&k["limit"])]);
        }
        println!("{t}");
    }
    let rated = v["keys"]["rate_limited"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !rated.is_empty() {
        let mut t = table(&["RATE KEY", "TOKENS"]);
        for k in &rated {
            t.add_row(vec![
                s(&k["key"]),
                format!("{:.1}", k["tokens"].as_f64().unwrap_or(0.0)),
            ]);
        }
        println!("{t}");
    }
    let mut t = table(&["AGENT", "LOAD", "HEALTH", "BREAKER"]);
    for a in v["agents"].as_array().into_iter().flatten() {
        t.add_row(vec![
            s(&a["agent_id"]),
            format!("{}/{}", s(&a["in_flight"]), s(&a["max_concurrent"])),
            a["health"]
                .as_f64()
                .map_or("-".into(), |h| format!("{h:.2}")),
            s(&a["breaker"]),
        ]);
    }
    println!("{t}");
    for b in v["budgets"].as_array().into_iter().flatten() {
        println!(
            "budget {}: {:.2} spent in the last hour of {}",
            s(&b["agent_type"]),
            b["spent_last_hour"].as_f64().unwrap_or(0.0),
            s(&b["limit_per_hour"])
        );
    }
    Ok(())
}

/// `baton sla`: the SLA view (latency percentiles, throughput, error and success
/// rates over the server's sliding window) against its targets. Exits non-zero
/// when a target is breached, so scripts can gate on it.
pub async fn sla(c: ClientArgs) -> Result<()> {
    let v = c.client()?.get("/api/v1/sla").await?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let values = &v["values"];
        let num = |x: &Value, digits: usize| match x.as_f64() {
            Some(f) => format!("{f:.digits$}"),
            None => "-".into(),
        };
        println!(
            "window {}s: {} finished ({} succeeded, {} errors, {} cancelled), {} tasks/s",
            num(&v["window_seconds"], 0),
            s(&values["finished"]),
            s(&values["succeeded"]),
            s(&values["errors"]),
            s(&values["cancelled"]),
            num(&values["throughput_per_s"], 2),
        );
        println!(
            "latency p50 {} ms, p95 {} ms, p99 {} ms",
            num(&values["p50_ms"], 0),
            num(&values["p95_ms"], 0),
            num(&values["p99_ms"], 0)
        );
        let mut t = table(&["CHECK", "VALUE", "TARGET", "STATUS"]);
        for check in v["checks"].as_array().into_iter().flatten() {
            let value = match check["value"].as_f64() {
                Some(f) if check["name"] == "p95_latency_ms" => format!("{f:.0}"),
                Some(f) => format!("{f:.4}"),
                None => "-".into(),
            };
            t.add_row(vec![
                s(&check["name"]),
                value,
                s(&check["target"]),
                s(&check["status"]).to_ascii_uppercase(),
            ]);
        }
        println!("{t}");
    }
    if v["compliant"] == false {
        bail!("the SLA is breached");
    }
    Ok(())
}
