//! What a task tells the scheduler: the metadata keys it may set, their parsing
//! and validation, and [`TaskFacts`], the view of a task that routing rules and
//! key extraction read.

use super::routing::Strategy;
use crate::{AgentId, Error, Priority, TaskSpec};
use serde_json::{Map, Value};

/// Metadata keys read by the scheduler. Every other metadata key is left alone.
pub mod keys {
    /// Strategy name for this task (`least_loaded`, `round_robin`, ...); overrides
    /// the task type's configured strategy.
    pub const ROUTING_STRATEGY: &str = "routing_strategy";
    /// Key for `consistent_hash` and `affinity` (a session, a customer, a document).
    pub const ROUTING_KEY: &str = "routing_key";
    /// Ordered agent ids for `failover`.
    pub const PREFERRED_AGENTS: &str = "preferred_agents";
    /// Seed 001's `estimated_complexity`: multiplies an agent's average task time
    /// in the cost score. Default 1.
    pub const ESTIMATED_COMPLEXITY: &str = "estimated_complexity";
    /// Lowest agent health score (0..=1) this task accepts.
    pub const MIN_HEALTH: &str = "min_health";
    /// At most N tasks with the same key run at once (N from the server's config).
    pub const CONCURRENCY_KEY: &str = "concurrency_key";
    /// Token bucket this task draws from, in addition to its task type's.
    pub const RATE_LIMIT_KEY: &str = "rate_limit_key";
    /// Seed 001's `cost_budget`: the most this one task may cost.
    pub const COST_BUDGET: &str = "cost_budget";
    /// What the agent must declare in its labels (`cpu`, `memory_mb`, `gpu`,
    /// others by equality): [`crate::workflow::def::Resources`].
    pub const RESOURCES: &str = "resources";
}

/// Default for [`Hints::min_health`] when a task sets none.
pub const DEFAULT_MIN_HEALTH: f64 = 0.5;
/// Longest routing, concurrency or rate-limit key accepted.
pub const MAX_KEY_LEN: usize = 256;
/// Most agents a failover list may name.
pub const MAX_PREFERRED_AGENTS: usize = 64;

/// The scheduling hints of one task, parsed from its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Hints {
    /// `routing_strategy`: overrides the task type's strategy.
    pub strategy: Option<Strategy>,
    /// `routing_key`: for consistent hashing and affinity.
    pub routing_key: Option<String>,
    /// `preferred_agents`: the failover order.
    pub preferred_agents: Vec<AgentId>,
    /// `estimated_complexity`: multiplies the average task time in the cost score.
    pub estimated_complexity: f64,
    /// `min_health`: agents below this health score are not chosen.
    pub min_health: f64,
    /// `concurrency_key`: tasks sharing it are limited in how many run at once.
    pub concurrency_key: Option<String>,
    /// `rate_limit_key`: the token bucket the task draws from.
    pub rate_limit_key: Option<String>,
    /// `cost_budget`: the most this task may cost.
    pub cost_budget: Option<f64>,
}

impl Default for Hints {
    fn default() -> Self {
        Self {
            strategy: None,
            routing_key: None,
            preferred_agents: Vec::new(),
            estimated_complexity: 1.0,
            min_health: DEFAULT_MIN_HEALTH,
            concurrency_key: None,
            rate_limit_key: None,
            cost_budget: None,
        }
    }
}

impl Hints {
    /// Reads the keys in [`keys`] from task metadata. Every malformed value is
    /// reported in one `invalid_argument` error (`details.problems`, each with its
    /// `metadata.<key>` field), so a submission can be refused before it is stored.
    pub fn from_metadata(metadata: &Map<String, Value>) -> Result<Hints, Error> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut hints = Hints::default();
        let mut bad = |key: &str, msg: String| problems.push((format!("metadata.{key}"), msg));

        if let Some(v) = metadata.get(keys::ROUTING_STRATEGY) {
            match v.as_str().map(Strategy::parse) {
                Some(Ok(s)) => hints.strategy = Some(s),
                Some(Err(e)) => bad(keys::ROUTING_STRATEGY, e.message),
                None => bad(keys::ROUTING_STRATEGY, "must be a string".into()),
            }
        }
        for (key, slot) in [
            (keys::ROUTING_KEY, &mut hints.routing_key),
            (keys::CONCURRENCY_KEY, &mut hints.concurrency_key),
            (keys::RATE_LIMIT_KEY, &mut hints.rate_limit_key),
        ] {
            match metadata.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => bad(key, "must not be empty".into()),
                Some(Value::String(s)) if s.len() > MAX_KEY_LEN => {
                    bad(key, format!("is longer than {MAX_KEY_LEN} bytes"))
                }
                Some(Value::String(s)) => *slot = Some(s.clone()),
                Some(Value::Number(n)) => *slot = Some(n.to_string()),
                Some(_) => bad(key, "must be a string".into()),
            }
        }
        match metadata.get(keys::PREFERRED_AGENTS) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if items.len() > MAX_PREFERRED_AGENTS => bad(
                keys::PREFERRED_AGENTS,
                format!("names more than {MAX_PREFERRED_AGENTS} agents"),
            ),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().map(AgentId::parse) {
                        Some(Ok(id)) => hints.preferred_agents.push(id),
                        Some(Err(e)) => bad(&format!("{}[{i}]", keys::PREFERRED_AGENTS), e.message),
                        None => bad(
                            &format!("{}[{i}]", keys::PREFERRED_AGENTS),
                            "must be an agent id string".into(),
                        ),
                    }
                }
            }
            Some(_) => bad(
                keys::PREFERRED_AGENTS,
                "must be an array of agent ids".into(),
            ),
        }
        if let Some(v) = metadata.get(keys::ESTIMATED_COMPLEXITY) {
            match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 && x <= 1e6 => hints.estimated_complexity = x,
                _ => bad(
                    keys::ESTIMATED_COMPLEXITY,
                    "must be a number above 0 and at most 1000000".into(),
                ),
            }
        }
        if let Some(v) = metadata.get(keys::MIN_HEALTH) {
            match v.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => hints.min_health = x,
                _ => bad(keys::MIN_HEALTH, "must be a number between 0 and 1".into()),
            }
        }
        if let Some(v) = metadata.get(keys::COST_BUDGET) {
            match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => hints.cost_budget = Some(x),
                _ => bad(keys::COST_BUDGET, "must be a number of at least 0".into()),
            }
        }
        if problems.is_empty() {
            return Ok(hints);
        }
        Err(Error::from_problems(problems))
    }

    /// The strategy to use: the task's own, else its type's, else least-loaded.
    pub fn strategy_or(&self, task_type_default: Option<Strategy>) -> Strategy {
        self.strategy.or(task_type_default).unwrap_or_default()
    }
}

/// What routing reads about one task: its type, priority, metadata and hints.
#[derive(Debug, Clone)]
pub struct TaskFacts<'a> {
    /// The task type.
    pub task_type: &'a str,
    /// The task's priority level.
    pub priority: Priority,
    /// The task's metadata, for content rules.
    pub metadata: &'a Map<String, Value>,
    /// The parsed scheduling hints.
    pub hints: Hints,
}

impl<'a> TaskFacts<'a> {
    /// Facts of a stored task; fails only if its scheduling metadata is malformed.
    pub fn from_spec(spec: &'a TaskSpec) -> Result<Self, Error> {
        Ok(Self {
            task_type: &spec.task_type,
            priority: spec.priority,
            metadata: &spec.metadata,
            hints: Hints::from_metadata(&spec.metadata)?,
        })
    }

    /// The value at a field path, as text: `task_type`, `priority` (its level
    /// name), or `metadata.<key>[.<key>...]` into nested objects. Strings are
    /// returned as they are, numbers and booleans in their JSON form; objects,
    /// arrays, null and missing paths give `None`.
    pub fn field(&self, path: &str) -> Option<String> {
        match path {
            "task_type" => return Some(self.task_type.to_string()),
            "priority" => return Some(self.priority.as_str().to_string()),
            _ => {}
        }
        let rest = path.strip_prefix("metadata.")?;
        let mut parts = rest.split('.');
        let mut value = self.metadata.get(parts.next()?)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// True if `path` names something [`TaskFacts::field`] can read.
pub fn is_field_path(path: &str) -> bool {
    matches!(path, "task_type" | "priority")
        || path
            .strip_prefix("metadata.")
            .is_some_and(|rest| rest.split('.').all(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_when_metadata_is_empty() {
        let h = Hints::from_metadata(&Map::new()).unwrap();
        assert_eq!(h, Hints::default());
        assert_eq!(h.strategy_or(None), Strategy::LeastLoaded);
        assert_eq!(
            h.strategy_or(Some(Strategy::RoundRobin)),
            Strategy::RoundRobin
        );
    }

    #[test]
    fn reads_every_key() {
        let h = Hints::from_metadata(&map(json!({
            "routing_strategy": "consistent_hash",
            "routing_key": "session-7",
            "preferred_agents": ["a1", "a2"],
            "estimated_complexity": 2.5,
            "min_health": 0.8,
            "concurrency_key": "tenant-a",
            "rate_limit_key": 42,
            "cost_budget": 50.0,
            "unrelated": {"x": 1}
        })))
        .unwrap();
        assert_eq!(h.strategy, Some(Strategy::ConsistentHash));
        assert_eq!(
            h.strategy_or(Some(Strategy::Broadcast)),
            Strategy::ConsistentHash
        );
        assert_eq!(h.routing_key.as_deref(), Some("session-7"));
        assert_eq!(
            h.preferred_agents,
            vec![AgentId::parse("a1").unwrap(), AgentId::parse("a2").unwrap()]
        );
        assert_eq!(h.estimated_complexity, 2.5);
        assert_eq!(h.min_health, 0.8);
        assert_eq!(h.concurrency_key.as_deref(), Some("tenant-a"));
        assert_eq!(h.rate_limit_key.as_deref(), Some("42"));
        assert_eq!(h.cost_budget, Some(50.0));
    }

    #[test]
    fn every_problem_is_reported_once() {
        let err = Hints::from_metadata(&map(json!({
            "routing_strategy": "fastest",
            "routing_key": "",
            "preferred_agents": ["ok", "has space"],
            "estimated_complexity": -1,
            "min_health": 1.5,
            "cost_budget": "cheap"
        })))
        .unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::InvalidArgument);
        let problems = err.details["problems"].as_array().unwrap();
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            vec![
                "metadata.routing_strategy",
                "metadata.routing_key",
                "metadata.preferred_agents[1]",
                "metadata.estimated_complexity",
                "metadata.min_health",
                "metadata.cost_budget",
            ]
        );
        assert!(err
            .message
            .starts_with("metadata.routing_strategy unknown routing strategy"));
        assert!(err.message.ends_with("(and 5 more problems)"));
    }

    #[test]
    fn field_paths() {
        let meta = map(
            json!({"tenant": "acme", "size": 3, "gpu": true, "nested": {"region": "eu"}, "list": [1]}),
        );
        let facts = TaskFacts {
            task_type: "summarize",
            priority: Priority::High,
            metadata: &meta,
            hints: Hints::default(),
        };
        assert_eq!(facts.field("task_type").as_deref(), Some("summarize"));
        assert_eq!(facts.field("priority").as_deref(), Some("high"));
        assert_eq!(facts.field("metadata.tenant").as_deref(), Some("acme"));
        assert_eq!(facts.field("metadata.size").as_deref(), Some("3"));
        assert_eq!(facts.field("metadata.gpu").as_deref(), Some("true"));
        assert_eq!(facts.field("metadata.nested.region").as_deref(), Some("eu"));
        assert_eq!(facts.field("metadata.list"), None);
        assert_eq!(facts.field("metadata.missing"), None);
        assert_eq!(facts.field("tenant"), None);
        assert!(is_field_path("metadata.a.b"));
        assert!(!is_field_path("metadata."));
        assert!(!is_field_path("metadata.a..b"));
        assert!(!is_field_path("payload"));
    }
}
