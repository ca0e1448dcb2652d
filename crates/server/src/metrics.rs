//! Prometheus metrics: the series the seeds name, under the seeds' names, plus
//! Baton's own (`baton_*`).
//!
//! Counters and histograms are updated where things happen, with atomics only:
//! callers aggregate per batch (one label lookup per task type and batch, not per
//! task), and histograms are fixed buckets of atomic counts ([`HistogramFamily`]).
//! Gauges that describe the queue, the agents and the runs are not maintained on
//! the hot path at all: [`Metrics::render`] reads them from the store's counts and
//! the dispatcher's sessions at scrape time.
//!
//! Which values are per process and which are cluster-wide: counters, histograms
//! and the agent and in-flight gauges describe this replica (sum them across
//! replicas); gauges read from the store (`queue_depth`, `task_queue_depth`,
//! `orchestrator_dead_letter_queue_size`, `baton_tasks`, `pending_tasks_per_agent`)
//! describe the whole store, so every replica reports the same value (take `max`).
//!
//! Exposition: prometheus-client writes OpenMetrics text, served as such to
//! scrapers that ask for it; everyone else (curl, `promtool check metrics`) gets the
//! classic text format, which names counter families with their `_total` suffix.

use crate::sla::{self, Outcome};
use baton_core::Status;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Content type of the classic text exposition.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric family the server exports, as it appears in the classic text
/// format, with its type. Dashboards and alert rules may name only these (a test
/// checks `deploy/`). Histograms add `_bucket`, `_sum` and `_count`.
pub const FAMILIES: &[(&str, &str)] = &[
    // Seed 000.
    ("tasks_submitted_total", "counter"),
    ("tasks_completed_total", "counter"),
    ("tasks_failed_total", "counter"),
    ("task_execution_time_ms", "histogram"),
    ("queue_depth", "gauge"),
    ("agent_healthy", "gauge"),
    // Seed 001 (autoscaling inputs).
    ("pending_tasks_per_agent", "gauge"),
    ("agent_utilization_ratio", "gauge"),
    ("task_queue_depth", "gauge"),
    // Seed 003.
    ("orchestrator_flow_runs_processed_total", "counter"),
    ("orchestrator_run_execution_seconds", "histogram"),
    ("orchestrator_active_runs", "gauge"),
    ("orchestrator_tasks_scheduled_total", "counter"),
    ("orchestrator_tasks_completed_total", "counter"),
    ("orchestrator_task_execution_seconds", "histogram"),
    ("orchestrator_active_tasks", "gauge"),
    ("orchestrator_retry_attempts_total", "counter"),
    ("orchestrator_dead_letter_queue_size", "gauge"),
    // Baton's own.
    ("baton_tasks", "gauge"),
    ("baton_agents_connected", "gauge"),
    ("baton_lease_expiries_total", "counter"),
    ("baton_submissions_shed_total", "counter"),
    ("baton_circuit_breaker_state", "gauge"),
    ("baton_store_commit_seconds", "histogram"),
    ("baton_store_up", "gauge"),
    ("baton_sla_latency_seconds", "gauge"),
    ("baton_sla_error_rate", "gauge"),
    ("baton_sla_success_rate", "gauge"),
    ("baton_sla_throughput_per_second", "gauge"),
];

macro_rules! label_set {
    ($name:ident { $($field:ident),+ }) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
        pub struct $name { $(pub $field: String),+ }
    };
}

label_set!(TaskType { task_type });
label_set!(TypeStatus { task_type, status });
label_set!(AgentType { agent_type });
label_set!(PriorityLabel { priority });
label_set!(StatusLabel { status });
label_set!(Op { op });
label_set!(Reason { reason });
label_set!(Percentile { percentile });

/// Fixed-bucket histogram of integer observations, lock-free to update.
#[derive(Debug)]
struct Histogram {
    /// Upper bounds, ascending, in the family's base unit.
    bounds: Arc<[u64]>,
    /// One count per bound, then the overflow (+Inf) bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: Arc<[u64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }
}

/// A histogram per label set. Observations are in a base unit (ms or µs); each
/// [`HistogramView`] encodes them divided by its own divisor, so one set of atomics
/// can back a `_ms` and a `_seconds` family.
#[derive(Debug)]
pub struct HistogramFamily<L> {
    bounds: Arc<[u64]>,
    series: RwLock<HashMap<L, Arc<Histogram>>>,
}

/// A handle on one series, to observe many values with one lookup.
#[derive(Clone, Debug)]
pub struct HistogramHandle(Arc<Histogram>);

impl HistogramHandle {
    pub fn observe(&self, value: u64) {
        self.0.observe(value)
    }
}

impl<L: Clone + Hash + Eq> HistogramFamily<L> {
    fn new(bounds: &[u64]) -> Arc<Self> {
        Arc::new(HistogramFamily {
            bounds: bounds.into(),
            series: RwLock::new(HashMap::new()),
        })
    }

    pub fn get(&self, labels: &L) -> HistogramHandle {
        if let Some(h) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(labels)
        {
            return HistogramHandle(h.clone());
        }
        let mut w = self.series.write().unwrap_or_else(|p| p.into_inner());
        HistogramHandle(
            w.entry(labels.clone())
                .or_insert_with(|| Arc::new(Histogram::new(self.bounds.clone())))
                .clone(),
        )
    }
}

#[derive(Debug)]
struct HistogramView<L> {
    family: Arc<HistogramFamily<L>>,
    divisor: f64,
}

impl<L> EncodeMetric for HistogramView<L>
where
    L: Clone + Hash + Eq + Ord + EncodeLabelSet + std::fmt::Debug + Send + Sync,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let series = self.family.series.read().unwrap_or_else(|p| p.into_inner());
        let mut sorted: Vec<_> = series.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (labels, h) in sorted {
            // Per-bucket counts: the encoder makes them cumulative, and prints
            // f64::MAX as +Inf.
            let mut count = 0;
            let mut buckets = Vec::with_capacity(h.counts.len());
            for (i, c) in h.counts.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                count += n;
                let bound = match h.bounds.get(i) {
                    Some(b) => *b as f64 / self.divisor,
                    None => f64::MAX,
                };
                buckets.push((bound, n));
            }
            let sum = h.sum.load(Ordering::Relaxed) as f64 / self.divisor;
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.family
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// Task run times, in ms.
const EXECUTION_BOUNDS_MS: &[u64] = &[
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];
/// Run durations, in ms.
const RUN_BOUNDS_MS: &[u64] = &[
    100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
];
/// Store commit latency, in µs.
const COMMIT_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

type FloatGauge = Gauge<f64, AtomicU64>;

/// A terminal task, as [`Metrics::tasks_finished`] takes it.
pub struct Finished<'a> {
    pub task_type: &'a str,
    pub status: Status,
    /// Submit to end.
    pub latency_ms: u64,
}

/// What the dispatcher knows about the agents serving one task type, at scrape time.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TypeLoad {
    /// Connected, not draining, heard from within the agent timeout.
    pub healthy_agents: u64,
    pub capacity: u64,
    pub in_flight: u64,
}

/// Everything read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub counts: Option<baton_store::Counts>,
    pub queued_by_priority: Option<BTreeMap<String, u64>>,
    pub store_up: bool,
    pub by_type: BTreeMap<String, TypeLoad>,
    pub agents_connected: u64,
    pub in_flight: u64,
    pub active_runs: u64,
}

pub struct Metrics {
    registry: Registry,
    submitted: Family<TaskType, Counter>,
    completed: Family<TaskType, Counter>,
    failed: Family<TaskType, Counter>,
    orch_completed: Family<TypeStatus, Counter>,
    scheduled: Family<TaskType, Counter>,
    retries: Family<TaskType, Counter>,
    execution: Arc<HistogramFamily<TaskType>>,
    runs_processed: Family<StatusLabel, Counter>,
    run_execution: Arc<HistogramFamily<StatusLabel>>,
    lease_expiries: Counter,
    shed: Family<Reason, Counter>,
    breaker_state: Family<AgentType, Gauge>,
    commit: Arc<HistogramFamily<Op>>,
    // Read at scrape time.
    queue_depth: Family<TaskType, Gauge>,
    task_queue_depth: Family<PriorityLabel, Gauge>,
    agent_healthy: Family<AgentType, Gauge>,
    pending_per_agent: Family<TaskType, FloatGauge>,
    utilization: Family<AgentType, FloatGauge>,
    active_runs: Gauge,
    active_tasks: Gauge,
    dead_letter: Gauge,
    tasks_by_status: Family<StatusLabel, Gauge>,
    agents_connected: Gauge,
    store_up: Gauge,
    sla_latency: Family<Percentile, FloatGauge>,
    sla_error_rate: FloatGauge,
    sla_success_rate: FloatGauge,
    sla_throughput: FloatGauge,
    /// One scrape at a time: gauges are cleared and refilled for each.
    scrape: tokio::sync::Mutex<()>,
    sla: Mutex<sla::Window>,
    started_ms: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Metrics with an SLA window of `sla_window_ms` (10 s buckets).
    pub fn new(sla_window_ms: u64, started_ms: u64) -> Arc<Metrics> {
        let mut r = Registry::default();
        let submitted = Family::default();
        r.register(
            "tasks_submitted",
            "Tasks accepted (newly stored), by task type",
            Family::clone(&submitted),
        );
        let completed = Family::default();
        r.register(
            "tasks_completed",
            "Tasks that ended completed, by task type",
            Family::clone(&completed),
        );
        let failed = Family::default();
        r.register(
            "tasks_failed",
            "Tasks that ended failed or dead-lettered, by task type",
            Family::clone(&failed),
        );
        let execution = HistogramFamily::new(EXECUTION_BOUNDS_MS);
        r.register(
            "task_execution_time_ms",
            "Run time of attempts that returned a result (assignment to result), in ms",
            HistogramView {
                family: execution.clone(),
                divisor: 1.0,
            },
        );
        let queue_depth = Family::default();
        r.register(
            "queue_depth",
            "Queued tasks by task type (whole store)",
            Family::clone(&queue_depth),
        );
        let agent_healthy = Family::default();
        r.register(
            "agent_healthy",
            "Healthy connected agents serving each task type (agent_type)",
            Family::clone(&agent_healthy),
        );
        let pending_per_agent = Family::default();
        r.register(
            "pending_tasks_per_agent",
            "Queued tasks of a type divided by the healthy agents serving it (by the queue when none)",
            Family::clone(&pending_per_agent),
        );
        let utilization = Family::default();
        r.register(
            "agent_utilization_ratio",
            "In-flight attempts over declared capacity of the agents serving a type, 0..1",
            Family::clone(&utilization),
        );
        let task_queue_depth = Family::default();
        r.register(
            "task_queue_depth",
            "Queued tasks by priority (whole store)",
            Family::clone(&task_queue_depth),
        );
        let runs_processed = Family::default();
        r.register(
            "orchestrator_flow_runs_processed",
            "Workflow runs that ended, by final status",
            Family::clone(&runs_processed),
        );
        let run_execution = HistogramFamily::new(RUN_BOUNDS_MS);
        r.register(
            "orchestrator_run_execution_seconds",
            "Duration of workflow runs that ended, start to end, in seconds",
            HistogramView {
                family: run_execution.clone(),
                divisor: 1_000.0,
            },
        );
        let active_runs = Gauge::default();
        r.register(
            "orchestrator_active_runs",
            "Workflow runs this replica is driving",
            active_runs.clone(),
        );
        let scheduled = Family::default();
        r.register(
            "orchestrator_tasks_scheduled",
            "Attempts assigned to agents, by task type",
            Family::clone(&scheduled),
        );
        let orch_completed = Family::default();
        r.register(
            "orchestrator_tasks_completed",
            "Tasks that reached a terminal status, by task type and status",
            Family::clone(&orch_completed),
        );
        r.register(
            "orchestrator_task_execution_seconds",
            "Run time of attempts that returned a result, by task type (the handler), in seconds",
            HistogramView {
                family: execution.clone(),
                divisor: 1_000.0,
            },
        );
        let active_tasks = Gauge::default();
        r.register(
            "orchestrator_active_tasks",
            "Attempts running on this replica's agents",
            active_tasks.clone(),
        );
        let retries = Family::default();
        r.register(
            "orchestrator_retry_attempts",
            "Failed attempts that will be retried, by task type",
            Family::clone(&retries),
        );
        let dead_letter = Gauge::default();
        r.register(
            "orchestrator_dead_letter_queue_size",
            "Tasks in the dead-letter queue (whole store)",
            dead_letter.clone(),
        );
        let tasks_by_status = Family::default();
        r.register(
            "baton_tasks",
            "Tasks by status (whole store)",
            Family::clone(&tasks_by_status),
        );
        let agents_connected = Gauge::default();
        r.register(
            "baton_agents_connected",
            "Agent sessions connected to this replica",
            agents_connected.clone(),
        );
        let lease_expiries = Counter::default();
        r.register(
            "baton_lease_expiries",
            "Running attempts failed because their lease was not extended in time",
            lease_expiries.clone(),
        );
        let shed = Family::default();
        r.register(
            "baton_submissions_shed",
            "Submissions refused to shed load, by reason",
            Family::clone(&shed),
        );
        let breaker_state = Family::default();
        r.register(
            "baton_circuit_breaker_state",
            "Circuit breaker per agent type: 0 closed, 1 half-open, 2 open",
            Family::clone(&breaker_state),
        );
        let commit = HistogramFamily::new(COMMIT_BOUNDS_US);
        r.register(
            "baton_store_commit_seconds",
            "Latency of the store's write calls (queueing and commit), by operation, in seconds",
            HistogramView {
                family: commit.clone(),
                divisor: 1_000_000.0,
            },
        );
        let store_up = Gauge::default();
        r.register(
            "baton_store_up",
            "1 when the store answered the scrape's reads, else 0",
            store_up.clone(),
        );
        let sla_latency = Family::default();
        r.register(
            "baton_sla_latency_seconds",
            "Submit-to-end latency percentiles (50, 95, 99) over the SLA window, in seconds",
            Family::clone(&sla_latency),
        );
        let sla_error_rate = FloatGauge::default();
        r.register(
            "baton_sla_error_rate",
            "Failed over ended (completed + failed) tasks in the SLA window",
            sla_error_rate.clone(),
        );
        let sla_success_rate = FloatGauge::default();
        r.register(
            "baton_sla_success_rate",
            "Completed over ended (completed + failed) tasks in the SLA window",
            sla_success_rate.clone(),
        );
        let sla_throughput = FloatGauge::default();
        r.register(
            "baton_sla_throughput_per_second",
            "Tasks ended per second over the SLA window",
            sla_throughput.clone(),
        );
        let n_buckets = sla_window_ms.div_ceil(10_000).max(1) as usize;
        Arc::new(Metrics {
            registry: r,
            submitted,
            completed,
            failed,
            orch_completed,
            scheduled,
            retries,
            execution,
            runs_processed,
            run_execution,
            lease_expiries,
            shed,
            breaker_state,
            commit,
            queue_depth,
            task_queue_depth,
            agent_healthy,
            pending_per_agent,
            utilization,
            active_runs,
            active_tasks,
            dead_letter,
            tasks_by_status,
            agents_connected,
            store_up,
            sla_latency,
            sla_error_rate,
            sla_success_rate,
            sla_throughput,
            scrape: tokio::sync::Mutex::new(()),
            sla: Mutex::new(sla::Window::new(10_000, n_buckets)),
            started_ms,
        })
    }

    fn task_type(t: &str) -> TaskType {
        TaskType {
            task_type: t.to_string(),
        }
    }

    /// Tasks newly stored, as `(task_type, n)`.
    pub fn tasks_submitted<'a>(&self, by_type: impl IntoIterator<Item = (&'a str, u64)>) {
        for (t, n) in by_type {
            self.submitted.get_or_create(&Self::task_type(t)).inc_by(n);
        }
    }

    pub fn tasks_scheduled(&self, task_type: &str, n: u64) {
        self.scheduled
            .get_or_create(&Self::task_type(task_type))
            .inc_by(n);
    }

    /// A handle for the run-time histogram of one task type.
    pub fn execution_time(&self, task_type: &str) -> HistogramHandle {
        self.execution.get(&Self::task_type(task_type))
    }

    pub fn retries(&self, task_type: &str, n: u64) {
        self.retries
            .get_or_create(&Self::task_type(task_type))
            .inc_by(n);
    }

    pub fn lease_expiries(&self, n: u64) {
        self.lease_expiries.inc_by(n);
    }

    /// Submissions refused to shed load (`reason` is the refusal's, e.g. overloaded).
    pub fn submission_shed(&self, reason: &str, n: u64) {
        self.shed
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// The breaker of an agent of this type changed: 0 closed, 1 half-open, 2 open.
    pub fn set_breaker_state(&self, agent_type: &str, state: i64) {
        self.breaker_state
            .get_or_create(&AgentType {
                agent_type: agent_type.into(),
            })
            .set(state);
    }

    /// A store write call took `elapsed`.
    pub fn store_commit(&self, op: &'static str, elapsed: std::time::Duration) {
        self.commit
            .get(&Op { op: op.into() })
            .observe(elapsed.as_micros().min(u64::MAX as u128) as u64);
    }

    /// A workflow run ended.
    pub fn run_finished(&self, status: &str, duration_ms: u64) {
        let label = StatusLabel {
            status: status.into(),
        };
        self.runs_processed.get_or_create(&label).inc();
        self.run_execution.get(&label).observe(duration_ms);
    }

    /// Tasks that reached a terminal status, at `now_ms`: counters and the SLA window,
    /// with one lookup per task type and status and one lock of the window.
    pub fn tasks_finished(&self, now_ms: u64, finished: &[Finished<'_>]) {
        if finished.is_empty() {
            return;
        }
        let mut groups: Vec<(&str, Status, u64)> = Vec::new();
        for f in finished {
            match groups
                .iter_mut()
                .find(|g| g.0 == f.task_type && g.1 == f.status)
            {
                Some(g) => g.2 += 1,
                None => groups.push((f.task_type, f.status, 1)),
            }
        }
        for (task_type, status, n) in groups {
            let label = Self::task_type(task_type);
            match status {
                Status::Completed => {
                    self.completed.get_or_create(&label).inc_by(n);
                }
                Status::Failed | Status::DeadLettered => {
                    self.failed.get_or_create(&label).inc_by(n);
                }
                _ => {}
            }
            self.orch_completed
                .get_or_create(&TypeStatus {
                    task_type: label.task_type,
                    status: status.as_str().into(),
                })
                .inc_by(n);
        }
        let mut window = self.sla.lock().unwrap_or_else(|p| p.into_inner());
        for f in finished {
            let outcome = match f.status {
                Status::Completed => Outcome::Success,
                Status::Failed | Status::DeadLettered => Outcome::Error,
                _ => Outcome::Neutral,
            };
            window.record(now_ms, f.latency_ms, outcome);
        }
    }

    /// The SLA window's statistics at `now_ms`.
    pub fn sla_stats(&self, now_ms: u64) -> sla::Stats {
        self.sla
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats(now_ms, self.started_ms)
    }

    /// The exposition: OpenMetrics when `openmetrics`, else the classic text format.
    pub async fn render(&self, snapshot: Snapshot, now_ms: u64, openmetrics: bool) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        self.fill(&snapshot, now_ms);
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        if openmetrics {
            out
        } else {
            to_classic_text(&out)
        }
    }

    fn fill(&self, s: &Snapshot, now_ms: u64) {
        self.store_up.set(i64::from(s.store_up));
        self.agents_connected.set(s.agents_connected as i64);
        self.active_tasks.set(s.in_flight as i64);
        self.active_runs.set(s.active_runs as i64);
        self.queue_depth.clear();
        self.task_queue_depth.clear();
        self.tasks_by_status.clear();
        self.agent_healthy.clear();
        self.pending_per_agent.clear();
        self.utilization.clear();
        let queued = |t: &str| {
            s.counts
                .as_ref()
                .and_then(|c| c.queued_by_type.get(t).copied())
                .unwrap_or(0)
        };
        if let Some(c) = &s.counts {
            for (t, n) in &c.queued_by_type {
                self.queue_depth
                    .get_or_create(&Self::task_type(t))
                    .set(*n as i64);
            }
            for status in Status::ALL {
                let n = c.by_status.get(status.as_str()).copied().unwrap_or(0);
                self.tasks_by_status
                    .get_or_create(&StatusLabel {
                        status: status.as_str().into(),
                    })
                    .set(n as i64);
            }
            self.dead_letter.set(
                c.by_status
                    .get(Status::DeadLettered.as_str())
                    .copied()
                    .unwrap_or(0) as i64,
            );
        }
        if let Some(p) = &s.queued_by_priority {
            for prio in baton_core::Priority::ALL {
                self.task_queue_depth
                    .get_or_create(&PriorityLabel {
                        priority: prio.as_str().to_ascii_uppercase(),
                    })
                    .set(p.get(prio.as_str()).copied().unwrap_or(0) as i64);
            }
        }
        let mut types: Vec<&str> = s.by_type.keys().map(String::as_str).collect();
        if let Some(c) = &s.counts {
            types.extend(c.queued_by_type.keys().map(String::as_str));
        }
        types.sort_unstable();
        types.dedup();
        for t in types {
            let load = s.by_type.get(t).cloned().unwrap_or_default();
            let agent = AgentType {
                agent_type: t.to_string(),
            };
            self.agent_healthy
                .get_or_create(&agent)
                .set(load.healthy_agents as i64);
            self.pending_per_agent
                .get_or_create(&Self::task_type(t))
                .set(queued(t) as f64 / load.healthy_agents.max(1) as f64);
            self.utilization
                .get_or_create(&agent)
                .set(if load.capacity == 0 {
                    0.0
                } else {
                    load.in_flight as f64 / load.capacity as f64
                });
        }
        let st = self.sla_stats(now_ms);
        self.sla_latency.clear();
        for (p, v) in [("50", st.p50_ms), ("95", st.p95_ms), ("99", st.p99_ms)] {
            if let Some(v) = v {
                self.sla_latency
                    .get_or_create(&Percentile {
                        percentile: p.into(),
                    })
                    .set(v as f64 / 1000.0);
            }
        }
        self.sla_error_rate.set(st.error_rate.unwrap_or(0.0));
        self.sla_success_rate.set(st.success_rate.unwrap_or(1.0));
        self.sla_throughput.set(st.throughput_per_s);
    }
}

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Rewrites OpenMetrics text as the classic text format: counter families take
/// their samples' `_total` name, and the `# EOF` and `# UNIT` lines go.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn counters_and_histograms_render_in_both_formats() {
        let m = Metrics::new(300_000, 0);
        m.tasks_submitted([("echo", 3), ("fail", 1)]);
        let h = m.execution_time("echo");
        for v in [3, 7, 700] {
            h.observe(v);
        }
        m.tasks_finished(
            1_000,
            &[
                Finished {
                    task_type: "echo",
                    status: Status::Completed,
                    latency_ms: 5,
                },
                Finished {
                    task_type: "fail",
                    status: Status::DeadLettered,
                    latency_ms: 50,
                },
            ],
        );
        let text = m.render(Snapshot::default(), 1_000, false).await;
        assert!(
            text.contains("# TYPE tasks_submitted_total counter\n"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "tasks_submitted_total{task_type=\"echo\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "tasks_failed_total{task_type=\"fail\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "orchestrator_tasks_completed_total{task_type=\"fail\",status=\"dead_lettered\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "task_execution_time_ms_bucket{le=\"5.0\",task_type=\"echo\"}"
            )
            .or_else(|| sample(
                &text,
                "task_execution_time_ms_bucket{task_type=\"echo\",le=\"5.0\"}"
            )),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "task_execution_time_ms_count{task_type=\"echo\"}"),
            Some(3.0)
        );
        // Cumulative buckets: 3 and 7 are under 10, 700 only under 1000 and +Inf.
        for (le, n) in [
            ("10.0", 2.0),
            ("500.0", 2.0),
            ("1000.0", 3.0),
            ("+Inf", 3.0),
        ] {
            assert_eq!(
                sample(
                    &text,
                    &format!("task_execution_time_ms_bucket{{le=\"{le}\",task_type=\"echo\"}}")
                ),
                Some(n),
                "le={le}\n{text}"
            );
        }
        assert_eq!(
            sample(
                &text,
                "orchestrator_task_execution_seconds_sum{task_type=\"echo\"}"
            ),
            Some(0.71)
        );
        assert!(!text.contains("# EOF"));
        let om = m.render(Snapshot::default(), 1_000, true).await;
        assert!(om.contains("# TYPE tasks_submitted counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        // Every family rendered is one the server declares.
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = line.split_once(' ').unwrap();
            assert!(
                FAMILIES.contains(&(name, kind)),
                "{name} {kind} is not in FAMILIES"
            );
        }
    }

    #[tokio::test]
    async fn scrape_time_gauges_follow_the_snapshot() {
        let m = Metrics::new(300_000, 0);
        let mut counts = baton_store::Counts::default();
        counts.queued_by_type.insert("echo".into(), 10);
        counts.by_status.insert("dead_lettered".into(), 4);
        let mut by_type = BTreeMap::new();
        by_type.insert(
            "echo".to_string(),
            TypeLoad {
                healthy_agents: 2,
                capacity: 8,
                in_flight: 2,
            },
        );
        let mut prio = BTreeMap::new();
        prio.insert("critical".to_string(), 7);
        let snap = Snapshot {
            counts: Some(counts),
            queued_by_priority: Some(prio),
            store_up: true,
            by_type,
            agents_connected: 2,
            in_flight: 2,
            active_runs: 1,
        };
        let text = m.render(snap, 0, false).await;
        assert_eq!(sample(&text, "queue_depth{task_type=\"echo\"}"), Some(10.0));
        assert_eq!(
            sample(&text, "agent_healthy{agent_type=\"echo\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "pending_tasks_per_agent{task_type=\"echo\"}"),
            Some(5.0)
        );
        assert_eq!(
            sample(&text, "agent_utilization_ratio{agent_type=\"echo\"}"),
            Some(0.25)
        );
        assert_eq!(
            sample(&text, "task_queue_depth{priority=\"CRITICAL\"}"),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "task_queue_depth{priority=\"LOW\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "orchestrator_dead_letter_queue_size"),
            Some(4.0)
        );
        // The next scrape forgets types that are gone.
        let text = m.render(Snapshot::default(), 0, false).await;
        assert_eq!(sample(&text, "queue_depth{task_type=\"echo\"}"), None);
        assert_eq!(sample(&text, "baton_store_up"), Some(0.0));
    }
}
