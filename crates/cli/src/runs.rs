//! `baton flows …` and `baton runs …`: the flow registry and workflow runs over the
//! REST API. Summaries and step tables for people, `--json` for scripts; `runs
//! watch` (and `runs start --wait`) follow the run's event stream as it happens.

use crate::client::{enc, ApiFailure, Client};
use crate::output::ClientArgs;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

#[derive(Subcommand, Clone)]
pub enum FlowsCmd {
    /// Register a flow definition from a JSON or YAML file ("-" reads stdin).
    Register {
        #[command(flatten)]
        c: ClientArgs,
        /// {"name", "version"?, "definition"} or a definition with its name at the top.
        file: String,
        /// The flow's name (else the file's "name").
        #[arg(long)]
        name: Option<String>,
        /// Register as exactly this version [default: the next one].
        #[arg(long)]
        version: Option<u32>,
    },
    /// List every version of every registered flow.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show a flow's definition.
    Get {
        #[command(flatten)]
        c: ClientArgs,
        name: String,
        /// [default: the latest]
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Subcommand, Clone)]
pub enum RunsCmd {
    /// Start a run from a registered flow or a definition file.
    Start(StartArgs),
    /// Show a run: status, progress and a table of its steps.
    Get {
        #[command(flatten)]
        c: ClientArgs,
        run_id: String,
        /// Include each step's output.
        #[arg(long)]
        outputs: bool,
    },
    /// List runs, newest first.
    List {
        #[command(flatten)]
        c: ClientArgs,
        /// running, paused, compensating, completed, failed, cancelled, compensated or compensation_failed.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this registered flow.
        #[arg(long)]
        flow: Option<String>,
        /// Runs per page (1..=1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Where the previous page ended (printed after a full page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a run: running steps are stopped, no new ones start.
    Cancel(RunRefArgs),
    /// Pause a run: no new steps start; running ones finish.
    Pause(RunRefArgs),
    /// Resume a paused run.
    Resume(RunRefArgs),
    /// Run the failed steps of a finished run again (completed ones are kept).
    Retry(RunRefArgs),
    /// Follow a run's events until it ends, with its progress.
    Watch(RunRefArgs),
}

#[derive(Args, Clone)]
pub struct RunRefArgs {
    #[command(flatten)]
    c: ClientArgs,
    run_id: String,
}

#[derive(Args, Clone)]
pub struct StartArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// A registered flow's name.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    flow: Option<String>,
    /// The flow's version [default: the latest].
    #[arg(long, requires = "flow")]
    version: Option<u32>,
    /// An inline definition (JSON or YAML; seed 002's workflow document works too); "-" reads stdin.
    #[arg(long, short)]
    file: Option<String>,
    /// The run's input as JSON.
    #[arg(long, short)]
    input: Option<String>,
    /// The run's id [default: generated; with --file, the document's workflow_id].
    #[arg(long)]
    run_id: Option<String>,
    /// 1..=10 or critical, high, normal, low, background.
    #[arg(long, short)]
    priority: Option<String>,
    /// fail_fast or continue [default: the definition's].
    #[arg(long)]
    on_failure: Option<String>,
    /// Follow the run until it ends, then show it; exits non-zero unless it completed.
    #[arg(long, short)]
    wait: bool,
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON or YAML document from a file or stdin ("-"). JSON is tried first: it is
/// YAML too, but its errors read better as JSON errors.
fn read_doc(path: &str) -> Result<Value> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
    };
    parse_doc(&text, path)
}

fn parse_doc(text: &str, path: &str) -> Result<Value> {
    let yaml_name = path.ends_with(".yaml") || path.ends_with(".yml");
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(json_err) => match serde_norway::from_str::<Value>(text) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => bail!("{path} must hold an object (JSON or YAML)"),
            Err(yaml_err) if yaml_name => bail!("{path} is not valid YAML: {yaml_err}"),
            Err(_) => bail!("{path} is not valid JSON (nor YAML): {json_err}"),
        },
    }
}

/// Milliseconds for people: 850 ms, 12.3 s, 4m05s.
fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn flow_label(flow: &Value) -> String {
    match flow {
        Value::Object(f) => format!(
            "{} v{}",
            s(f.get("name").unwrap_or(&Value::Null)),
            s(f.get("version").unwrap_or(&Value::Null))
        ),
        Value::String(name) => name.clone(),
        _ => "(inline definition)".into(),
    }
}

/// One run for people: a summary, then a table of its steps.
pub fn print_run(v: &Value, with_outputs: bool) {
    let p = &v["progress"];
    println!("run        {}", s(&v["run_id"]));
    println!("flow       {}", flow_label(&v["flow"]));
    println!("status     {}", s(&v["status"]));
    println!(
        "progress   {}/{} steps ({}%)",
        s(&p["steps_done"]),
        s(&p["steps_total"]),
        s(&p["percent"])
    );
    if v["generation"].as_u64().unwrap_or(0) > 0 {
        println!("retried    {} time(s)", s(&v["generation"]));
    }
    println!("created    {}", s(&v["created_at"]));
    if !v["finished_at"].is_null() {
        println!("finished   {}", s(&v["finished_at"]));
    }
    if let Some(cp) = v["critical_path"].as_array().filter(|c| !c.is_empty()) {
        let names: Vec<String> = cp.iter().map(s).collect();
        println!("critical   {}", names.join(" -> "));
    }
    if !v["error"].is_null() {
        println!("error      {}", s(&v["error"]));
    }
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    if !steps.is_empty() {
        let mut t = table(&[
            "STEP", "TYPE", "STATUS", "ATTEMPTS", "AGENT", "DURATION", "ERROR",
        ]);
        for st in &steps {
            let agents: Vec<String> = st["agents"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            let mut agents_text = agents.first().cloned().unwrap_or_default();
            if agents.len() > 1 {
                agents_text.push_str(&format!(" +{}", agents.len() - 1));
            }
            let mut status = s(&st["status"]);
            if let Some(c) = st.get("compensation") {
                status.push_str(&format!(" (undo {})", s(&c["status"])));
            }
            let mut error = s(&st["error"]);
            if error.is_empty() {
                error = s(&st["waiting_for"]);
            }
            if error.chars().count() > 60 {
                error = format!("{}…", error.chars().take(60).collect::<String>());
            }
            t.add_row(vec![
                s(&st["id"]),
                s(&st["task_type"]),
                status,
                s(&st["attempts"]),
                agents_text,
                st["duration_ms"].as_u64().map(duration).unwrap_or_default(),
                error,
            ]);
        }
        println!("{t}");
    }
    if with_outputs {
        for st in &steps {
            if !st["output"].is_null() {
                println!(
                    "output of {}:\n{}",
                    s(&st["id"]),
                    serde_json::to_string_pretty(&st["output"]).unwrap_or_default()
                );
            }
        }
    }
}

fn print_flow(v: &Value) -> Result<()> {
    println!("flow       {}", s(&v["name"]));
    println!("version    {}", s(&v["version"]));
    println!("created    {}", s(&v["created_at"]));
    let def = &v["definition"];
    if let Some(d) = def.get("description") {
        println!("about      {}", s(d));
    }
    let steps = def
        .get("steps")
        .or_else(|| def.get("tasks"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut t = table(&["STEP", "TYPE", "DEPENDS ON"]);
    for st in &steps {
        let deps: Vec<String> = st["dependencies"]
            .as_array()
            .map(|d| d.iter().map(s).collect())
            .unwrap_or_default();
        t.add_row(vec![
            s(st.get("id")
                .or_else(|| st.get("task_id"))
                .unwrap_or(&Value::Null)),
            s(&st["task_type"]),
            deps.join(", "),
        ]);
    }
    println!("{t}");
    println!(
        "definition:\n{}",
        serde_json::to_string_pretty(def).unwrap_or_default()
    );
    Ok(())
}

pub async fn flows(cmd: FlowsCmd) -> Result<()> {
    match cmd {
        FlowsCmd::Register {
            c,
            file,
            name,
            version,
        } => {
            let mut doc = read_doc(&file)?;
            let Some(obj) = doc.as_object_mut() else {
                bail!("{file} must hold an object");
            };
            if !obj.contains_key("definition") {
                // A bare definition: its name (and version) stay at the top.
                doc = json!({
                    "name": obj.get("name").cloned().unwrap_or(Value::Null),
                    "version": obj.remove("version").unwrap_or(Value::Null),
                    "definition": Value::Object(obj.clone()),
                });
            }
            if let Some(n) = name {
                doc["name"] = n.into();
            }
            if let Some(v) = version {
                doc["version"] = v.into();
            }
            let v = c.client()?.post("/api/v1/flows", &doc).await?;
            if c.json {
                print_json(&v)
            } else {
                println!("flow {} version {}", s(&v["name"]), s(&v["version"]));
                Ok(())
            }
        }
        FlowsCmd::List { c } => {
            let v = c.client()?.get("/api/v1/flows").await?;
            if c.json {
                return print_json(&v);
            }
            let flows = v["flows"].as_array().cloned().unwrap_or_default();
            if flows.is_empty() {
                println!("no flows");
                return Ok(());
            }
            let mut t = table(&["FLOW", "VERSION", "STEPS", "CREATED"]);
            for f in &flows {
                let def = &f["definition"];
                let n = def
                    .get("steps")
                    .or_else(|| def.get("tasks"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                t.add_row(vec![
                    s(&f["name"]),
                    s(&f["version"]),
                    n.to_string(),
                    s(&f["created_at"]),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        FlowsCmd::Get { c, name, version } => {
            let mut path = format!("/api/v1/flows/{}", enc(&name));
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let v = c.client()?.get(&path).await?;
            if c.json {
                print_json(&v)
            } else {
                print_flow(&v)
            }
        }
    }
}

fn start_body(a: &StartArgs) -> Result<Value> {
    let mut body = match (&a.flow, &a.file) {
        (Some(flow), None) => {
            let mut b = json!({ "flow": flow });
            if let Some(v) = a.version {
                b["version"] = v.into();
            }
            b
        }
        (None, Some(file)) => {
            let doc = read_doc(file)?;
            if doc.get("steps").is_some() || doc.get("tasks").is_some() {
                json!({ "definition": doc })
            } else if doc.get("definition").is_some() {
                doc
            } else {
                bail!("{file} holds no definition: give steps (or seed 002's tasks)");
            }
        }
        _ => bail!("give --flow NAME or --file DEFINITION"),
    };
    // Seed 002's document names its run.
    if a.run_id.is_none() {
        if let Some(id) = body["definition"].get("workflow_id").cloned() {
            body["run_id"] = id;
        }
    }
    if let Some(input) = &a.input {
        body["input"] = serde_json::from_str(input).context("--input is not valid JSON")?;
    }
    if let Some(id) = &a.run_id {
        body["run_id"] = id.clone().into();
    }
    if let Some(p) = &a.priority {
        body["priority"] = p
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| p.clone().into());
    }
    if let Some(f) = &a.on_failure {
        body["on_failure"] = f.clone().into();
    }
    Ok(body)
}

pub async fn runs(cmd: RunsCmd) -> Result<()> {
    match cmd {
        RunsCmd::Start(a) => {
            let client = a.c.client()?;
            let v = client.post("/api/v1/runs", &start_body(&a)?).await?;
            let run_id = s(&v["run_id"]);
            if a.wait {
                return watch(&client, &run_id, a.c.json).await;
            }
            if a.c.json {
                print_json(&v)
            } else {
                print_run(&v, false);
                Ok(())
            }
        }
        RunsCmd::Get { c, run_id, outputs } => {
            let mut path = format!("/api/v1/runs/{}", enc(&run_id));
            if outputs {
                path.push_str("?include_outputs=true");
            }
            let v = c.client()?.get(&path).await?;
            if c.json {
                print_json(&v)
            } else {
                print_run(&v, outputs);
                Ok(())
            }
        }
        RunsCmd::List {
            c,
            status,
            flow,
            limit,
            cursor,
        } => {
            let mut q = format!("limit={limit}");
            for (k, v) in [("status", status), ("flow", flow), ("cursor", cursor)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(&v)));
                }
            }
            let v = c.client()?.get(&format!("/api/v1/runs?{q}")).await?;
            if c.json {
                return print_json(&v);
            }
            let runs = v["runs"].as_array().cloned().unwrap_or_default();
            if runs.is_empty() {
                println!("no runs");
            } else {
                let mut t = table(&["RUN ID", "FLOW", "STATUS", "STEPS", "CREATED", "ERROR"]);
                for r in &runs {
                    t.add_row(vec![
                        s(&r["run_id"]),
                        s(&r["flow"]),
                        s(&r["status"]),
                        format!("{}/{}", s(&r["steps_done"]), s(&r["steps_total"])),
                        s(&r["created_at"]),
                        s(&r["error"]),
                    ]);
                }
                println!("{t}");
            }
            if let Some(c) = v["next_cursor"].as_str() {
                println!("more: --cursor {c}");
            }
            Ok(())
        }
        RunsCmd::Cancel(a) => command(a, "cancel").await,
        RunsCmd::Pause(a) => command(a, "pause").await,
        RunsCmd::Resume(a) => command(a, "resume").await,
        RunsCmd::Retry(a) => command(a, "retry").await,
        RunsCmd::Watch(a) => watch(&a.c.client()?, &a.run_id, a.c.json).await,
    }
}

async fn command(a: RunRefArgs, verb: &str) -> Result<()> {
    let v =
        a.c.client()?
            .post(
                &format!("/api/v1/runs/{}/{verb}", enc(&a.run_id)),
                &json!({}),
            )
            .await?;
    if a.c.json {
        print_json(&v)
    } else {
        println!(
            "run {} is {} ({}/{} steps done)",
            s(&v["run_id"]),
            s(&v["status"]),
            s(&v["progress"]["steps_done"]),
            s(&v["progress"]["steps_total"])
        );
        Ok(())
    }
}

/// A server-sent event: its name and data.
#[derive(Debug, PartialEq)]
struct Sse {
    event: String,
    data: String,
}

/// Splits complete events off the front of `buf` (the rest waits for more bytes).
/// Carriage returns are dropped as bytes arrive (see [`push_bytes`]).
fn take_events(buf: &mut Vec<u8>) -> Vec<Sse> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let block: Vec<u8> = buf.drain(..end + 2).collect();
        let block = String::from_utf8_lossy(&block);
        let (mut event, mut data) = (String::from("message"), Vec::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            out.push(Sse {
                event,
                data: data.join("\n"),
            });
        }
    }
    out
}

fn push_bytes(buf: &mut Vec<u8>, chunk: &[u8]) {
    buf.extend(chunk.iter().copied().filter(|&b| b != b'\r'));
}

/// A run event as a line for people.
fn event_line(e: &Value) -> String {
    let at = e["at_ms"]
        .as_u64()
        .map(|ms| {
            let secs = ms / 1000;
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                (secs / 3600) % 24,
                (secs / 60) % 60,
                secs % 60,
                ms % 1000
            )
        })
        .unwrap_or_default();
    let kind = s(&e["kind"]);
    let what = match kind.strip_prefix("step_") {
        Some(verb) => format!("step {} {verb}", s(&e["step"])),
        None => match kind.strip_prefix("run_") {
            Some(verb) => format!("run {verb}"),
            None => {
                let mut w = kind.replace('_', " ");
                if !e["step"].is_null() {
                    w.push_str(&format!(": {}", s(&e["step"])));
                }
                w
            }
        },
    };
    match e["message"].as_str() {
        Some(m) if !m.is_empty() => format!("{at} UTC  {what}: {m}"),
        _ => format!("{at} UTC  {what}"),
    }
}

/// Steps done and in all, from a run view.
fn done_steps(run: &Value) -> (HashSet<String>, u64) {
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    let done = steps
        .iter()
        .filter(|st| !matches!(st["status"].as_str(), Some("pending" | "running")))
        .map(|st| s(&st["id"]))
        .collect();
    (done, steps.len() as u64)
}

/// Follows a run's events until it ends: a line per event and a progress bar for
/// people, one JSON object per line for scripts (the events, then the final run).
/// Reconnects when the stream breaks. Fails unless the run completed.
async fn watch(client: &Client, run_id: &str, json_lines: bool) -> Result<()> {
    let path = format!("/api/v1/runs/{}", enc(run_id));
    let run = client.get(&path).await?;
    let (mut done, total) = done_steps(&run);
    let pb = if json_lines {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} steps ({elapsed})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(format!("run {run_id}"));
        pb.set_position(done.len() as u64);
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    };
    let say = |line: String| {
        if pb.is_hidden() {
            println!("{line}");
        } else {
            pb.println(line);
        }
    };
    // Events already shown, so that a reconnect (which replays them) shows no line twice.
    let mut shown = 0usize;
    let mut failures = 0u32;
    let end = loop {
        let mut resp = match client.stream(&format!("{path}/events")).await {
            Ok(r) => r,
            Err(e) if e.downcast_ref::<ApiFailure>().is_some() => return Err(e),
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Err(e.context("lost the run's event stream"));
                }
                tokio::time::sleep(Duration::from_millis(500 * failures as u64)).await;
                continue;
            }
        };
        let mut buf = Vec::new();
        let mut seen = 0usize;
        let mut ended = None;
        'stream: loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break 'stream,
                Err(_) => break 'stream,
            };
            push_bytes(&mut buf, &chunk);
            for ev in take_events(&mut buf) {
                match ev.event.as_str() {
                    "run_event" => {
                        seen += 1;
                        if seen <= shown {
                            continue;
                        }
                        shown = seen;
                        let e: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                        if json_lines {
                            println!("{e}");
                        } else {
                            say(event_line(&e));
                        }
                        let kind = e["kind"].as_str().unwrap_or_default();
                        if kind == "run_retried" {
                            // Failed steps run again: count from the run itself.
                            if let Ok(run) = client.get(&path).await {
                                done = done_steps(&run).0;
                            }
                        } else if matches!(
                            kind,
                            "step_completed" | "step_failed" | "step_skipped" | "step_cancelled"
                        ) {
                            done.insert(s(&e["step"]));
                        }
                        pb.set_position(done.len() as u64);
                    }
                    "lagged" => say(format!("(fell behind: {} events were not shown)", ev.data)),
                    "end" => {
                        ended = Some(ev.data);
                        break 'stream;
                    }
                    _ => {}
                }
            }
        }
        if let Some(status) = ended {
            break status;
        }
        failures += 1;
        if failures > 5 {
            bail!("lost the event stream of run {run_id}");
        }
        tokio::time::sleep(Duration::from_millis(500 * failures as u64)).await;
    };
    pb.finish_and_clear();
    let run = client.get(&format!("{path}?include_outputs=true")).await?;
    if json_lines {
        println!("{run}");
    } else {
        print_run(&run, false);
    }
    let status = run["status"].as_str().unwrap_or(&end).to_string();
    if status != "completed" {
        return Err(anyhow!("run {run_id} ended {status}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_split_across_chunks() {
        let mut buf = Vec::new();
        // "é" split between two chunks must survive.
        let text = "event: run_event\ndata: {\"kind\":\"é\"}\n\nevent: en".as_bytes();
        let cut = text.iter().position(|&b| b >= 0x80).unwrap() + 1;
        push_bytes(&mut buf, &text[..cut]);
        assert!(take_events(&mut buf).is_empty());
        push_bytes(&mut buf, &text[cut..]);
        let got = take_events(&mut buf);
        assert_eq!(
            got,
            vec![Sse {
                event: "run_event".into(),
                data: "{\"kind\":\"é\"}".into()
            }]
        );
        assert_eq!(buf, b"event: en");
        push_bytes(&mut buf, b"d\r\ndata: completed\r\n\r\n:keep-alive\n\n");
        let got = take_events(&mut buf);
        assert_eq!(
            got,
            vec![Sse {
                event: "end".into(),
                data: "completed".into()
            }]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn documents_are_json_or_yaml() {
        let v = parse_doc(
            "name: f\nsteps:\n  - id: a\n    task_type: echo\n",
            "f.yaml",
        )
        .unwrap();
        assert_eq!(v["steps"][0]["id"], "a");
        let v = parse_doc(r#"{"steps": []}"#, "f.json").unwrap();
        assert_eq!(v["steps"], json!([]));
        assert!(parse_doc("{not json", "f.json").is_err());
        assert!(parse_doc("- a\n- b\n", "f.yaml").is_err());
    }

    #[test]
    fn events_read_as_lines() {
        let e =
            json!({"at_ms": 3_723_004u64, "kind": "step_failed", "step": "b", "message": "boom"});
        assert_eq!(event_line(&e), "01:02:03.004 UTC  step b failed: boom");
        let e = json!({"at_ms": 0, "kind": "saga_compensated_step", "step": "a"});
        assert_eq!(event_line(&e), "00:00:00.000 UTC  saga compensated step: a");
    }
}
