//! The agent runtime: registers with a Baton server over one bidirectional gRPC
//! stream, runs each assigned attempt in its own tokio task, reports results in
//! batches until they are acked, heartbeats, reconnects with backoff, and drains on
//! shutdown.
//!
//! One loop owns all state (running attempts, the outbox of unacked results); handler
//! tasks only send their outcome back over a channel. While disconnected the loop
//! keeps collecting outcomes, so handlers survive a reconnect and their results go
//! out on the next connection.

use crate::backoff::Backoff;
use crate::events::Events;
use crate::handler::{execute, Handler, Outcome};
use crate::load::Load;
use crate::outbox::{AckOutcome, AttemptKey, Outbox};
use crate::{Error, HandlerError, Task};
use baton_core::sched::registry::parse_version;
use baton_core::{AgentId, ErrorCode};
use baton_proto::v1;
use baton_proto::v1::agent_message::Msg as AgentMsg;
use baton_proto::v1::agent_service_client::AgentServiceClient;
use baton_proto::v1::server_message::Msg as ServerMsg;
use futures::stream::{BoxStream, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, info_span, warn, Instrument};

/// Largest message the agent accepts: an assignment batch can carry several tasks of
/// up to 8 MiB of input each.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Results are split into frames of about this size, well under a server's default
/// 4 MiB limit; a single larger result still goes out alone.
const MAX_RESULTS_FRAME_BYTES: usize = 1024 * 1024;
/// Used when the server's `Registered` names no heartbeat interval.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long connecting and registering may take before the attempt counts as failed.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// After a drain, how long to wait for the server to end the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Entry point: `Agent::builder(endpoints)...run(handler)`.
pub struct Agent {
    _private: (),
}

impl Agent {
    /// Starts configuring an agent that connects to one of `endpoints` (gRPC URLs such
    /// as `http://127.0.0.1:50051`), moving to the next one whenever a connection fails.
    pub fn builder<I, S>(endpoints: I) -> AgentBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AgentBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            agent_id: None,
            task_types: Vec::new(),
            max_concurrent: 1,
            labels: HashMap::new(),
            version: DEFAULT_VERSION.into(),
            agent_type: None,
            capabilities: Vec::new(),
            service_types: Vec::new(),
            advertised_endpoint: None,
            tags: Vec::new(),
            location: None,
            cost_factor: None,
            weight: None,
            drain_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Configuration of an agent; finish with [`AgentBuilder::run`] or
/// [`AgentBuilder::run_until`].
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    endpoints: Vec<String>,
    agent_id: Option<String>,
    task_types: Vec<String>,
    max_concurrent: u32,
    labels: HashMap<String, String>,
    version: String,
    agent_type: Option<String>,
    capabilities: Vec<String>,
    service_types: Vec<String>,
    /// Seed 004's `endpoint`: where this agent listens, not a server to connect to.
    advertised_endpoint: Option<String>,
    tags: Vec<String>,
    location: Option<String>,
    cost_factor: Option<f64>,
    weight: Option<f64>,
    drain_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl AgentBuilder {
    /// Defaults to `<hostname>-<random hex>` (or `agent-<random hex>`).
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// A task type this agent handles; call once per type (at least one is required).
    pub fn task_type(mut self, task_type: impl Into<String>) -> Self {
        self.task_types.push(task_type.into());
        self
    }

    pub fn task_types<I, S>(mut self, task_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.task_types
            .extend(task_types.into_iter().map(Into::into));
        self
    }

    /// How many attempts may run at once (default 1). The server never assigns more;
    /// the agent also queues any excess locally rather than run it.
    pub fn max_concurrent(mut self, max_concurrent: u32) -> Self {
        self.max_concurrent = max_concurrent;
        self
    }

    /// A label the server can route on (`zone = a`).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The agent's own version, a semantic version such as `2.1.0` (default
    /// `0.0.0`): shown in `baton agents` and matched by discovery's version ranges.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The agent's kind (seed 004's `agent_type`, such as `CarbonCalculatorAgent`):
    /// per-type hourly cost budgets and `type:` content rules use it. Default: the
    /// server takes the first task type.
    pub fn agent_type(mut self, agent_type: impl Into<String>) -> Self {
        self.agent_type = Some(agent_type.into());
        self
    }

    /// Something the agent can do besides its task types, matched by discovery
    /// (`scope3_emissions`); call once per capability.
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// One of seed 004's service types (`computation`, ...); call once per type.
    pub fn service_type(mut self, service_type: impl Into<String>) -> Self {
        self.service_types.push(service_type.into());
        self
    }

    /// Where this agent can be reached directly (seed 004's `endpoint`, such as
    /// `tcp://10.0.1.50:5000`), shown in discovery. Not a server address: those are
    /// given to [`Agent::builder`].
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.advertised_endpoint = Some(endpoint.into());
        self
    }

    /// A free-form label that content rules (`tag:<tag>`) and discovery match; call
    /// once per tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Region or zone (`us-east-1`), matched by discovery's location preference.
    pub fn location(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    /// Seed 001's `cost_factor`: the price of an hour of this agent's work, in the
    /// unit of the cost budgets; the cost-based strategy prefers lower (default 1).
    pub fn cost_factor(mut self, cost_factor: f64) -> Self {
        self.cost_factor = Some(cost_factor);
        self
    }

    /// Relative share of work under the weighted strategies (default 1; 0 takes
    /// the agent out of them).
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = Some(weight);
        self
    }

    /// How long a shutdown waits for running attempts to finish and their results to
    /// be acked before aborting them (default 30 s).
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Reconnect delays grow from `min` to `max`, doubling, with jitter
    /// (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Runs until SIGTERM or ctrl-c, then drains: tells the server to stop assigning,
    /// waits for running attempts and their acks, and returns. A second signal stops
    /// at once.
    pub async fn run<H: Handler>(self, handler: H) -> Result<(), Error> {
        let signals = shutdown_signals()
            .map_err(|e| Error::Config(format!("cannot listen for shutdown signals: {e}")))?;
        self.start(handler, signals).await
    }

    /// Like [`run`](Self::run), but drains when `shutdown` completes instead of on a
    /// signal, so tests and embedding programs decide when to stop.
    pub async fn run_until<H, F>(self, handler: H, shutdown: F) -> Result<(), Error>
    where
        H: Handler,
        F: Future + Send + 'static,
    {
        self.start(
            handler,
            futures::stream::once(async move {
                shutdown.await;
            }),
        )
        .await
    }

    async fn start<H: Handler>(
        self,
        handler: H,
        shutdown: impl futures::Stream<Item = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let config = self.validate()?;
        let span = info_span!("agent", agent_id = %config.agent_id);
        // The agent's loop runs as a task of its own on the runtime's workers:
        // awaited in place, it would run wherever the caller is polled — the
        // main thread under `#[tokio::main]` — and every message between it and
        // the connection's tasks would cost a thread switch each way.
        let runner = tokio::spawn(
            Runner::new(config, Arc::new(handler), shutdown.boxed())
                .run()
                .instrument(span),
        );
        match runner.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime itself shuts down.
            Err(_) => Ok(()),
        }
    }

    fn validate(self) -> Result<Config, Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.endpoints.is_empty() {
            return bad("at least one endpoint is required".into());
        }
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for raw in &self.endpoints {
            let url = if raw.contains("://") {
                raw.clone()
            } else {
                format!("http://{raw}")
            };
            if !url.starts_with("http://") {
                return bad(format!(
                    "endpoint {raw:?} is not supported: use http://host:port"
                ));
            }
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::Config(format!("endpoint {raw:?} is not a valid url: {e}")))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true);
            endpoints.push((url, endpoint));
        }
        let agent_id = AgentId::parse(self.agent_id.unwrap_or_else(default_agent_id))
            .map_err(|e| Error::Config(e.message))?;
        if self.task_types.is_empty() {
            return bad("at least one task type is required".into());
        }
        let mut seen = HashSet::new();
        let mut task_types = Vec::new();
        for t in self.task_types {
            if let Err(msg) = baton_core::task::validate_task_type(&t) {
                return bad(format!("task type {t:?} {msg}"));
            }
            if seen.insert(t.clone()) {
                task_types.push(t);
            }
        }
        if self.max_concurrent == 0 {
            return bad("max_concurrent must be at least 1".into());
        }
        if self.backoff_min.is_zero() {
            return bad("the minimum reconnect backoff must be greater than zero".into());
        }
        let version = parse_version(&self.version).map_err(|e| Error::Config(e.message))?;
        let agent_type = match self.agent_type {
            Some(t) => non_blank("agent_type", t)?,
            None => String::new(),
        };
        let advertised_endpoint = match self.advertised_endpoint {
            Some(e) => non_blank("endpoint", e)?,
            None => String::new(),
        };
        let location = match self.location {
            Some(l) => non_blank("location", l)?,
            None => String::new(),
        };
        Ok(Config {
            register: v1::Register {
                agent_id: agent_id.as_str().to_string(),
                task_types,
                version: version.to_string(),
                max_concurrent: self.max_concurrent,
                labels: self.labels,
                agent_type,
                capabilities: non_blank_list("capability", self.capabilities)?,
                service_types: non_blank_list("service_type", self.service_types)?,
                endpoint: advertised_endpoint,
                tags: non_blank_list("tag", self.tags)?,
                location,
                cost_factor: non_negative("cost_factor", self.cost_factor)?,
                weight: non_negative("weight", self.weight)?,
            },
            agent_id,
            endpoints,
            max_concurrent: self.max_concurrent as usize,
            drain_timeout: self.drain_timeout,
            backoff: Backoff::new(self.backoff_min, self.backoff_max),
        })
    }
}

/// The version an agent declares unless it says otherwise: a valid semantic
/// version that every real release sorts after.
const DEFAULT_VERSION: &str = "0.0.0";

/// A descriptor text field: refused when empty or blank, trimmed otherwise.
fn non_blank(field: &str, value: String) -> Result<String, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Error::Config(format!("{field} must not be empty")));
    }
    Ok(trimmed.to_string())
}

/// Each entry as [`non_blank`], duplicates dropped, first occurrence kept.
fn non_blank_list(field: &str, values: Vec<String>) -> Result<Vec<String>, Error> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let v = non_blank(field, v)?;
        if seen.insert(v.clone()) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Cost factors and weights: a finite number of at least 0 when given.
fn non_negative(field: &str, value: Option<f64>) -> Result<Option<f64>, Error> {
    match value {
        Some(x) if !(x.is_finite() && x >= 0.0) => Err(Error::Config(format!(
            "{field} must be a finite number of at least 0, got {x}"
        ))),
        other => Ok(other),
    }
}

struct Config {
    agent_id: AgentId,
    register: v1::Register,
    endpoints: Vec<(String, Endpoint)>,
    max_concurrent: usize,
    drain_timeout: Duration,
    backoff: Backoff,
}

fn default_agent_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(64)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// SIGTERM or ctrl-c, as a stream: the first one drains, a second one stops at once.
fn shutdown_signals() -> std::io::Result<BoxStream<'static, ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())?;
        Ok(futures::stream::unfold(term, |mut term| async move {
            tokio::select! {
                _ = term.recv() => info!("sigterm received"),
                _ = tokio::signal::ctrl_c() => info!("interrupt received"),
            }
            Some(((), term))
        })
        .boxed())
    }
    #[cfg(not(unix))]
    {
        Ok(futures::stream::unfold((), |()| async move {
            let _ = tokio::signal::ctrl_c().await;
            info!("interrupt received");
            Some(((), ()))
        })
        .boxed())
    }
}

/// An attempt's handler finished.
struct Done {
    key: AttemptKey,
    outcome: Outcome,
    /// How long the handler ran, for the heartbeat's response time.
    elapsed: Duration,
}

/// What a handler task tells the loop, in the order it happened: the events it
/// emitted, then its outcome (one channel, so no event overtakes the result).
enum Report {
    Progress(v1::ProgressEvent),
    Done(Done),
}

/// Events held for the next frame at most; beyond, new ones are dropped (they are
/// best effort, and a handler emitting this fast outruns any client anyway).
const MAX_PENDING_EVENTS: usize = 10_000;

/// Why the agent stops before it is done with everything.
enum Stop {
    /// Draining, and every attempt finished and was acked.
    Drained,
    /// Draining took longer than the drain timeout.
    TimedOut,
    /// A second shutdown signal arrived while draining.
    Forced,
    /// The server refused the registration for good.
    Rejected { code: String, message: String },
}

/// One registered stream.
struct Session {
    tx: mpsc::UnboundedSender<v1::AgentMessage>,
    stream: tonic::Streaming<v1::ServerMessage>,
    registered: v1::Registered,
}

enum OpenError {
    Transport(String),
    Rejected { code: String, message: String },
}

struct Runner<'a> {
    config: Config,
    handler: Arc<dyn Handler>,
    /// First item: drain. Second item: stop without waiting.
    shutdown: BoxStream<'a, ()>,
    shutdown_closed: bool,
    done_tx: mpsc::UnboundedSender<Report>,
    done_rx: mpsc::UnboundedReceiver<Report>,
    /// Events of running attempts waiting for the next `Progress` frame.
    progress: Vec<v1::ProgressEvent>,
    n_events_dropped: u64,
    running: HashMap<AttemptKey, AbortHandle>,
    /// The `traceparent` of each traced running attempt's span, sent back with its result.
    traces: HashMap<AttemptKey, String>,
    /// Assigned beyond `max_concurrent` (only after a reconnect, while attempts from
    /// the previous connection still run); started as slots free.
    queued: VecDeque<v1::Assignment>,
    outbox: Outbox,
    /// Recent results and CPU use, for the heartbeats.
    load: Load,
    draining: bool,
    drain_deadline: Option<Instant>,
}

impl<'a> Runner<'a> {
    fn new(config: Config, handler: Arc<dyn Handler>, shutdown: BoxStream<'a, ()>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            config,
            handler,
            shutdown,
            shutdown_closed: false,
            done_tx,
            done_rx,
            progress: Vec::new(),
            n_events_dropped: 0,
            running: HashMap::new(),
            traces: HashMap::new(),
            queued: VecDeque::new(),
            outbox: Outbox::default(),
            load: Load::new(),
            draining: false,
            drain_deadline: None,
        }
    }

    async fn run(mut self) -> Result<(), Error> {
        // Consecutive connection attempts that failed, or sessions that ended early.
        let mut n_failures: u64 = 0;
        let mut endpoint_index = 0;
        let stop = loop {
            if n_failures > 0 {
                let delay = self.config.backoff.next_delay(rand::random::<f64>());
                if let Err(stop) = self.idle_until(tokio::time::sleep(delay)).await {
                    break stop;
                }
            }
            let (url, endpoint) =
                self.config.endpoints[endpoint_index % self.config.endpoints.len()].clone();
            let opening = tokio::time::timeout(
                REGISTER_TIMEOUT,
                open_session(endpoint, self.config.register.clone()),
            );
            let session = match self.idle_until(opening).await {
                Err(stop) => break stop,
                Ok(Err(_elapsed)) => Err(OpenError::Transport(format!(
                    "no registration within {} s",
                    REGISTER_TIMEOUT.as_secs()
                ))),
                Ok(Ok(opened)) => opened,
            };
            n_failures += 1;
            match session {
                Ok(session) => {
                    info!(endpoint = %url, session_id = %session.registered.session_id, "registered");
                    let started = Instant::now();
                    match self.serve(session).await {
                        Ok(reason) => {
                            warn!(endpoint = %url, reason = %reason, "connection lost, reconnecting")
                        }
                        Err(stop) => break stop,
                    }
                    // A server that accepts and then drops every session must not be
                    // hammered, so only a session that lasted resets the backoff.
                    if started.elapsed() >= STABLE_SESSION {
                        self.config.backoff.reset();
                        n_failures = 1;
                    }
                }
                Err(OpenError::Rejected { code, message }) if is_fatal(&code) => {
                    break Stop::Rejected { code, message }
                }
                Err(OpenError::Rejected { code, message }) => {
                    warn!(endpoint = %url, code = %code, reason = %message, n_failures, "registration refused, retrying");
                }
                Err(OpenError::Transport(reason)) => {
                    warn!(endpoint = %url, reason = %reason, n_failures, "cannot connect, retrying");
                }
            }
            endpoint_index += 1;
        };
        self.finish(stop)
    }

    fn finish(&mut self, stop: Stop) -> Result<(), Error> {
        let n_running = self.running.len() + self.queued.len();
        let n_unacked = self.outbox.len();
        for (_, handle) in self.running.drain() {
            handle.abort();
        }
        match stop {
            Stop::Drained => {
                info!("drained, stopping");
                Ok(())
            }
            Stop::TimedOut => {
                warn!(
                    n_running,
                    n_unacked, "drain timed out, abandoning in-flight attempts"
                );
                Ok(())
            }
            Stop::Forced => {
                warn!(
                    n_running,
                    n_unacked, "second shutdown signal, abandoning in-flight attempts"
                );
                Ok(())
            }
            Stop::Rejected { code, message } => {
                warn!(code = %code, reason = %message, "registration refused, stopping");
                Err(Error::Rejected { code, message })
            }
        }
    }

    /// Waits for `fut` while disconnected, still collecting handler outcomes and
    /// watching for shutdown.
    async fn idle_until<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::pin!(fut);
        loop {
            if self.is_drained() {
                return Err(Stop::Drained);
            }
            tokio::select! {
                out = &mut fut => return Ok(out),
                Some(report) = self.done_rx.recv() => {
                    self.on_report(report);
                    // Nobody to relay events to while disconnected.
                    self.progress.clear();
                }
                signal = self.shutdown.next(), if !self.shutdown_closed => {
                    self.on_shutdown_signal(signal)?;
                }
                _ = sleep_until(self.drain_deadline.unwrap_or_else(Instant::now)), if self.drain_deadline.is_some() => {
                    return Err(Stop::TimedOut);
                }
            }
        }
    }

    /// Serves one registered stream until it is lost (`Ok(reason)`) or the agent stops.
    async fn serve(&mut self, session: Session) -> Result<String, Stop> {
        let Session {
            tx,
            mut stream,
            registered,
        } = session;
        if self.draining {
            send(&tx, AgentMsg::Drain(v1::Drain {}));
        }
        // Whatever finished while disconnected, and everything sent on the previous
        // connection but never acked, goes out first.
        self.collect_done();
        self.outbox.requeue_unacked();
        self.flush(&tx);
        let period = match registered.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        self.load.set_heartbeat_interval(period);
        // An immediate heartbeat tells the server which attempts this agent still
        // holds from before the reconnect.
        self.send_heartbeat(&tx);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.is_drained() {
                close(tx, stream).await;
                return Err(Stop::Drained);
            }
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        if let Err(reason) = self.on_server_message(message, &tx) {
                            return Ok(reason);
                        }
                    }
                    Some(Err(status)) => return Ok(format!("stream failed: {}", status.message())),
                    None => return Ok("server closed the stream".into()),
                },
                Some(report) = self.done_rx.recv() => {
                    self.on_report(report);
                    self.collect_done();
                    self.flush(&tx);
                }
                _ = heartbeat.tick() => self.send_heartbeat(&tx),
                signal = self.shutdown.next(), if !self.shutdown_closed => {
                    if self.on_shutdown_signal(signal)? {
                        send(&tx, AgentMsg::Drain(v1::Drain {}));
                    }
                }
                _ = sleep_until(self.drain_deadline.unwrap_or_else(Instant::now)), if self.drain_deadline.is_some() => {
                    return Err(Stop::TimedOut);
                }
            }
        }
    }

    fn on_server_message(
        &mut self,
        message: v1::ServerMessage,
        tx: &mpsc::UnboundedSender<v1::AgentMessage>,
    ) -> Result<(), String> {
        match message.msg {
            Some(ServerMsg::Assignments(batch)) => {
                for assignment in batch.assignments {
                    self.accept(assignment);
                }
                self.start_queued();
                // Assignments that could not be decoded already have a result.
                self.flush(tx);
            }
            Some(ServerMsg::Cancels(cancels)) => {
                for key in cancels.attempts {
                    self.cancel(key);
                }
                self.start_queued();
            }
            Some(ServerMsg::Acks(acks)) => {
                for ack in acks.acks {
                    match self.outbox.ack(&ack) {
                        AckOutcome::Accepted => {
                            debug!(task_id = %ack.task_id, attempt = ack.attempt, "result stored")
                        }
                        AckOutcome::Refused { code, message }
                            if code == ErrorCode::StaleAttempt.as_str() =>
                        {
                            debug!(task_id = %ack.task_id, attempt = ack.attempt, reason = %message, "result refused as stale, dropped")
                        }
                        AckOutcome::Refused { code, message } => {
                            warn!(task_id = %ack.task_id, attempt = ack.attempt, code = %code, reason = %message, "result refused, dropped")
                        }
                        AckOutcome::Unknown => {
                            debug!(task_id = %ack.task_id, attempt = ack.attempt, "ack for no pending result")
                        }
                    }
                }
            }
            Some(ServerMsg::Error(e)) => {
                return Err(format!("server error: {}: {}", e.code, e.message))
            }
            Some(ServerMsg::Registered(_)) | None => debug!("unexpected server message ignored"),
        }
        Ok(())
    }

    fn accept(&mut self, assignment: v1::Assignment) {
        let key = v1::AttemptRef {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
        };
        if self.running.contains_key(&key)
            || self.outbox.contains(&key)
            || self.queued.iter().any(|q| same_attempt(q, &key))
        {
            debug!(task_id = %key.task_id, attempt = key.attempt, "duplicate assignment ignored");
            return;
        }
        // The server fences by attempt: once it assigns a newer attempt, an older one
        // held here can never be accepted, so stop working on it.
        let superseded: Vec<AttemptKey> = self
            .running
            .keys()
            .filter(|k| k.task_id == key.task_id && k.attempt < key.attempt)
            .cloned()
            .collect();
        for old in superseded {
            info!(task_id = %old.task_id, attempt = old.attempt, "attempt superseded by a newer one, aborted");
            self.cancel(old);
        }
        self.queued
            .retain(|q| !(q.task_id == key.task_id && q.attempt < key.attempt));
        if self.draining {
            debug!(task_id = %key.task_id, attempt = key.attempt, "assignment arrived while draining, running it");
        }
        self.queued.push_back(assignment);
    }

    fn start_queued(&mut self) {
        while self.running.len() < self.config.max_concurrent {
            let Some(assignment) = self.queued.pop_front() else {
                break;
            };
            self.start(assignment);
        }
    }

    fn start(&mut self, mut assignment: v1::Assignment) {
        let key = v1::AttemptRef {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
        };
        let traceparent = std::mem::take(&mut assignment.traceparent);
        let task = match Task::from_assignment(assignment) {
            Ok(task) => task,
            Err(reason) => {
                warn!(task_id = %key.task_id, attempt = key.attempt, reason = %reason, "assignment cannot be decoded");
                let err = HandlerError::permanent(format!("invalid assignment: {reason}"));
                self.outbox.push(to_result(key, Err(err)));
                return;
            }
        };
        debug!(task_id = %key.task_id, attempt = key.attempt, task_type = %task.task_type, "attempt started");
        let span = info_span!("task", otel.name = "agent.attempt", otel.kind = "consumer", task_id = %key.task_id, attempt = key.attempt, task_type = %task.task_type);
        let own_traceparent = crate::trace_context::adopt(&span, &traceparent);
        if !own_traceparent.is_empty() {
            self.traces.insert(key.clone(), own_traceparent);
        }
        let handler = self.handler.clone();
        let done_tx = self.done_tx.clone();
        let done_key = key.clone();
        let mut task = task;
        let events_tx = self.done_tx.clone();
        let events_key = key.clone();
        task.events = Events::new(move |e| {
            let _ = events_tx.send(Report::Progress(v1::ProgressEvent {
                task_id: events_key.task_id.clone(),
                attempt: events_key.attempt,
                kind: e.kind,
                data_json: e.data.to_string(),
            }));
        });
        let join = tokio::spawn(
            async move {
                let started = Instant::now();
                let outcome = execute(&*handler, task).await;
                // Fails only when the agent has stopped; nobody is left to tell.
                let _ = done_tx.send(Report::Done(Done {
                    key: done_key,
                    outcome,
                    elapsed: started.elapsed(),
                }));
            }
            .instrument(span),
        );
        self.running.insert(key, join.abort_handle());
    }

    fn cancel(&mut self, key: AttemptKey) {
        self.traces.remove(&key);
        if let Some(handle) = self.running.remove(&key) {
            handle.abort();
            info!(task_id = %key.task_id, attempt = key.attempt, "attempt cancelled");
        } else if let Some(pos) = self.queued.iter().position(|q| same_attempt(q, &key)) {
            self.queued.remove(pos);
            info!(task_id = %key.task_id, attempt = key.attempt, "queued attempt cancelled");
        } else if self.outbox.forget(&key).is_some() {
            debug!(task_id = %key.task_id, attempt = key.attempt, "attempt cancelled after it finished, result dropped");
        } else {
            debug!(task_id = %key.task_id, attempt = key.attempt, "cancel for an unknown attempt ignored");
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Done(done) => self.on_done(done),
            Report::Progress(event) => {
                let key = v1::AttemptRef {
                    task_id: event.task_id.clone(),
                    attempt: event.attempt,
                };
                // An attempt cancelled or superseded has no one left to hear it.
                if !self.running.contains_key(&key) {
                    return;
                }
                if self.progress.len() >= MAX_PENDING_EVENTS {
                    self.n_events_dropped += 1;
                    if self.n_events_dropped.is_power_of_two() {
                        warn!(
                            n_dropped = self.n_events_dropped,
                            "events arrive faster than they can be sent; dropping"
                        );
                    }
                    return;
                }
                self.progress.push(event);
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        let Done {
            key,
            outcome,
            elapsed,
        } = done;
        // Not running any more means it was cancelled or superseded after it
        // finished but before this loop saw it: send nothing.
        if self.running.remove(&key).is_none() {
            debug!(task_id = %key.task_id, attempt = key.attempt, "outcome of a cancelled attempt dropped");
            return;
        }
        match &outcome {
            Ok(_) => debug!(task_id = %key.task_id, attempt = key.attempt, "attempt succeeded"),
            Err(e) => {
                info!(task_id = %key.task_id, attempt = key.attempt, kind = %e.kind(), error = %e.message(), "attempt failed")
            }
        }
        self.load.record(&outcome, elapsed);
        let traceparent = self.traces.remove(&key).unwrap_or_default();
        let mut result = to_result(key, outcome);
        result.traceparent = traceparent;
        self.outbox.push(result);
        self.start_queued();
    }

    /// Takes every outcome and event already waiting, so they leave in one frame.
    fn collect_done(&mut self) {
        while let Ok(report) = self.done_rx.try_recv() {
            self.on_report(report);
        }
    }

    /// Sends waiting events, then results: an attempt's events reach the server
    /// before its result ends it.
    fn flush(&mut self, tx: &mpsc::UnboundedSender<v1::AgentMessage>) {
        let mut events = std::mem::take(&mut self.progress).into_iter().peekable();
        while events.peek().is_some() {
            let mut frame = Vec::new();
            let mut bytes = 0;
            while let Some(e) = events.next_if(|e| {
                frame.is_empty()
                    || bytes + prost::Message::encoded_len(e) <= MAX_RESULTS_FRAME_BYTES
            }) {
                bytes += prost::Message::encoded_len(&e);
                frame.push(e);
            }
            send(tx, AgentMsg::Progress(v1::Progress { events: frame }));
        }
        loop {
            let results = self.outbox.take_batch(MAX_RESULTS_FRAME_BYTES);
            if results.is_empty() {
                break;
            }
            debug!(n_results = results.len(), "sending results");
            send(tx, AgentMsg::Results(v1::Results { results }));
        }
    }

    fn send_heartbeat(&mut self, tx: &mpsc::UnboundedSender<v1::AgentMessage>) {
        // Finished attempts whose results are not yet acked are still held here.
        let in_flight = self
            .running
            .keys()
            .cloned()
            .chain(self.queued.iter().map(|q| v1::AttemptRef {
                task_id: q.task_id.clone(),
                attempt: q.attempt,
            }))
            .chain(self.outbox.keys().cloned())
            .collect();
        let (cpu_usage, error_rate, response_time_ms) = self.load.heartbeat_fields();
        send(
            tx,
            AgentMsg::Heartbeat(v1::Heartbeat {
                in_flight,
                cpu_usage,
                error_rate,
                response_time_ms,
            }),
        );
    }

    /// Returns whether this signal started the drain.
    fn on_shutdown_signal(&mut self, signal: Option<()>) -> Result<bool, Stop> {
        match signal {
            None => {
                self.shutdown_closed = true;
                Ok(false)
            }
            Some(()) if self.draining => Err(Stop::Forced),
            Some(()) => {
                self.draining = true;
                self.drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                info!(
                    n_running = self.running.len() + self.queued.len(),
                    n_unacked = self.outbox.len(),
                    drain_timeout_ms = self.config.drain_timeout.as_millis() as u64,
                    "draining"
                );
                Ok(true)
            }
        }
    }

    fn is_drained(&self) -> bool {
        self.draining && self.running.is_empty() && self.queued.is_empty() && self.outbox.is_empty()
    }
}

fn same_attempt(assignment: &v1::Assignment, key: &AttemptKey) -> bool {
    assignment.task_id == key.task_id && assignment.attempt == key.attempt
}

/// Only a refusal that no retry can fix stops the agent; anything else (the server
/// is overloaded, the previous session is still being cleaned up) is retried.
fn is_fatal(code: &str) -> bool {
    code == ErrorCode::InvalidArgument.as_str()
}

fn to_result(key: AttemptKey, outcome: Outcome) -> v1::Result {
    let outcome = match outcome {
        Ok(output) => v1::result::Outcome::Success(v1::Success {
            output_json: output.to_string(),
        }),
        Err(e) => v1::result::Outcome::Failure(e.to_proto()),
    };
    v1::Result {
        task_id: key.task_id,
        attempt: key.attempt,
        outcome: Some(outcome),
        traceparent: String::new(),
    }
}

/// A failed send means the connection is gone; the stream reports that next.
fn send(tx: &mpsc::UnboundedSender<v1::AgentMessage>, msg: AgentMsg) {
    let _ = tx.send(v1::AgentMessage { msg: Some(msg) });
}

/// Ends the request stream and gives the server a moment to end its side.
async fn close(
    tx: mpsc::UnboundedSender<v1::AgentMessage>,
    mut stream: tonic::Streaming<v1::ServerMessage>,
) {
    drop(tx);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

async fn open_session(endpoint: Endpoint, register: v1::Register) -> Result<Session, OpenError> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| OpenError::Transport(describe(&e)))?;
    let mut client = AgentServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::unbounded_channel();
    send(&tx, AgentMsg::Register(register));
    let mut stream = client
        .connect(UnboundedReceiverStream::new(rx))
        .await
        .map_err(status_error)?
        .into_inner();
    match stream.next().await {
        Some(Ok(v1::ServerMessage {
            msg: Some(ServerMsg::Registered(registered)),
        })) => Ok(Session {
            tx,
            stream,
            registered,
        }),
        Some(Ok(v1::ServerMessage {
            msg: Some(ServerMsg::Error(e)),
        })) => Err(OpenError::Rejected {
            code: e.code,
            message: e.message,
        }),
        Some(Ok(_)) => Err(OpenError::Transport(
            "the server's first message is not registered".into(),
        )),
        Some(Err(status)) => Err(status_error(status)),
        None => Err(OpenError::Transport(
            "the server closed the stream before registering".into(),
        )),
    }
}

/// A gRPC status in place of an `ErrorReply` still counts as a refusal when it
/// carries a Baton error code.
fn status_error(status: tonic::Status) -> OpenError {
    let err = baton_proto::from_status(&status);
    if err.code == ErrorCode::InvalidArgument {
        return OpenError::Rejected {
            code: err.code.as_str().into(),
            message: err.message,
        };
    }
    OpenError::Transport(format!("{:?}: {}", status.code(), status.message()))
}

/// An error with its causes, since a transport error alone says only "transport error".
fn describe(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> AgentBuilder {
        Agent::builder(["http://127.0.0.1:1"]).task_type("echo")
    }

    #[test]
    fn valid_config_builds_the_register_message() {
        let config = builder()
            .agent_id("echo-1")
            .task_types(["echo", "sleep", "echo"])
            .max_concurrent(16)
            .label("zone", "a")
            .version("1.0.0")
            .validate()
            .unwrap();
        assert_eq!(config.register.agent_id, "echo-1");
        assert_eq!(config.register.task_types, ["echo", "sleep"]);
        assert_eq!(config.register.max_concurrent, 16);
        assert_eq!(
            config.register.labels.get("zone").map(String::as_str),
            Some("a")
        );
        assert_eq!(config.register.version, "1.0.0");
        // Nothing of seed 004's descriptor was declared: the defaults go out.
        assert_eq!(config.register.agent_type, "");
        assert!(config.register.capabilities.is_empty());
        assert!(config.register.tags.is_empty());
        assert_eq!(config.register.location, "");
        assert_eq!(config.register.cost_factor, None);
        assert_eq!(config.register.weight, None);
    }

    #[test]
    fn descriptor_fields_reach_the_register_message() {
        let register = builder()
            .agent_type(" CarbonCalculatorAgent ")
            .version(" 2.1.0-rc.1+build.5 ")
            .capability("carbon_calculation")
            .capability("scope3_emissions")
            .capability("carbon_calculation")
            .service_type("computation")
            .endpoint("tcp://10.0.1.50:5000")
            .tag("production")
            .tag("gpu")
            .tag("production")
            .location("us-east-1")
            .cost_factor(0.0)
            .weight(2.5)
            .validate()
            .unwrap()
            .register;
        assert_eq!(register.agent_type, "CarbonCalculatorAgent");
        assert_eq!(register.version, "2.1.0-rc.1+build.5");
        assert_eq!(
            register.capabilities,
            ["carbon_calculation", "scope3_emissions"]
        );
        assert_eq!(register.service_types, ["computation"]);
        assert_eq!(register.endpoint, "tcp://10.0.1.50:5000");
        assert_eq!(register.tags, ["production", "gpu"]);
        assert_eq!(register.location, "us-east-1");
        assert_eq!(register.cost_factor, Some(0.0));
        assert_eq!(register.weight, Some(2.5));
    }

    #[test]
    fn default_version_is_semver() {
        let version = builder().validate().unwrap().register.version;
        assert_eq!(version, DEFAULT_VERSION);
        assert!(parse_version(&version).is_ok());
    }

    #[test]
    fn default_agent_id_is_valid_and_unique() {
        let a = builder().validate().unwrap().agent_id;
        let b = builder().validate().unwrap().agent_id;
        assert_ne!(a, b);
        assert!(AgentId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn bare_host_port_means_http() {
        let config = Agent::builder(["127.0.0.1:50051"])
            .task_type("echo")
            .validate()
            .unwrap();
        assert_eq!(config.endpoints[0].0, "http://127.0.0.1:50051");
    }

    #[test]
    fn bad_configs_are_refused() {
        let no_endpoints: [&str; 0] = [];
        let cases = [
            (Agent::builder(no_endpoints).task_type("echo"), "endpoint"),
            (
                Agent::builder(["https://example.com"]).task_type("echo"),
                "https",
            ),
            (
                Agent::builder(["http://a b"]).task_type("echo"),
                "valid url",
            ),
            (Agent::builder(["http://127.0.0.1:1"]), "task type"),
            (builder().task_type("bad type"), "bad type"),
            (builder().agent_id("a/b"), "agent_id"),
            (builder().max_concurrent(0), "max_concurrent"),
            (
                builder().reconnect_backoff(Duration::ZERO, Duration::from_secs(1)),
                "backoff",
            ),
            (builder().version("unknown"), "not a semantic version"),
            (builder().version("2.1"), "version \"2.1\""),
            (builder().version(""), "version"),
            (
                builder().cost_factor(-0.5),
                "cost_factor must be a finite number of at least 0, got -0.5",
            ),
            (builder().cost_factor(f64::NAN), "cost_factor"),
            (builder().cost_factor(f64::INFINITY), "got inf"),
            (
                builder().weight(-1.0),
                "weight must be a finite number of at least 0, got -1",
            ),
            (builder().weight(f64::NEG_INFINITY), "weight"),
            (builder().agent_type("  "), "agent_type must not be empty"),
            (builder().capability(""), "capability must not be empty"),
            (
                builder().service_type(" "),
                "service_type must not be empty",
            ),
            (builder().tag(""), "tag must not be empty"),
            (builder().location(""), "location must not be empty"),
            (builder().endpoint(""), "endpoint must not be empty"),
        ];
        for (b, want) in cases {
            match b.validate() {
                Err(Error::Config(msg)) => {
                    assert!(msg.contains(want), "{msg:?} should mention {want:?}")
                }
                Err(other) => panic!("unexpected error {other}"),
                Ok(_) => panic!("config mentioning {want:?} should be refused"),
            }
        }
    }

    #[test]
    fn only_invalid_argument_is_fatal() {
        assert!(is_fatal("invalid_argument"));
        for code in [
            "unavailable",
            "resource_exhausted",
            "conflict",
            "internal",
            "",
        ] {
            assert!(!is_fatal(code), "{code}");
        }
    }

    #[test]
    fn outcomes_become_wire_results() {
        let key = v1::AttemptRef {
            task_id: "t".into(),
            attempt: 3,
        };
        let ok = to_result(key.clone(), Ok(serde_json::json!({"a": 1})));
        assert_eq!(
            ok.outcome,
            Some(v1::result::Outcome::Success(v1::Success {
                output_json: r#"{"a":1}"#.into()
            }))
        );
        let failed = to_result(key, Err(HandlerError::permanent("no")));
        assert_eq!(failed.attempt, 3);
        assert_eq!(
            failed.outcome,
            Some(v1::result::Outcome::Failure(
                HandlerError::permanent("no").to_proto()
            ))
        );
    }
}
