//! Server configuration, layered: defaults, then a TOML file, then environment,
//! then command-line flags (the caller merges flags last), then validated with
//! messages that say what to fix. The environment is passed in, so loading is
//! testable without touching the process environment.

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every group commit: survives power loss.
    Full,
    /// fsync at checkpoints only: survives a killed process, not a power loss.
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// A shared store instead of the embedded one: `postgres://user@host:port/db`
    /// (several replicas may share it). Also `BATON_STORE`.
    pub store: Option<String>,
    /// The PostgreSQL schema Baton's tables live in, so that several Baton clusters
    /// (or test runs) can share one database. Also `BATON_STORE_SCHEMA`.
    pub store_schema: String,
    /// How long `serve` keeps retrying (with backoff) a shared store it cannot reach
    /// at start before giving up.
    pub store_wait_ms: u64,
    /// REST API listen address.
    pub http_addr: SocketAddr,
    /// gRPC listen address (client API and agent streams).
    pub grpc_addr: SocketAddr,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Attempts running at once across all agents of this orchestrator (seed 000's MAX_WORKERS).
    pub max_workers: usize,
    /// Threads of the async runtime (HTTP, gRPC, scheduling); 0: one less than
    /// the CPUs, at least one (see [`runtime_workers`]).
    pub worker_threads: usize,
    /// Largest request body, in bytes; larger requests get 413.
    pub max_body_bytes: usize,
    /// Largest total input size of one task, in bytes.
    pub max_task_bytes: usize,
    /// Largest number of tasks in one batch submission.
    pub max_batch_tasks: usize,
    pub default_timeout_ms: u64,
    pub default_max_attempts: u32,
    pub default_backoff_base_ms: u64,
    pub default_backoff_cap_ms: u64,
    /// How often agents must send a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// An agent silent for this long is treated as gone and its attempts re-queued.
    pub agent_timeout_ms: u64,
    /// Length of an attempt's lease; the orchestrator extends it while the agent lives.
    pub lease_ms: u64,
    /// How long a replica holds the singleton duties (lease sweeping, retry
    /// promotion) without renewing; another replica takes over once it lapses.
    pub leader_lease_ms: u64,
    pub durability: Durability,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Where Prometheus metrics are served besides the REST port's `/metrics`
    /// (seed 000: port 8000); `off` (or empty) serves them on the REST port only.
    pub metrics_addr: String,
    /// Length of the SLA view's sliding window, in seconds (10 s buckets).
    pub sla_window_s: u64,
    /// SLA target: P95 submit-to-end latency below this (ms).
    pub sla_p95_ms: u64,
    /// SLA target: error rate below this fraction.
    pub sla_max_error_rate: f64,
    /// SLA target: success rate above this fraction.
    pub sla_min_success_rate: f64,
    /// Routing, breakers and flow control (`[scheduler]` in the config file).
    pub scheduler: SchedulerConfig,
}

/// The scheduler's settings (docs/scheduling.md). Defaults are the seeds'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Tasks held at once (queued, waiting for a retry, running) that count as
    /// full; submissions are shed from 90 % of it, lowest priorities first
    /// (seed 001). 0: never shed.
    pub capacity: u64,
    /// Consecutive failures that open an agent's circuit breaker (seed 001: 5).
    pub breaker_failures: u32,
    /// How long a breaker stays open before one probe task goes through (seed 001: 60 s).
    pub breaker_open_ms: u64,
    /// The routing strategy of task types that do not name one.
    pub default_strategy: String,
    /// Whether a critical task with no free slot may stop the lowest-priority
    /// running task of its type (re-queued without losing an attempt).
    pub preemption: bool,
    /// Tasks with the same `metadata.concurrency_key` running at once, unless
    /// `keys` says otherwise.
    pub key_concurrency: u32,
    /// Token bucket of each `metadata.rate_limit_key`, unless `keys` says otherwise.
    pub key_rate_per_s: f64,
    pub key_burst: u32,
    /// Per-key overrides (concurrency and rate), by key.
    pub keys: std::collections::BTreeMap<String, KeyPolicyConfig>,
    /// Per task type: routing strategy, rate limit, content rules, failover order.
    pub task_types: std::collections::BTreeMap<String, TypePolicyConfig>,
    /// Hourly cost budget per agent type (seed 001), in the unit of the agents'
    /// `cost_factor`.
    pub hourly_budgets: std::collections::BTreeMap<String, f64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            capacity: 2_000_000,
            breaker_failures: 5,
            breaker_open_ms: 60_000,
            default_strategy: "least_loaded".into(),
            preemption: true,
            key_concurrency: 1,
            key_rate_per_s: 100.0,
            key_burst: 100,
            keys: Default::default(),
            task_types: Default::default(),
            hourly_budgets: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyPolicyConfig {
    pub concurrency: Option<u32>,
    pub rate_per_s: Option<f64>,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TypePolicyConfig {
    pub strategy: Option<String>,
    pub rate_per_s: Option<f64>,
    pub burst: Option<u32>,
    /// Content-based routing rules, one per entry (see docs/scheduling.md).
    pub rules: Vec<String>,
    /// Agent ids in failover order.
    pub failover: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./baton-data"),
            store: None,
            store_schema: "baton".into(),
            store_wait_ms: 60_000,
            http_addr: "0.0.0.0:8080".parse().expect("valid"),
            grpc_addr: "0.0.0.0:50051".parse().expect("valid"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            max_workers: 100,
            worker_threads: 0,
            max_body_bytes: 16 * 1024 * 1024,
            max_task_bytes: 8 * 1024 * 1024,
            max_batch_tasks: 10_000,
            default_timeout_ms: 30_000,
            default_max_attempts: 3,
            default_backoff_base_ms: 1_000,
            default_backoff_cap_ms: 60_000,
            heartbeat_interval_ms: 2_000,
            agent_timeout_ms: 10_000,
            lease_ms: 5_000,
            leader_lease_ms: 3_000,
            durability: Durability::Full,
            shutdown_grace_ms: 5_000,
            metrics_addr: "0.0.0.0:8000".into(),
            sla_window_s: 300,
            sla_p95_ms: 500,
            sla_max_error_rate: 0.01,
            sla_min_success_rate: 0.99,
            scheduler: SchedulerConfig::default(),
        }
    }
}

/// Environment variables read, besides `BATON_<FIELD>` for every field:
/// seed 000's `GRPC_PORT`, `LOG_LEVEL` and `MAX_WORKERS`, and `LOG_FORMAT`.
pub const SEED_ENV: &[&str] = &["GRPC_PORT", "LOG_LEVEL", "MAX_WORKERS", "LOG_FORMAT"];

/// The most runtime worker threads a process may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// The async runtime's worker threads: `configured`, or when that is 0, one
/// less than `cpus` (at least one). The process has other threads that need a
/// CPU of their own under load: the embedded store's writer and syncer, and
/// on a small machine the agents and clients beside it. On two CPUs, one
/// runtime worker gave more throughput and a lower median latency than two
/// (BENCHMARKS.md, 2026-12-05): every wake-up of an idle worker to steal a
/// task is a context switch, dear on a virtual machine.
pub fn runtime_workers(configured: usize, cpus: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        cpus.saturating_sub(1).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Defaults, then `file` (if given), then `env`, then `overrides` (flags, as a
    /// partial table of the same field names), then validation.
    pub fn load(
        file: Option<&std::path::Path>,
        env: &HashMap<String, String>,
        overrides: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Serialized::globals(env_layer(env)?));
        fig = fig.merge(Serialized::globals(serde_json::Value::Object(overrides)));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.max_workers == 0 {
            problems.push("max_workers (MAX_WORKERS) must be at least 1".to_string());
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            problems.push(format!(
                "worker_threads (BATON_WORKER_THREADS) must be at most {MAX_WORKER_THREADS} (0: one less than the CPUs)"
            ));
        }
        if self.max_body_bytes < 1024 {
            problems.push("max_body_bytes must be at least 1024".into());
        }
        if self.max_task_bytes > self.max_body_bytes {
            problems.push("max_task_bytes must not exceed max_body_bytes".into());
        }
        if self.max_batch_tasks == 0 {
            problems.push("max_batch_tasks must be at least 1".into());
        }
        if self.default_timeout_ms == 0 {
            problems.push("default_timeout_ms must be greater than 0".into());
        }
        if self.default_max_attempts == 0
            || self.default_max_attempts > baton_core::retry::MAX_ATTEMPTS_LIMIT
        {
            problems.push("default_max_attempts must be between 1 and 100".into());
        }
        if self.default_backoff_cap_ms < self.default_backoff_base_ms {
            problems.push(
                "default_backoff_cap_ms must not be smaller than default_backoff_base_ms".into(),
            );
        }
        if self.heartbeat_interval_ms == 0 {
            problems.push("heartbeat_interval_ms must be greater than 0".into());
        }
        if self.agent_timeout_ms < 2 * self.heartbeat_interval_ms {
            problems.push("agent_timeout_ms must be at least twice heartbeat_interval_ms".into());
        }
        if self.lease_ms < 2 * self.heartbeat_interval_ms {
            problems.push("lease_ms must be at least twice heartbeat_interval_ms".into());
        }
        if self.leader_lease_ms < 300 {
            problems.push("leader_lease_ms must be at least 300".into());
        }
        let schema = &self.store_schema;
        if schema.is_empty()
            || schema.len() > 63
            || schema.starts_with(|c: char| c.is_ascii_digit())
            || schema.starts_with("pg_")
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            problems.push(format!(
                "store_schema {schema:?} must be 1 to 63 lowercase letters, digits or underscores, not starting with a digit or pg_"
            ));
        }
        if self.store_wait_ms == 0 {
            problems.push("store_wait_ms must be greater than 0".into());
        }
        if tracing_level_ok(&self.log_level).is_err() {
            problems.push(format!(
                "log_level (LOG_LEVEL) {:?} is not one of trace, debug, info, warn, error",
                self.log_level
            ));
        }
        if let Err(e) = self.metrics_socket() {
            problems.push(e);
        }
        if self.sla_window_s < 10 || self.sla_window_s > 24 * 3600 {
            problems.push("sla_window_s must be between 10 and 86400".into());
        }
        for (name, v) in [
            ("sla_max_error_rate", self.sla_max_error_rate),
            ("sla_min_success_rate", self.sla_min_success_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                problems.push(format!(
                    "{name} must be a fraction between 0 and 1, got {v}"
                ));
            }
        }
        if let Err(e) = crate::scheduler::Policies::from_config(&self.scheduler) {
            problems.push(format!("scheduler: {}", e.message));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems.join("; ")))
        }
    }

    /// The metrics listen address, `None` when metrics are served on the REST port only.
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics_addr.trim() {
            "" | "off" | "none" | "false" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                format!(
                    "metrics_addr (BATON_METRICS_ADDR) {addr:?} is not HOST:PORT (e.g. 0.0.0.0:8000) or off"
                )
            }),
        }
    }

    pub fn sla_targets(&self) -> crate::sla::Targets {
        crate::sla::Targets {
            p95_ms: self.sla_p95_ms,
            max_error_rate: self.sla_max_error_rate,
            min_success_rate: self.sla_min_success_rate,
        }
    }

    pub fn limits(&self) -> baton_core::task::Limits {
        baton_core::task::Limits {
            default_timeout_ms: self.default_timeout_ms,
            max_timeout_ms: 7 * 24 * 3600 * 1000,
            default_retry: baton_core::RetryPolicy {
                max_attempts: self.default_max_attempts,
                backoff_base_ms: self.default_backoff_base_ms,
                backoff_cap_ms: self.default_backoff_cap_ms,
                ..Default::default()
            },
            max_task_bytes: self.max_task_bytes,
        }
    }
}

fn tracing_level_ok(level: &str) -> Result<(), ()> {
    match level.to_ascii_lowercase().as_str() {
        "trace" | "debug" | "info" | "warn" | "warning" | "error" => Ok(()),
        _ => Err(()),
    }
}

/// Builds the environment layer: `BATON_<FIELD>` for every field, and the seed's names.
fn env_layer(env: &HashMap<String, String>) -> Result<serde_json::Value, ConfigError> {
    let mut out = serde_json::Map::new();
    let defaults = serde_json::to_value(Config::default()).expect("config serialises");
    let fields: Vec<String> = defaults
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    for field in &fields {
        if defaults[field].is_object() {
            // Sections such as `[scheduler]` come from the config file only.
            continue;
        }
        let key = format!("BATON_{}", field.to_ascii_uppercase());
        if let Some(raw) = env.get(&key) {
            out.insert(field.clone(), typed(&defaults[field], raw, &key)?);
        }
    }
    if let Some(level) = env.get("LOG_LEVEL") {
        out.entry("log_level")
            .or_insert_with(|| level.to_ascii_lowercase().into());
    }
    if let Some(format) = env.get("LOG_FORMAT") {
        out.entry("log_format")
            .or_insert_with(|| format.trim().to_ascii_lowercase().into());
    }
    if let Some(raw) = env.get("MAX_WORKERS") {
        if !out.contains_key("max_workers") {
            out.insert(
                "max_workers".into(),
                typed(&defaults["max_workers"], raw, "MAX_WORKERS")?,
            );
        }
    }
    if let Some(raw) = env.get("GRPC_PORT") {
        if !out.contains_key("grpc_addr") {
            let port: u16 = raw.trim().parse().map_err(|_| {
                ConfigError(format!("GRPC_PORT {raw:?} is not a port number (0-65535)"))
            })?;
            out.insert("grpc_addr".into(), format!("0.0.0.0:{port}").into());
        }
    }
    Ok(serde_json::Value::Object(out))
}

/// Environment values are text; give them the type of the field's default.
fn typed(
    default: &serde_json::Value,
    raw: &str,
    key: &str,
) -> Result<serde_json::Value, ConfigError> {
    match default {
        serde_json::Value::Number(n) if n.is_f64() => raw
            .trim()
            .parse::<f64>()
            .map(Into::into)
            .map_err(|_| ConfigError(format!("{key} {raw:?} is not a number"))),
        serde_json::Value::Number(_) => raw
            .trim()
            .parse::<u64>()
            .map(Into::into)
            .map_err(|_| ConfigError(format!("{key} {raw:?} is not a whole number"))),
        serde_json::Value::Bool(_) => match raw.trim() {
            "1" | "true" | "yes" => Ok(true.into()),
            "0" | "false" | "no" => Ok(false.into()),
            _ => Err(ConfigError(format!("{key} {raw:?} is not true or false"))),
        },
        _ => Ok(raw.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_seed() {
        let c = Config::load(None, &env(&[]), Default::default()).unwrap();
        assert_eq!(c.grpc_addr.port(), 50051);
        assert_eq!(c.http_addr.port(), 8080);
        assert_eq!(c.max_workers, 100);
        assert_eq!(c.data_dir, PathBuf::from("./baton-data"));
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("baton-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("baton.toml");
        std::fs::write(
            &file,
            "max_workers = 7\nlog_level = \"debug\"\nlease_ms = 20000\n",
        )
        .unwrap();
        let e = env(&[
            ("MAX_WORKERS", "9"),
            ("GRPC_PORT", "6000"),
            ("BATON_LEASE_MS", "30000"),
        ]);
        let mut flags = serde_json::Map::new();
        flags.insert("lease_ms".into(), 40_000.into());
        let c = Config::load(Some(&file), &e, flags).unwrap();
        assert_eq!(c.max_workers, 9, "env beats file");
        assert_eq!(c.log_level, "debug", "file beats defaults");
        assert_eq!(c.grpc_addr.port(), 6000);
        assert_eq!(c.lease_ms, 40_000, "flags beat env");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let err =
            Config::load(None, &env(&[("GRPC_PORT", "http")]), Default::default()).unwrap_err();
        assert!(err.to_string().contains("GRPC_PORT"), "{err}");
        let err =
            Config::load(None, &env(&[("MAX_WORKERS", "0")]), Default::default()).unwrap_err();
        assert!(err.to_string().contains("max_workers"), "{err}");
        let err =
            Config::load(None, &env(&[("LOG_LEVEL", "loud")]), Default::default()).unwrap_err();
        assert!(err.to_string().contains("LOG_LEVEL"), "{err}");
        let err = Config::load(
            Some(std::path::Path::new("/nonexistent/baton.toml")),
            &env(&[]),
            Default::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = Config::load(
            None,
            &env(&[("BATON_METRICS_ADDR", "port8000")]),
            Default::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("metrics_addr"), "{err}");
        let err = Config::load(
            None,
            &env(&[("BATON_WORKER_THREADS", "5000")]),
            Default::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("BATON_WORKER_THREADS"), "{err}");
    }

    #[test]
    fn runtime_workers_leave_a_cpu_unless_told() {
        let c = Config::load(None, &env(&[]), Default::default()).unwrap();
        assert_eq!(c.worker_threads, 0);
        assert_eq!(runtime_workers(c.worker_threads, 2), 1);
        assert_eq!(runtime_workers(c.worker_threads, 16), 15);
        assert_eq!(runtime_workers(c.worker_threads, 1), 1);
        let c = Config::load(
            None,
            &env(&[("BATON_WORKER_THREADS", "4")]),
            Default::default(),
        )
        .unwrap();
        assert_eq!(runtime_workers(c.worker_threads, 2), 4);
    }

    #[test]
    fn metrics_and_sla_settings() {
        let c = Config::load(None, &env(&[]), Default::default()).unwrap();
        assert_eq!(
            c.metrics_socket().unwrap(),
            Some("0.0.0.0:8000".parse().unwrap())
        );
        assert_eq!(c.sla_targets(), crate::sla::Targets::default());
        let c = Config::load(
            None,
            &env(&[
                ("BATON_METRICS_ADDR", "off"),
                ("BATON_SLA_MAX_ERROR_RATE", "0.05"),
                ("BATON_SLA_P95_MS", "250"),
            ]),
            Default::default(),
        )
        .unwrap();
        assert_eq!(c.metrics_socket().unwrap(), None);
        assert_eq!(c.sla_max_error_rate, 0.05);
        assert_eq!(c.sla_p95_ms, 250);
        let c = Config::load(None, &env(&[("LOG_FORMAT", "JSON")]), Default::default()).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        let err = Config::load(
            None,
            &env(&[("BATON_SLA_MIN_SUCCESS_RATE", "99")]),
            Default::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("sla_min_success_rate"), "{err}");
    }
}
