//! `baton watch TASK_ID`: follows a task's event stream
//! (`GET /api/v1/tasks/{task_id}/events`) and prints each event as it arrives:
//! lifecycle changes, what the agents emit (alerts, LLM tokens written inline, ...),
//! and the task when it ends. `--json` prints one JSON object per line instead.

use crate::client::enc;
use crate::output::{print_task, ClientArgs};
use anyhow::{bail, Result};
use baton_agents::sse::{SseEvent, SseParser};
use clap::Args;
use serde_json::{json, Value};
use std::io::Write;

#[derive(Args, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    c: ClientArgs,
    /// The task to follow (a plain task, or a report_generation / real_time_monitoring task).
    task_id: String,
}

pub async fn watch(a: WatchArgs) -> Result<()> {
    let client = a.c.client()?;
    let mut response = client
        .stream(&format!("/api/v1/tasks/{}/events", enc(&a.task_id)))
        .await?;
    let mut parser = SseParser::default();
    let mut printer = Printer::new(a.c.json);
    loop {
        let chunk = response.chunk().await?;
        let events = match &chunk {
            Some(bytes) => parser.push(bytes),
            None => parser.finish(),
        };
        for event in events {
            if let Some(task) = printer.print(&event)? {
                let status = task["status"].as_str().unwrap_or_default().to_string();
                if status != "completed" {
                    bail!("task {} ended {status}", a.task_id);
                }
                return Ok(());
            }
        }
        if chunk.is_none() {
            bail!(
                "the event stream of task {} closed before the task ended",
                a.task_id
            );
        }
    }
}

/// Prints events; tokens are written inline, so an LLM answer reads as text.
struct Printer {
    json: bool,
    in_tokens: bool,
}

impl Printer {
    fn new(json: bool) -> Self {
        Self {
            json,
            in_tokens: false,
        }
    }

    /// Prints one event; the task when it is the final one.
    fn print(&mut self, event: &SseEvent) -> Result<Option<Value>> {
        let name = event.event.as_deref().unwrap_or("message");
        let data: Value =
            serde_json::from_str(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
        let mut out = std::io::stdout().lock();
        if self.json {
            let mut line = json!({"event": name, "data": data});
            if let Some(id) = &event.id {
                line["id"] = Value::String(id.clone());
            }
            writeln!(out, "{line}")?;
            return Ok((name == "end").then_some(data));
        }
        if name == "token" {
            write!(out, "{}", data.as_str().unwrap_or_default())?;
            out.flush()?;
            self.in_tokens = true;
            return Ok(None);
        }
        if self.in_tokens {
            writeln!(out)?;
            self.in_tokens = false;
        }
        if name == "end" {
            drop(out);
            println!();
            print_task(&data);
            return Ok(Some(data));
        }
        writeln!(out, "{}", describe(name, &data))?;
        Ok(None)
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One line for people.
fn describe(name: &str, data: &Value) -> String {
    match name {
        // A task's lifecycle event, or a run's (for a flow task).
        "status" if data.get("to").is_some() => {
            let mut line = format!(
                "{:<10} {} {} -> {}",
                name,
                time_of(&text(&data["at"])),
                text(&data["kind"]),
                text(&data["to"])
            );
            if let Some(n) = data["attempt"].as_u64().filter(|n| *n > 0) {
                line.push_str(&format!(", attempt {n}"));
            }
            if let Some(agent) = data["agent_id"].as_str() {
                line.push_str(&format!(" on {agent}"));
            }
            if let Some(m) = data["message"].as_str() {
                line.push_str(&format!(": {m}"));
            }
            line
        }
        "status" => {
            let mut line = format!("{:<10} {}", name, text(&data["kind"]));
            if let Some(step) = data["step"].as_str() {
                line.push_str(&format!(" {step}"));
            }
            if let Some(m) = data["message"].as_str() {
                line.push_str(&format!(": {m}"));
            }
            line
        }
        "alert" => format!(
            "{:<10} [{}] {}: {}{}",
            name,
            text(&data["severity"]),
            text(&data["type"]),
            text(&data["message"]),
            data["frame_index"]
                .as_u64()
                .map(|f| format!(" (frame {f})"))
                .unwrap_or_default()
        ),
        "detection" => format!(
            "{:<10} frame {}: {} object(s)",
            name,
            text(&data["frame_index"]),
            text(&data["count"])
        ),
        "lagged" => format!(
            "{:<10} {} event(s) skipped: this client fell behind",
            name,
            text(data)
        ),
        _ => format!("{name:<10} {}", text(data)),
    }
}

/// `12:00:01.234` from an RFC 3339 time, or the text itself.
fn time_of(rfc3339: &str) -> &str {
    rfc3339
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or(rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_for_people() {
        assert_eq!(
            describe(
                "status",
                &json!({"at": "2025-01-05T00:00:01.234Z", "kind": "started", "from": "queued",
                        "to": "running", "attempt": 1, "agent_id": "echo-1"})
            ),
            "status     00:00:01.234 started -> running, attempt 1 on echo-1"
        );
        assert_eq!(
            describe(
                "status",
                &json!({"at_ms": 1, "kind": "step_started", "step": "alerting"})
            ),
            "status     step_started alerting"
        );
        assert_eq!(
            describe(
                "alert",
                &json!({"severity": "high", "type": "crowd_detected",
                        "message": "Person count (5) exceeds threshold (3)", "frame_index": 3})
            ),
            "alert      [high] crowd_detected: Person count (5) exceeds threshold (3) (frame 3)"
        );
        assert_eq!(
            describe("progress", &json!({"done": 3})),
            "progress   {\"done\":3}"
        );
    }
}
