//! REST for workflows: the flow registry (`/api/v1/flows`) and runs
//! (`/api/v1/runs`), with a live event stream per run (server-sent events).
//! Bodies are JSON, or YAML when the request says `Content-Type: application/yaml`.

use crate::app::App;
use crate::rest::ApiError;
use crate::view::{rfc3339 as millis_to_rfc3339, run_view};
use crate::workflows::{RegisterRequest, StartRequest, Watched};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_core::workflow::RunCommand;
use baton_core::Error;
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
    let req = RegisterRequest::from_json(&body)?;
    let (flow, created) = app
        .engine
        .register_flow(&req.name, req.version, req.definition)
        .await?;
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

/// `POST /api/v1/runs`: `{"flow": name, "version"?, "input"?}`, `{"definition": {...}, "input"?}`,
/// or seed 002's workflow document as it is (`workflow_id`, `tasks`, …).
async fn start_run(
    State(app): State<AppState>,
    DocBody(body): DocBody,
) -> Result<Response, ApiError> {
    let req = StartRequest::from_json(&body)?;
    let (run, created) = app.engine.start(req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(started_view(&app, &run))).into_response())
}

/// A run as the start and command answers show it: without outputs (GET the run
/// with include_outputs for them).
pub(crate) fn started_view(app: &App, run: &baton_core::workflow::Run) -> Value {
    run_view(run, &Default::default(), &app.dispatcher.agents(), false)
}

/// `POST /api/v1/runs/batch`: `{"runs": [<a POST /api/v1/runs body>, …]}`. Each item
/// succeeds or fails on its own (with the error it would get alone); the good ones
/// are stored together. The answer lists one result per item, in order.
async fn start_runs(
    State(app): State<AppState>,
    DocBody(body): DocBody,
) -> Result<Json<Value>, ApiError> {
    let items = match body.as_object().map(|o| (o.get("runs"), o.len())) {
        Some((Some(Value::Array(items)), 1)) => items,
        _ => {
            return Err(Error::invalid("body must be {\"runs\": [...]}")
                .with_field("runs")
                .into())
        }
    };
    let requests = items.iter().map(StartRequest::from_json).collect();
    let outcomes = app
        .engine
        .start_batch(requests, app.max_batch_tasks)
        .await?;
    let (mut created, mut existing, mut errors) = (0, 0, 0);
    let results: Vec<Value> = outcomes
        .into_iter()
        .zip(items)
        .map(|(outcome, item)| match outcome {
            Ok((run, was_created)) => {
                if was_created {
                    created += 1;
                } else {
                    existing += 1;
                }
                json!({"run_id": run.run_id, "status": run.status, "created": was_created})
            }
            Err(e) => {
                errors += 1;
                // The id the client asked for, when it gave one, to match items up.
                let run_id = item
                    .get("run_id")
                    .or_else(|| item.get("workflow_id"))
                    .filter(|v| v.is_string());
                let details = if e.details.is_null() { json!({}) } else { e.details };
                json!({"run_id": run_id, "error": {"code": e.code.as_str(), "message": e.message, "details": details}})
            }
        })
        .collect();
    Ok(Json(json!({
        "runs": results,
        "created": created,
        "existing": existing,
        "errors": errors,
    })))
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

/// A run list's filter, checked the same way for REST and gRPC.
pub(crate) fn run_filter(
    status: Option<String>,
    flow: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
) -> Result<RunFilter, Error> {
    let status = status.filter(|s| !s.is_empty());
    if let Some(s) = &status {
        if !RUN_STATUSES.contains(&s.as_str()) {
            return Err(Error::invalid(format!(
                "unknown run status {s:?}: use one of {}",
                RUN_STATUSES.join(", ")
            ))
            .with_field("status"));
        }
    }
    let limit = limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(Error::invalid("limit must be between 1 and 1000").with_field("limit"));
    }
    Ok(RunFilter {
        status,
        flow_name: flow.filter(|f| !f.is_empty()),
        limit,
        cursor: cursor.filter(|c| !c.is_empty()),
    })
}

/// What a run list shows of a stored run, read from its document without the
/// rest of it.
pub(crate) struct StoredSummary {
    pub done: usize,
    pub total: usize,
    pub error: Option<String>,
}

/// Steps finished and steps in all, and the run's error, from a stored run.
pub(crate) fn stored_summary(r: &baton_store::RunRecord) -> StoredSummary {
    #[derive(serde::Deserialize)]
    struct Doc {
        run: DocRun,
    }
    #[derive(serde::Deserialize)]
    struct DocRun {
        #[serde(default)]
        steps: Vec<DocStep>,
        #[serde(default)]
        error: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct DocStep {
        status: String,
    }
    match r.body.decode::<Doc>() {
        Ok(doc) => StoredSummary {
            done: doc
                .run
                .steps
                .iter()
                .filter(|x| !matches!(x.status.as_str(), "pending" | "running"))
                .count(),
            total: doc.run.steps.len(),
            error: doc.run.error,
        },
        Err(e) => StoredSummary {
            done: 0,
            total: 0,
            error: Some(format!("stored run unreadable: {e}")),
        },
    }
}

async fn list_runs(
    State(app): State<AppState>,
    q: Result<Query<ListRunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = crate::rest::query(q)?;
    let limit = crate::rest::parse_num(q.limit.as_deref(), "limit")?;
    let filter = run_filter(q.status, q.flow, limit, q.cursor)?;
    let page = app.engine.list(filter).await?;
    let runs: Vec<Value> = page
        .runs
        .iter()
        .map(|r| {
            let summary = stored_summary(r);
            json!({
                "run_id": r.run_id,
                "flow": r.flow_name,
                "status": r.status,
                "steps_total": summary.total,
                "steps_done": summary.done,
                "created_at": millis_to_rfc3339(r.created_at_ms),
                "updated_at": millis_to_rfc3339(r.updated_at_ms),
                "error": summary.error,
            })
        })
        .collect();
    Ok(Json(json!({"runs": runs, "next_cursor": page.next_cursor})))
}

async fn run_command(app: &App, run_id: &str, cmd: RunCommand) -> Result<Json<Value>, ApiError> {
    let run = app.engine.command(run_id, cmd).await?;
    Ok(Json(started_view(app, &run)))
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
/// server-sent events (`run_event`, `lagged` when this client fell behind); the
/// stream ends with an `end` event whose data is the run's final status.
async fn run_events(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    use futures::StreamExt;
    let watched = app.engine.watch(&run_id).await?;
    let stream = watched.map(|w| {
        Ok::<_, std::convert::Infallible>(match w {
            Watched::Event(e) => Event::default()
                .event("run_event")
                .json_data(&e)
                .unwrap_or_default(),
            Watched::Lagged(n) => Event::default().event("lagged").data(n.to_string()),
            Watched::End(status) => Event::default().event("end").data(status.as_str()),
        })
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/flows", post(register_flow).get(list_flows))
        .route("/api/v1/flows/{name}", get(get_flow))
        .route("/api/v1/runs", post(start_run).get(list_runs))
        .route("/api/v1/runs/batch", post(start_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/runs/{run_id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{run_id}/pause", post(pause_run))
        .route("/api/v1/runs/{run_id}/resume", post(resume_run))
        .route("/api/v1/runs/{run_id}/retry", post(retry_run))
        .route("/api/v1/runs/{run_id}/events", get(run_events))
}
