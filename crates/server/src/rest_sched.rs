//! The scheduler over REST: seed 004's agent discovery and the scheduler's state
//! (per agent, per queue, per key).

use crate::app::App;
use crate::rest::ApiError;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use baton_core::sched::registry::{self, parse_version_req};
use baton_core::Error;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type AppState = Arc<App>;

/// Discovery query: every field optional; lists are comma-separated.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DiscoverParams {
    /// Capabilities (task types) the agent must all have, comma-separated.
    pub capabilities: Option<String>,
    /// Lowest health score, 0..1 (default 0.5).
    pub min_health: Option<f64>,
    /// A semver range such as `>=1.2, <2`.
    pub version: Option<String>,
    /// Preferred location: agents there come first.
    pub location: Option<String>,
    pub agent_type: Option<String>,
    /// Tags the agent must all have, comma-separated.
    pub tags: Option<String>,
    /// Most agents returned (default all).
    pub limit: Option<usize>,
}

fn list(raw: &Option<String>) -> Vec<String> {
    raw.as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Builds a registry query, refusing a malformed version range or health bound.
pub fn query_of(p: &DiscoverParams) -> Result<registry::Query, Error> {
    let min_health = p
        .min_health
        .unwrap_or(baton_core::sched::hints::DEFAULT_MIN_HEALTH);
    if !(0.0..=1.0).contains(&min_health) {
        return Err(
            Error::invalid("min_health must be a number between 0 and 1").with_field("min_health"),
        );
    }
    let version = p
        .version
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .map(parse_version_req)
        .transpose()?;
    Ok(registry::Query {
        capabilities: list(&p.capabilities),
        min_health,
        version,
        location: p.location.clone().filter(|l| !l.is_empty()),
        agent_type: p.agent_type.clone().filter(|t| !t.is_empty()),
        tags: list(&p.tags),
        limit: p.limit.unwrap_or(0),
    })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Discovered {
    pub agent_id: String,
    pub health: f64,
    pub same_location: bool,
    pub load: f64,
    pub agent: crate::dispatcher::AgentInfo,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DiscoverResponse {
    pub agents: Vec<Discovered>,
}

pub fn discover(app: &App, query: &registry::Query) -> DiscoverResponse {
    DiscoverResponse {
        agents: app
            .dispatcher
            .discover(query)
            .into_iter()
            .map(|(c, agent)| Discovered {
                agent_id: c.agent_id.to_string(),
                health: c.health,
                same_location: c.same_location,
                load: c.load,
                agent,
            })
            .collect(),
    }
}

/// Agents matching capabilities, minimum health, a version range and a
/// location preference (seed 004), best first.
#[utoipa::path(get, path = "/api/v1/agents/discover", params(DiscoverParams),
    responses((status = 200, body = DiscoverResponse), (status = 400, body = crate::rest::ErrorBody)))]
pub(crate) async fn discover_agents(
    State(app): State<AppState>,
    params: Result<Query<DiscoverParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DiscoverResponse>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError(Error::invalid(e.body_text())))?;
    let query = query_of(&p)?;
    Ok(Json(discover(&app, &query)))
}

/// The scheduler's state on this replica: agents (load, health, breaker),
/// queues (path, strategy, rate-limit tokens, held tasks and why), keys
/// (running per concurrency key, tokens per rate-limited key), hourly budgets
/// and load shedding.
#[utoipa::path(get, path = "/api/v1/scheduler", responses((status = 200, body = Object)))]
pub(crate) async fn scheduler_state(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(app.dispatcher.scheduler_state())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents/discover", get(discover_agents))
        .route("/api/v1/scheduler", get(scheduler_state))
}
