//! REST for workflows: the flow registry (`/api/v1/flows`) and runs
//! (`/api/v1/runs`), with a live event stream per run (server-sent events).
//! Bodies are JSON, or YAML when the request says `Content-Type: application/yaml`.

use crate::app::App;
use crate::rest::ApiError;
use crate::view::{rfc3339 as millis_to_rfc3339, run_view};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_core::workflow::def::OnFailure;
use baton_core::workflow::RunCommand;
use baton_core::{Error, ExecutionMode, Priority};
use baton_store::RunFilter;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type AppState = Arc<App>;

/// A JSON or YAML body, as the content type says.
pub struct DocBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for DocBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let yaml = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("yaml"));
        let bytes = crate::rest::read_body(req, state, "a JSON (or YAML) object").await?;
        if yaml {
            serde_norway::from_slice::<Value>(&bytes)
                .map(DocBody)
                .map_err(|e| ApiError(Error::invalid(format!("malformed yaml: {e}"))))
        } else {
            serde_json::from_slice(&bytes)
                .map(DocBody)
                .map_err(|e| ApiError(Error::invalid(format!("malformed json: {e}"))))
        }
    }
}

fn flow_view(f: &baton_store::FlowRecord) -> Value {
    json!({
        "name": f.name,
        "version": f.version,
        "created_at": millis_to_rfc3339(f.created_at_ms),
        "definition": f.definition,
    })
}

/// `POST /api/v1/flows`: `{"name", "version"?, "definition"}`, or a definition with
/// its `name` at the top.
async fn register_flow(
    State(app): State<AppState>,
    DocBody(body): DocBody,
) -> Result<Response, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| Error::invalid("send an object: {name, version?, definition}"))?;
    let (name, version, definition) = if let Some(def) = obj.get("definition") {
        for k in obj.keys() {
            if !["name", "version", "definition"].contains(&k.as_str()) {
                return Err(Error::invalid(format!(
                    "{k} is not a known field (known: name, version, definition)"
                ))
                .with_field(k)
                .into());
            }
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .or_else(|| def.get("name").and_then(Value::as_str));
        (
            name.map(str::to_string),
            obj.get("version").cloned(),
            def.clone(),
        )
    } else {
        let name = obj.get("name").and_then(Value::as_str).map(str::to_string);
        let mut def = body.clone();
        let version = def.as_object_mut().and_then(|m| m.remove("version"));
        (name, version, def)
    };
    let name = name.ok_or_else(|| Error::invalid("name is required").with_field("name"))?;
    let version = match version {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u32::MAX as u64 => Some(n as u32),
            _ => {
                return Err(Error::invalid("version must be a whole number, at least 1")
                    .with_field("version")
                    .into())
            }
        },
    };
    let (flow, created) = app.engine.register_flow(&name, version, definition).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(flow_view(&flow))).into_response())
}

async fn list_flows(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let flows = app.engine.list_flows().await?;
    Ok(Json(
        json!({"flows": flows.iter().map(flow_view).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<String>,
}

async fn get_flow(
    State(app): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = crate::rest::query(q)?;
    let version = crate::rest::parse_num::<u32>(q.version.as_deref(), "version")?;
    Ok(Json(flow_view(&app.engine.get_flow(&name, version).await?)))
}

const RUN_FIELDS: &[&str] = &[
    "run_id",
    "flow",
    "version",
    "definition",
    "input",
    "priority",
    "on_failure",
    "execution_mode",
];

/// `POST /api/v1/runs`: `{"flow": name, "version"?, "input"?}`, `{"definition": {...}, "input"?}`,
/// or seed 002's workflow document as it is (`workflow_id`, `tasks`, …).
async fn start_run(
    State(app): State<AppState>,
    DocBody(body): DocBody,
) -> Result<Response, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| Error::invalid("send an object: {flow | definition, input}"))?;
    let inline = obj.contains_key("tasks") || obj.contains_key("steps");
    let req = if inline {
        crate::workflows::StartRequest {
            run_id: obj
                .get("workflow_id")
                .or_else(|| obj.get("run_id"))
                .and_then(Value::as_str)
                .map(str::to_string),
            flow: None,
            definition: Some({
                let mut d = body.clone();
                if let Some(m) = d.as_object_mut() {
                    m.remove("run_id");
                    m.remove("input");
                }
                d
            }),
            input: obj.get("input").cloned().unwrap_or(Value::Null),
            priority: Priority::default(),
            on_failure: None,
            execution_mode: None,
        }
    } else {
        let mut problems = Vec::new();
        for k in obj.keys() {
            if !RUN_FIELDS.contains(&k.as_str()) {
                problems.push(json!({"field": k, "message": format!("is not a known field (known: {})", RUN_FIELDS.join(", "))}));
            }
        }
        if !problems.is_empty() {
            return Err(Error::invalid(format!(
                "{} unknown field(s) in the run request",
                problems.len()
            ))
            .with_details(json!({"problems": problems}))
            .into());
        }
        let flow = match obj.get("flow") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let version = match obj.get("version") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                        Error::invalid("version must be a whole number, at least 1")
                            .with_field("version")
                    })? as u32),
                };
                Some((s.clone(), version))
            }
            Some(_) => {
                return Err(Error::invalid("flow must be the name of a registered flow")
                    .with_field("flow")
                    .into())
            }
        };
        let priority = match obj.get("priority") {
            None | Some(Value::Null) => Priority::default(),
            Some(v) => Priority::from_json(v).map_err(|e| e.with_field("priority"))?,
        };
        let on_failure = match obj.get("on_failure") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value::<OnFailure>(v.clone()).map_err(|_| {
                Error::invalid("on_failure must be fail_fast or continue").with_field("on_failure")
            })?),
        };
        let execution_mode = match obj.get("execution_mode") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<ExecutionMode>(v.clone()).map_err(|_| {
                    Error::invalid("execution_mode must be one of sequential, parallel, hybrid")
                        .with_field("execution_mode")
                })?,
            ),
        };
        let run_id = match obj.get("run_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Error::invalid("run_id must be a string")
                    .with_field("run_id")
                    .into())
            }
        };
        crate::workflows::StartRequest {
            run_id,
            flow,
            definition: obj.get("definition").cloned(),
            input: obj.get("input").cloned().unwrap_or(Value::Null),
            priority,
            on_failure,
            execution_mode,
        }
    };
    let (run, created) = app.engine.start(req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(run_view(
            &run,
            &Default::default(),
            &app.dispatcher.agents(),
            false,
        )),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetRunQuery {
    include_outputs: Option<String>,
}

async fn get_run(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    q: Result<Query<GetRunQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = crate::rest::query(q)?;
    let include = crate::rest::parse_bool(q.include_outputs.as_deref(), "include_outputs")?;
    let (run, outputs) = app.engine.get(&run_id).await?;
    Ok(Json(run_view(
        &run,
        &outputs,
        &app.dispatcher.agents(),
        include,
    )))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListRunsQuery {
    status: Option<String>,
    flow: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const RUN_STATUSES: &[&str] = &[
    "running",
    "paused",
    "compensating",
    "completed",
    "failed",
    "cancelled",
    "compensated",
    "compensation_failed",
];

async fn list_runs(
    State(app): State<AppState>,
    q: Result<Query<ListRunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = crate::rest::query(q)?;
    if let Some(s) = &q.status {
        if !RUN_STATUSES.contains(&s.as_str()) {
            return Err(Error::invalid(format!(
                "unknown run status {s:?}: use one of {}",
                RUN_STATUSES.join(", ")
            ))
            .with_field("status")
            .into());
        }
    }
    let limit: usize = crate::rest::parse_num(q.limit.as_deref(), "limit")?.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(Error::invalid("limit must be between 1 and 1000")
            .with_field("limit")
            .into());
    }
    let page = app
        .engine
        .list(RunFilter {
            status: q.status,
            flow_name: q.flow,
            limit,
            cursor: q.cursor,
        })
        .await?;
    let runs: Vec<Value> = page
        .runs
        .iter()
        .map(|r| {
            let run = &r.body["run"];
            let steps = run["steps"].as_array().map(Vec::len).unwrap_or(0);
            let done = run["steps"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter(|x| !matches!(x["status"].as_str(), Some("pending" | "running")))
                        .count()
                })
                .unwrap_or(0);
            json!({
                "run_id": r.run_id,
                "flow": r.flow_name,
                "status": r.status,
                "steps_total": steps,
                "steps_done": done,
                "created_at": millis_to_rfc3339(r.created_at_ms),
                "updated_at": millis_to_rfc3339(r.updated_at_ms),
                "error": run.get("error"),
            })
        })
        .collect();
    Ok(Json(json!({"runs": runs, "next_cursor": page.next_cursor})))
}

async fn run_command(app: &App, run_id: &str, cmd: RunCommand) -> Result<Json<Value>, ApiError> {
    let run = app.engine.command(run_id, cmd).await?;
    // These answers leave outputs out (GET the run with include_outputs for them).
    Ok(Json(run_view(
        &run,
        &Default::default(),
        &app.dispatcher.agents(),
        false,
    )))
}

async fn cancel_run(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    run_command(
        &app,
        &run_id,
        RunCommand::Cancel {
            reason: Some("cancelled by a client".into()),
        },
    )
    .await
}
async fn pause_run(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    run_command(&app, &run_id, RunCommand::Pause).await
}
async fn resume_run(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    run_command(&app, &run_id, RunCommand::Resume).await
}
async fn retry_run(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    run_command(&app, &run_id, RunCommand::Retry).await
}

/// `GET /api/v1/runs/{id}/events`: the run's recorded events, then live ones, as
/// server-sent events; the stream ends when the run finishes.
async fn run_events(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    // Subscribe before reading, so nothing falls between the two.
    let live = app.engine.subscribe();
    let (run, _) = app.engine.get(&run_id).await?;
    let past: Vec<Value> = run
        .events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect();
    let finished = !run.status.is_active();
    let status = run.status.as_str().to_string();
    let stream = event_stream(past, finished, status, run_id, live);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

type LiveEvents =
    tokio::sync::broadcast::Receiver<(String, baton_core::workflow::engine::RunEvent, String)>;

fn event_stream(
    past: Vec<Value>,
    finished: bool,
    status: String,
    run_id: String,
    rx: LiveEvents,
) -> impl futures::Stream<Item = Result<Event, std::convert::Infallible>> {
    use futures::StreamExt;
    let head = futures::stream::iter(past.into_iter().map(|e| {
        Ok(Event::default()
            .event("run_event")
            .json_data(e)
            .unwrap_or_default())
    }));
    let end = Event::default().event("end").data(status);
    if finished {
        return head.chain(futures::stream::iter(vec![Ok(end)])).boxed();
    }
    let tail = futures::stream::unfold((rx, false), move |(mut rx, done)| {
        let run_id = run_id.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok((id, ev, _)) if id == run_id => {
                        let terminal = matches!(
                            ev.kind.as_str(),
                            "run_completed"
                                | "run_failed"
                                | "run_cancelled"
                                | "saga_compensated"
                                | "saga_aborted"
                        );
                        let event = Event::default()
                            .event("run_event")
                            .json_data(&ev)
                            .unwrap_or_default();
                        return Some((Ok(event), (rx, terminal)));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let e = Event::default().event("lagged").data(n.to_string());
                        return Some((Ok(e), (rx, false)));
                    }
                    Err(_) => return None,
                }
            }
        }
    });
    head.chain(tail)
        .chain(futures::stream::iter(vec![Ok(Event::default()
            .event("end")
            .data("finished"))]))
        .boxed()
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/flows", post(register_flow).get(list_flows))
        .route("/api/v1/flows/{name}", get(get_flow))
        .route("/api/v1/runs", post(start_run).get(list_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/runs/{run_id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{run_id}/pause", post(pause_run))
        .route("/api/v1/runs/{run_id}/resume", post(resume_run))
        .route("/api/v1/runs/{run_id}/retry", post(retry_run))
        .route("/api/v1/runs/{run_id}/events", get(run_events))
}
