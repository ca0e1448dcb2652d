//! The REST API (axum), its OpenAPI document (utoipa, generated from these
//! handlers), and the one error shape: `{"error": {"code", "message", "details"}}`.

use crate::app::App;
use crate::clock::now_ms;
use crate::dispatcher::AgentInfo;
use crate::view::{task_view, TaskView};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

/// An error as REST returns it; the status comes from the shared error table.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl From<baton_store::Error> for ApiError {
    fn from(e: baton_store::Error) -> Self {
        ApiError(e.into())
    }
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// invalid_argument, not_found, conflict, payload_too_large, resource_exhausted, stale_attempt, failed_precondition, unavailable, deadline_exceeded, method_not_allowed, internal
    code: String,
    message: String,
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(baton_proto::http_status(self.0.code))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let details = if self.0.details.is_null() {
            serde_json::json!({})
        } else {
            self.0.details
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.0.code.as_str().into(),
                message: self.0.message,
                details,
            },
        };
        // Whole seconds, rounded up, from the refusal's own hint (at least 1).
        let retry_after = (self.0.code == ErrorCode::ResourceExhausted).then(|| {
            let ms = body.error.details["retry_after_ms"]
                .as_u64()
                .unwrap_or(1_000);
            ms.div_ceil(1_000).max(1)
        });
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

/// Reads a request body that must not be empty, with Baton's error shape for a body
/// too large, unreadable or empty (`expected` says what to send).
pub(crate) async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
    expected: &str,
) -> Result<bytes::Bytes, ApiError> {
    let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(Error::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than the configured limit (max_body_bytes)",
            ))
        } else {
            ApiError(Error::invalid(format!(
                "could not read the request body: {}",
                e.body_text()
            )))
        }
    })?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError(Error::invalid(format!(
            "request body is empty: send {expected}"
        ))));
    }
    Ok(bytes)
}

/// A JSON request body with Baton's error shape for every way it can be wrong.
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state, "a JSON object").await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError(Error::invalid(format!("malformed json: {e}"))))
    }
}

/// A body that may be empty.
pub struct RawBody(bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        bytes::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                ApiError(Error::invalid(format!(
                    "could not read the request body: {}",
                    e.body_text()
                )))
            })
    }
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct CancelRequest {
    /// Recorded on the cancelled event.
    reason: Option<String>,
}

type AppState = Arc<App>;

/// Seed 000's task submission (`POST /api/v1/tasks`). Unknown fields are refused.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct SubmitTaskRequest {
    /// Generated (UUID v7) when absent. Submitting the same id with the same content again returns the existing task.
    task_id: Option<String>,
    task_type: String,
    /// Typed parts: `{"type": "text"|"image"|"video"|"json"|"binary", "data": ..., "mime_type"?, "name"?}`; binary kinds carry base64.
    #[schema(value_type = Option<Vec<Object>>)]
    inputs: Option<Vec<serde_json::Value>>,
    /// Seed 001's payload: any JSON, added as a json input named "payload".
    #[schema(value_type = Option<Object>)]
    payload: Option<serde_json::Value>,
    /// sequential, parallel or hybrid
    execution_mode: Option<String>,
    /// 1..=10 (seed 000) or critical, high, normal, low, background. Default normal (5).
    #[schema(value_type = Option<Object>)]
    priority: Option<serde_json::Value>,
    /// Per attempt; default 30000.
    timeout_ms: Option<u64>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    retry: Option<RetryPolicyDoc>,
    /// RFC 3339 time or Unix milliseconds; the task fails with deadline_exceeded after it.
    #[schema(value_type = Option<Object>)]
    deadline: Option<serde_json::Value>,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct RetryPolicyDoc {
    /// Attempts in all, the first included (default 3).
    max_attempts: Option<u32>,
    backoff_base_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
    backoff_multiplier: Option<f64>,
    /// 0 = none, 1 = full jitter.
    jitter: Option<f64>,
}

#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct BatchRequest {
    tasks: Vec<SubmitTaskRequest>,
}

#[derive(Serialize, ToSchema)]
struct BatchItem {
    task_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

#[derive(Serialize, ToSchema)]
struct BatchResponse {
    tasks: Vec<BatchItem>,
    created: usize,
    existing: usize,
    conflicts: usize,
}

#[derive(Serialize, ToSchema)]
struct TaskList {
    tasks: Vec<TaskView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

impl From<baton_store::Page> for TaskList {
    fn from(page: baton_store::Page) -> Self {
        let now = now_ms();
        TaskList {
            tasks: page
                .tasks
                .iter()
                .map(|r| task_view(r, now, false))
                .collect(),
            next_cursor: page.next_cursor,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct AgentList {
    agents: Vec<AgentInfo>,
}

#[derive(Deserialize, Default)]
struct GetQuery {
    wait_ms: Option<String>,
    include_inputs: Option<String>,
}

#[derive(Deserialize, Default)]
struct SubmitQuery {
    wait_ms: Option<String>,
}

#[derive(Deserialize, Default)]
struct ListQuery {
    status: Option<String>,
    task_type: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub(crate) fn parse_num<T: std::str::FromStr>(
    raw: Option<&str>,
    field: &str,
) -> Result<Option<T>, ApiError> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiError(
                Error::invalid(format!(
                    "{field} must be a non-negative whole number, got {s:?}"
                ))
                .with_field(field),
            )
        }),
    }
}

pub(crate) fn parse_bool(raw: Option<&str>, field: &str) -> Result<bool, ApiError> {
    match raw {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError(
            Error::invalid(format!("{field} must be true or false, got {other:?}"))
                .with_field(field),
        )),
    }
}

/// Query strings with Baton's error shape when they do not parse.
pub(crate) fn query<T: serde::de::DeserializeOwned + Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError(Error::invalid(format!(
            "bad query string: {}",
            e.body_text()
        )))
    })
}

/// Submit a task. With `wait_ms`, the answer waits (up to that long) for the
/// task to finish and shows it as it then stands: submit and result in one call.
#[utoipa::path(post, path = "/api/v1/tasks", request_body = SubmitTaskRequest,
    params(("wait_ms" = Option<u64>, Query, description = "after the submit, wait up to this long (max 60000) for the task to finish")),
    responses((status = 201, description = "accepted and durable", body = TaskView),
              (status = 200, description = "the same task was already submitted", body = TaskView),
              (status = 400, body = ErrorBody), (status = 409, description = "the id exists with different content", body = ErrorBody),
              (status = 413, body = ErrorBody)))]
async fn submit_task(
    State(app): State<AppState>,
    q: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let wait_ms: u64 = parse_num(query(q)?.wait_ms.as_deref(), "wait_ms")?.unwrap_or(0);
    let spec = app.parse(&body, "")?;
    let created_status = |created| {
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    };
    if let Some((run_id, created)) = app.start_flow_task(&spec).await? {
        let view = match app.flow_task_wait(&run_id, wait_ms).await? {
            Some(view) => view,
            None => app.flow_task_view(&run_id).await?,
        };
        return Ok((created_status(created), Json(view)).into_response());
    }
    let result = app.submit_wait(spec, wait_ms).await?;
    Ok((
        created_status(result.created),
        Json(task_view(&result.record, now_ms(), false)),
    )
        .into_response())
}

/// Submit many tasks in one request. Invalid input rejects the whole batch (nothing
/// is stored); an id that exists with different content is reported per task.
#[utoipa::path(post, path = "/api/v1/tasks/batch", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn submit_batch(
    State(app): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<BatchResponse>, ApiError> {
    let Some(items) = body.get("tasks").and_then(|t| t.as_array()) else {
        return Err(ApiError(
            Error::invalid("body must be {\"tasks\": [...]}").with_field("tasks"),
        ));
    };
    if items.is_empty() {
        return Err(ApiError(
            Error::invalid("tasks must not be empty").with_field("tasks"),
        ));
    }
    let mut specs = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match app.parse(item, &format!("tasks[{i}].")) {
            Ok(s) => specs.push(s),
            Err(e) => problems.extend(e.problems(&format!("tasks[{i}]"))),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError(Error::from_problems(problems)));
    }
    let ids: Vec<String> = specs.iter().map(|s| s.task_id.to_string()).collect();
    let results = app.submit(specs).await?;
    let (mut created, mut existing, mut conflicts) = (0, 0, 0);
    let tasks = results
        .into_iter()
        .zip(ids)
        .map(|(r, task_id)| match r {
            Ok(s) => {
                if s.created {
                    created += 1
                } else {
                    existing += 1
                }
                BatchItem {
                    task_id,
                    status: Some(s.record.state.status.to_string()),
                    created: Some(s.created),
                    error: None,
                }
            }
            Err(e) => {
                conflicts += 1;
                BatchItem {
                    task_id,
                    status: None,
                    created: None,
                    error: Some(ErrorDetail {
                        code: e.code.as_str().into(),
                        message: e.message,
                        details: e.details,
                    }),
                }
            }
        })
        .collect();
    Ok(Json(BatchResponse {
        tasks,
        created,
        existing,
        conflicts,
    }))
}

/// Get a task: status, agent executions, output, metrics and events.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}",
    params(("task_id" = String, Path), ("wait_ms" = Option<u64>, Query, description = "wait up to this long (max 60000) for the task to finish"),
           ("include_inputs" = Option<bool>, Query)),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody)))]
async fn get_task(
    State(app): State<AppState>,
    Path(task_id): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let wait_ms: u64 = parse_num(q.wait_ms.as_deref(), "wait_ms")?.unwrap_or(0);
    let include_inputs = parse_bool(q.include_inputs.as_deref(), "include_inputs")?;
    match app.get_wait(&task_id, wait_ms).await {
        Ok(record) => Ok(Json(task_view(&record, now_ms(), include_inputs)).into_response()),
        // Seed 000: a task whose type is a flow is a run.
        Err(e) if e.code == ErrorCode::NotFound => {
            match app.flow_task_wait(&task_id, wait_ms).await? {
                Some(view) => Ok(Json(view).into_response()),
                None => Err(ApiError(e)),
            }
        }
        Err(e) => Err(ApiError(e)),
    }
}

/// List tasks, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/api/v1/tasks",
    params(("status" = Option<String>, Query), ("task_type" = Option<String>, Query),
           ("limit" = Option<u32>, Query, description = "1..=1000, default 50"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody)))]
async fn list_tasks(
    State(app): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let q = query(q)?;
    let limit = parse_num(q.limit.as_deref(), "limit")?;
    let page = app
        .list(q.status.as_deref(), q.task_type.as_deref(), limit, q.cursor)
        .await?;
    Ok(Json(TaskList::from(page)))
}

/// Cancel a task that has not finished. A running attempt is stopped on its agent.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/cancel", params(("task_id" = String, Path)), request_body = Option<CancelRequest>,
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, description = "already finished", body = ErrorBody)))]
async fn cancel_task(
    State(app): State<AppState>,
    Path(task_id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<TaskView>, ApiError> {
    // The body is optional: nothing, or {"reason": "..."}.
    let reason = if body.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError(Error::invalid(format!("malformed json: {e}"))))?;
        match v.get("reason") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(r)) => Some(r.clone()),
            Some(_) => {
                return Err(ApiError(
                    Error::invalid("reason must be a string").with_field("reason"),
                ))
            }
        }
    };
    let record = app.cancel(&task_id, reason).await?;
    Ok(Json(task_view(&record, now_ms(), false)))
}

/// Connected agents.
#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = AgentList)))]
async fn list_agents(State(app): State<AppState>) -> Json<AgentList> {
    Json(AgentList {
        agents: app.agents(),
    })
}

/// The dead-letter queue: tasks whose attempts are exhausted.
#[utoipa::path(get, path = "/api/v1/dlq",
    params(("task_type" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody)))]
async fn list_dlq(
    State(app): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let q = query(q)?;
    if q.status.is_some() {
        return Err(ApiError(
            Error::invalid("the dead-letter queue has no status filter").with_field("status"),
        ));
    }
    let limit = parse_num(q.limit.as_deref(), "limit")?;
    let page = app
        .list(
            Some("dead_lettered"),
            q.task_type.as_deref(),
            limit,
            q.cursor,
        )
        .await?;
    Ok(Json(TaskList::from(page)))
}

/// Send a dead-lettered task back to its queue with a fresh attempt budget.
#[utoipa::path(post, path = "/api/v1/dlq/{task_id}/reprocess", params(("task_id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, description = "not dead-lettered", body = ErrorBody)))]
async fn reprocess_dlq(
    State(app): State<AppState>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let record = app.reprocess(&task_id).await?;
    Ok(Json(task_view(&record, now_ms(), false)))
}

/// Seed 000's health check: healthy, version, uptime_seconds, stats.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Object), (status = 503, body = Object)))]
async fn health(State(app): State<AppState>) -> Response {
    let doc = app.health().await;
    let status = if doc["healthy"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(doc)).into_response()
}

/// Liveness: the process serves HTTP. Says nothing of the store, so that a store
/// outage does not make Kubernetes restart every replica.
#[utoipa::path(get, path = "/livez", responses((status = 200, body = Object)))]
async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({"live": true}))
}

/// Readiness: the store answers (pinged at most once a second). 503 with the reason
/// while it does not, so that a load balancer sends no traffic here.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Object), (status = 503, body = ErrorBody)))]
async fn readyz(State(app): State<AppState>) -> Response {
    match app.ready().await {
        Ok(()) => Json(serde_json::json!({"ready": true})).into_response(),
        Err(reason) => ApiError(
            Error::unavailable(format!("not ready: {reason}"))
                .with_details(serde_json::json!({"ready": false, "reason": reason})),
        )
        .into_response(),
    }
}

/// The SLA view: P50/P95/P99 latency (submit to end), throughput, error and success
/// rates over the sliding window, and each configured target's verdict.
#[utoipa::path(get, path = "/api/v1/sla", responses((status = 200, body = Object)))]
async fn sla(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(app.sla())
}

/// Prometheus metrics (classic text, or OpenMetrics when the scraper asks for it).
#[utoipa::path(get, path = "/metrics", responses((status = 200, body = String)))]
async fn metrics(State(app): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = crate::metrics::wants_openmetrics(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let body = app.metrics_text(openmetrics).await;
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        crate::metrics::TEXT_CONTENT_TYPE
    };
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The router of the metrics port: `/metrics`, and the probes (a Kubernetes probe
/// may point at either port).
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(app)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Baton",
        description = "Durable orchestrator for AI-agent workloads"
    ),
    paths(
        submit_task,
        submit_batch,
        get_task,
        crate::rest_events::task_events,
        list_tasks,
        cancel_task,
        list_agents,
        crate::rest_sched::discover_agents,
        crate::rest_sched::scheduler_state,
        list_dlq,
        reprocess_dlq,
        health,
        livez,
        readyz,
        sla,
        metrics
    ),
    components(schemas(
        ErrorBody,
        TaskView,
        TaskList,
        AgentList,
        crate::rest_sched::DiscoverResponse,
        BatchResponse,
        SubmitTaskRequest,
        BatchRequest
    ))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError(Error::not_found("no such endpoint; see /openapi.json"))
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError(Error::new(
        ErrorCode::MethodNotAllowed,
        format!("this endpoint does not take {method}; see /openapi.json"),
    ))
}

pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/tasks", post(submit_task).get(list_tasks))
        .route("/api/v1/tasks/batch", post(submit_batch))
        .route("/api/v1/tasks/{task_id}", get(get_task))
        .route("/api/v1/tasks/{task_id}/cancel", post(cancel_task))
        .route(
            "/api/v1/tasks/{task_id}/events",
            get(crate::rest_events::task_events),
        )
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/dlq", get(list_dlq))
        .route("/api/v1/dlq/{task_id}/reprocess", post(reprocess_dlq))
        .merge(crate::rest_runs::routes())
        .merge(crate::rest_sched::routes())
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/health/live", get(livez))
        .route("/readyz", get(readyz))
        .route("/health/ready", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/sla", get(sla))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}
