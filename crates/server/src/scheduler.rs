//! The scheduler's state on this replica, around the pure core in
//! `baton_core::sched`: the agent registry (descriptors, heartbeat load, health),
//! a circuit breaker per agent, a router per task type, token buckets per task
//! type and per `rate_limit_key`, running counts per `concurrency_key`, and the
//! hourly budgets per agent type.
//!
//! The dispatcher owns one [`Sched`] behind its state lock and asks it two
//! things: which agents may take work at all ([`Sched::admits_agent`], for the
//! fast path that lets free agents claim in bulk), and, for task types that need
//! per-task decisions, which of a window of queued tasks goes to which agent
//! ([`Sched::decide`]). Every decision function here is synchronous and takes
//! the time as an argument; the IO (peeking, claiming, sending) is the
//! dispatcher's.

use crate::config::SchedulerConfig;
use baton_core::sched::breaker::{self, Breakers, Outcome, Phase};
use baton_core::sched::flow::budget::{check_task_budget, HourlyBudgets};
use baton_core::sched::flow::concurrency::KeyedQueue;
use baton_core::sched::flow::rate::{RateLimit, RateLimiter, TokenBucket, DEFAULT_MAX_KEYS};
use baton_core::sched::flow::{PreemptPolicy, QueueKey, ShedPolicy};
use baton_core::sched::hints::{TaskFacts, DEFAULT_MIN_HEALTH};
use baton_core::sched::registry::{self, Descriptor, HeartbeatLoad, Registry};
use baton_core::sched::routing::Strategy;
use baton_core::sched::routing::{self, cost_score, parse_rules, AgentView, Router, Snapshot};
use baton_core::sched::Hints;
use baton_core::workflow::def::Resources;
use baton_core::{AgentId, Error, Millis, Priority, TaskId, TaskSpec};
use baton_proto::v1;
use std::collections::{BTreeSet, HashMap};

/// The scheduler settings, checked: what [`SchedulerConfig`] says, parsed.
#[derive(Debug, Clone)]
pub struct Policies {
    pub capacity: u64,
    pub shed: ShedPolicy,
    pub breaker: breaker::Options,
    pub default_strategy: Strategy,
    pub preempt: Option<PreemptPolicy>,
    pub key_concurrency: u32,
    pub key_concurrency_overrides: HashMap<String, u32>,
    pub key_rate: RateLimit,
    pub key_rate_overrides: HashMap<String, RateLimit>,
    pub types: HashMap<String, TypePolicy>,
    pub hourly_budgets: HashMap<String, f64>,
}

/// One task type's scheduling policy.
#[derive(Debug, Clone, Default)]
pub struct TypePolicy {
    pub strategy: Option<Strategy>,
    pub rate: Option<RateLimit>,
    pub rules: Vec<routing::Rule>,
    pub failover: Vec<AgentId>,
}

impl TypePolicy {
    /// Whether tasks of this type need per-task decisions even without hints.
    fn needs_scheduling(&self) -> bool {
        self.rate.is_some() || self.strategy.is_some_and(|s| s != Strategy::LeastLoaded)
    }
}

impl Default for Policies {
    fn default() -> Self {
        Self::from_config(&SchedulerConfig::default()).expect("defaults are valid")
    }
}

impl Policies {
    /// How many attempts with concurrency key `key` may run at once.
    pub fn key_limit(&self, key: &str) -> u32 {
        self.key_concurrency_overrides
            .get(key)
            .copied()
            .unwrap_or(self.key_concurrency)
    }

    /// Checks every setting; the error names the first bad one.
    pub fn from_config(c: &SchedulerConfig) -> Result<Policies, Error> {
        let breaker = breaker::Options {
            failure_threshold: c.breaker_failures,
            open_ms: c.breaker_open_ms,
            half_open_probes: 1,
        };
        breaker.validate()?;
        let default_strategy = parse_strategy(&c.default_strategy, "default_strategy")?;
        if c.key_concurrency == 0 {
            return Err(Error::invalid("key_concurrency must be at least 1"));
        }
        let key_rate = rate_limit(Some(c.key_rate_per_s), Some(c.key_burst), "key_rate_per_s")?
            .expect("both given");
        let mut key_concurrency_overrides = HashMap::new();
        let mut key_rate_overrides = HashMap::new();
        for (key, k) in &c.keys {
            if let Some(n) = k.concurrency {
                if n == 0 {
                    return Err(Error::invalid(format!(
                        "keys.{key}.concurrency must be at least 1"
                    )));
                }
                key_concurrency_overrides.insert(key.clone(), n);
            }
            if k.rate_per_s.is_some() || k.burst.is_some() {
                let limit = rate_limit(
                    k.rate_per_s.or(Some(c.key_rate_per_s)),
                    k.burst.or(Some(c.key_burst)),
                    &format!("keys.{key}"),
                )?
                .expect("both given");
                key_rate_overrides.insert(key.clone(), limit);
            }
        }
        let mut types = HashMap::new();
        for (name, t) in &c.task_types {
            let strategy = t
                .strategy
                .as_deref()
                .map(|s| parse_strategy(s, &format!("task_types.{name}.strategy")))
                .transpose()?;
            if strategy == Some(Strategy::Broadcast) {
                return Err(Error::invalid(format!(
                    "task_types.{name}.strategy: broadcast sends one task to every agent; use a workflow scatter step for that"
                )));
            }
            let rate = rate_limit(t.rate_per_s, t.burst, &format!("task_types.{name}"))?;
            let rules = parse_rules(&t.rules)
                .map_err(|e| Error::invalid(format!("task_types.{name}.rules: {}", e.message)))?;
            let failover = t
                .failover
                .iter()
                .map(|a| {
                    AgentId::parse(a.clone()).map_err(|e| {
                        Error::invalid(format!("task_types.{name}.failover: {}", e.message))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            types.insert(
                name.clone(),
                TypePolicy {
                    strategy,
                    rate,
                    rules,
                    failover,
                },
            );
        }
        let mut hourly_budgets = HashMap::new();
        for (agent_type, per_hour) in &c.hourly_budgets {
            if !(per_hour.is_finite() && *per_hour >= 0.0) {
                return Err(Error::invalid(format!(
                    "hourly_budgets.{agent_type} must be a number of at least 0"
                )));
            }
            hourly_budgets.insert(agent_type.clone(), *per_hour);
        }
        Ok(Policies {
            capacity: c.capacity,
            shed: ShedPolicy::default(),
            breaker,
            default_strategy,
            preempt: c.preemption.then(PreemptPolicy::default),
            key_concurrency: c.key_concurrency,
            key_concurrency_overrides,
            key_rate,
            key_rate_overrides,
            types,
            hourly_budgets,
        })
    }
}

fn parse_strategy(raw: &str, field: &str) -> Result<Strategy, Error> {
    Strategy::parse(raw).map_err(|e| Error::invalid(format!("{field}: {}", e.message)))
}

fn rate_limit(
    rate: Option<f64>,
    burst: Option<u32>,
    field: &str,
) -> Result<Option<RateLimit>, Error> {
    match (rate, burst) {
        (None, None) => Ok(None),
        (rate, burst) => {
            let rate = rate.unwrap_or(f64::from(burst.unwrap_or(1)));
            let limit = RateLimit {
                rate,
                burst: burst.unwrap_or_else(|| rate.ceil().clamp(1.0, u32::MAX as f64) as u32),
            };
            limit
                .validate()
                .map_err(|e| Error::invalid(format!("{field}: {}", e.message)))?;
            Ok(Some(limit))
        }
    }
}

/// Seed 004's descriptor from what an agent sent in `Register`.
pub fn descriptor_of(reg: &v1::Register, agent_id: AgentId) -> Result<Descriptor, Error> {
    // A version that is not semver ("unknown", a git hash) is shown as sent but
    // matches discovery ranges as 0.0.0; the agent is not refused over a label.
    let version = registry::parse_version(&reg.version).unwrap_or(semver::Version::new(0, 0, 0));
    let agent_type = if reg.agent_type.trim().is_empty() {
        reg.task_types.first().cloned().unwrap_or_default()
    } else {
        reg.agent_type.clone()
    };
    let mut d = Descriptor::new(agent_id, agent_type, version, reg.max_concurrent);
    d.capabilities = reg
        .task_types
        .iter()
        .chain(&reg.capabilities)
        .cloned()
        .collect();
    d.service_types = reg.service_types.iter().cloned().collect();
    d.endpoint = reg.endpoint.clone();
    d.tags = reg.tags.iter().cloned().collect::<BTreeSet<_>>();
    d.labels = reg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    d.location = Some(reg.location.trim().to_string()).filter(|l| !l.is_empty());
    d.cost_factor = reg.cost_factor.unwrap_or(1.0);
    d.weight = reg.weight.unwrap_or(1.0);
    d.validate()?;
    Ok(d)
}

/// The heartbeat's load; unknown fields do not lower the health score.
pub fn load_of(hb: &v1::Heartbeat) -> HeartbeatLoad {
    HeartbeatLoad {
        cpu_usage: hb.cpu_usage.unwrap_or(0.0),
        error_rate: hb.error_rate.unwrap_or(0.0),
        response_time_ms: hb.response_time_ms.unwrap_or(0.0),
    }
}

/// Metadata keys that only a per-task decision can honour.
pub fn needs_scheduling(hints: &Hints) -> bool {
    hints.strategy.is_some_and(|s| s != Strategy::LeastLoaded)
        || !hints.preferred_agents.is_empty()
        || hints.concurrency_key.is_some()
        || hints.rate_limit_key.is_some()
        || hints.cost_budget.is_some()
        || hints.min_health != DEFAULT_MIN_HEALTH
}

/// What a task needs before it may run on an agent the fast path chose.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// Nothing: any free agent of its type may take it.
    Nothing,
    /// Only its concurrency and rate-limit keys' room ([`Sched::admit_keys`]):
    /// the fast path may take it while its keys have room, in queue order.
    Keys(Hints),
    /// A per-task decision: a deadline (earliest deadline first within its
    /// priority), resource requirements (only some agents may take it), or
    /// routing, health or cost hints.
    Decision,
}

/// What `spec` needs before it may run (see [`Need`]).
pub fn need_of(spec: &baton_core::TaskSpec) -> Need {
    if spec.deadline_ms.is_some() || has_resources(&spec.metadata) {
        return Need::Decision;
    }
    if !may_need_scheduling(&spec.metadata) {
        return Need::Nothing;
    }
    match Hints::from_metadata(&spec.metadata) {
        Ok(h) if !needs_scheduling(&h) => Need::Nothing,
        Ok(h) if keys_only(&h) => Need::Keys(h),
        Ok(_) => Need::Decision,
        // Refused at submission; a stored one is routed as if it had none.
        Err(_) => Need::Nothing,
    }
}

/// Whether the only hints needing a decision are keys (no routing, health or
/// cost hint).
fn keys_only(hints: &Hints) -> bool {
    hints.strategy.is_none_or(|s| s == Strategy::LeastLoaded)
        && hints.preferred_agents.is_empty()
        && hints.cost_budget.is_none()
        && hints.min_health == DEFAULT_MIN_HEALTH
}

/// Whether a task needs anything before it runs: a per-task decision or room
/// in its keys.
pub fn needs_decision(spec: &baton_core::TaskSpec) -> bool {
    need_of(spec) != Need::Nothing
}

/// Whether the metadata names resource requirements (a non-empty `resources`).
pub fn has_resources(metadata: &serde_json::Map<String, serde_json::Value>) -> bool {
    metadata
        .get(baton_core::sched::keys::RESOURCES)
        .and_then(|v| v.as_object())
        .is_some_and(|o| !o.is_empty())
}

/// A quick look before parsing: metadata without any scheduling key needs none.
pub fn may_need_scheduling(metadata: &serde_json::Map<String, serde_json::Value>) -> bool {
    use baton_core::sched::keys::*;
    !metadata.is_empty()
        && [
            ROUTING_STRATEGY,
            PREFERRED_AGENTS,
            CONCURRENCY_KEY,
            RATE_LIMIT_KEY,
            COST_BUDGET,
            MIN_HEALTH,
        ]
        .iter()
        .any(|k| metadata.contains_key(*k))
}

/// How long a task type stays on the per-task path after the last task that
/// needed it was seen.
const SCHEDULED_TTL_MS: u64 = 10_000;

/// One agent the decision may use: the routing view and the session behind it.
pub struct Slot {
    pub view: AgentView,
    pub session_id: String,
}

/// A queued task sent to an agent by [`Sched::decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Position in the window passed in.
    pub index: usize,
    pub session_id: String,
    pub agent_id: AgentId,
    pub concurrency_key: Option<String>,
}

/// What [`Sched::decide`] found.
#[derive(Debug, Default)]
pub struct Decision {
    pub placements: Vec<Placement>,
    /// When a rate limit or budget that held tasks back lets the next one go.
    pub wake_at: Option<Millis>,
    /// The most urgent task left without any free agent (for preemption).
    pub starved: Option<Priority>,
    /// Tasks held back, with why (shown by the scheduler view).
    pub held: Vec<(TaskId, String)>,
}

/// The scheduler state of this replica (see the module docs).
pub struct Sched {
    pub policies: Policies,
    pub registry: Registry,
    pub breakers: Breakers,
    routers: HashMap<String, Router>,
    type_buckets: HashMap<String, TokenBucket>,
    key_rates: RateLimiter,
    /// Attempts running on this replica per concurrency key.
    pub running_per_key: HashMap<String, u32>,
    budgets: HourlyBudgets,
    /// Task types on the per-task path, until when.
    scheduled_until: HashMap<String, Millis>,
    /// Last reasons tasks were held back, per task type.
    pub held: HashMap<String, Vec<(TaskId, String)>>,
    seed: u64,
}

impl Sched {
    pub fn new(
        policies: Policies,
        registry_opts: registry::Options,
        now: Millis,
    ) -> Result<Sched, Error> {
        let mut key_rates = RateLimiter::new(policies.key_rate, DEFAULT_MAX_KEYS)?;
        for (k, l) in &policies.key_rate_overrides {
            key_rates.set_override(k.clone(), *l)?;
        }
        let mut budgets = HourlyBudgets::new();
        for (t, l) in &policies.hourly_budgets {
            budgets.set_limit(t.clone(), *l)?;
        }
        let type_buckets = policies
            .types
            .iter()
            .filter_map(|(t, p)| p.rate.map(|r| (t.clone(), TokenBucket::new(r, now))))
            .collect();
        Ok(Sched {
            breakers: Breakers::new(policies.breaker)?,
            registry: Registry::new(registry_opts)?,
            routers: HashMap::new(),
            type_buckets,
            key_rates,
            running_per_key: HashMap::new(),
            budgets,
            scheduled_until: HashMap::new(),
            held: HashMap::new(),
            seed: 0x9E37_79B9_7F4A_7C15 ^ now,
            policies,
        })
    }

    /// A new agent: into the registry and the hash rings of the types it serves.
    pub fn on_register(&mut self, d: Descriptor, now: Millis) -> Result<(), Error> {
        let id = d.agent_id.clone();
        let caps: Vec<String> = d.capabilities.iter().cloned().collect();
        self.registry.register(d, now)?;
        for t in caps {
            self.router(&t).on_register(&id);
        }
        Ok(())
    }

    /// An agent left (its last session on this replica ended).
    pub fn on_deregister(&mut self, id: &AgentId) {
        if let Some(agent) = self.registry.deregister(id) {
            for t in &agent.descriptor.capabilities {
                self.router(t).on_deregister(id);
            }
        }
        self.breakers.remove(id);
    }

    fn router(&mut self, task_type: &str) -> &mut Router {
        if !self.routers.contains_key(task_type) {
            let mut r = Router::default();
            if let Some(p) = self.policies.types.get(task_type) {
                r.rules = p.rules.clone();
                r.failover = p.failover.clone();
            }
            self.routers.insert(task_type.to_string(), r);
        }
        self.routers.get_mut(task_type).expect("inserted above")
    }

    /// A finished attempt: its agent's breaker and mean duration. Returns the
    /// breaker's new phase when it changed.
    pub fn on_outcome(
        &mut self,
        agent: &AgentId,
        outcome: Outcome,
        duration_ms: u64,
        now: Millis,
    ) -> Option<Phase> {
        if outcome == Outcome::Success {
            self.registry.record_duration(agent, duration_ms);
        }
        self.breakers.record(agent, outcome, now)
    }

    /// An attempt with a concurrency key stopped running here.
    pub fn release_key(&mut self, key: &str) {
        if let Some(n) = self.running_per_key.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running_per_key.remove(key);
            }
        }
    }

    /// A task the fast path claimed whose only needs are its keys: whether
    /// they have room now. If so, the room is taken (one running attempt on
    /// its concurrency key, one token of its rate-limit key) as a placement by
    /// [`Sched::decide`] would take it; if not, nothing changes and the task
    /// goes back to the queue for the per-task path, where keys take turns.
    pub fn admit_keys(&mut self, hints: &Hints, now: Millis) -> bool {
        if let Some(k) = &hints.concurrency_key {
            if self.running_per_key.get(k).copied().unwrap_or(0) >= self.policies.key_limit(k) {
                return false;
            }
        }
        if let Some(k) = &hints.rate_limit_key {
            if self.key_rates.try_take(k, now).is_err() {
                return false;
            }
        }
        if let Some(k) = &hints.concurrency_key {
            *self.running_per_key.entry(k.clone()).or_insert(0) += 1;
        }
        true
    }

    /// Whether the fast path may let this agent claim: its breaker is not open
    /// and it is healthy enough for a task that names no minimum. `Some(1)`
    /// limits a half-open agent to one probe.
    pub fn admits_agent(&self, id: &AgentId, now: Millis) -> Option<usize> {
        match self.breakers.phase(id, now) {
            Phase::Open => return None,
            Phase::HalfOpen if !self.breakers.allows(id, now) => return None,
            // The probe goes through whatever the agent's own error rate says:
            // that rate is what the failures that opened the breaker left behind.
            Phase::HalfOpen => return Some(1),
            _ => {}
        }
        let health = self
            .registry
            .get(id)
            .map_or(1.0, |a| a.health(self.registry.options(), now));
        if health < DEFAULT_MIN_HEALTH {
            return None;
        }
        Some(usize::MAX)
    }

    /// Counts a dispatch towards a half-open breaker's probes.
    pub fn on_dispatch(&mut self, id: &AgentId, now: Millis) -> bool {
        self.breakers.on_dispatch(id, now)
    }

    /// Whether tasks of this type are decided one by one now.
    pub fn is_scheduled(&self, task_type: &str, now: Millis) -> bool {
        // Hourly budgets are counted per placement, which only a decision makes.
        !self.policies.hourly_budgets.is_empty()
            || self
                .policies
                .types
                .get(task_type)
                .is_some_and(TypePolicy::needs_scheduling)
            || self
                .scheduled_until
                .get(task_type)
                .is_some_and(|until| *until > now)
    }

    /// Tasks of this type that need per-task decisions were seen.
    pub fn mark_scheduled(&mut self, task_type: &str, now: Millis) {
        self.scheduled_until
            .insert(task_type.to_string(), now + SCHEDULED_TTL_MS);
    }

    /// Routing view of an agent session.
    pub fn view(
        &self,
        agent_id: &AgentId,
        in_flight: usize,
        max_concurrent: usize,
        now: Millis,
    ) -> AgentView {
        let mut view = match self.registry.get(agent_id) {
            Some(a) => a.view(self.registry.options(), now),
            None => AgentView::new(agent_id.clone(), Vec::new(), 0, 0),
        };
        view.in_flight = in_flight as u32;
        view.max_concurrency = max_concurrent as u32;
        view.routable = self.breakers.allows(agent_id, now);
        view
    }

    /// Decides which of `window` (queued tasks of `task_type`, in claim order)
    /// go to which of `slots` now. Priority first, earliest deadline first
    /// within a priority, concurrency keys taking turns within a priority; each
    /// task's rate limits, routing strategy and budgets applied. Slots used are
    /// counted in the views, so one agent is not given more than it has free.
    pub fn decide(
        &mut self,
        task_type: &str,
        window: &[TaskSpec],
        slots: Vec<Slot>,
        now: Millis,
    ) -> Decision {
        // The running counts are read by the keys' turns and counted up as
        // tasks are placed: moved out for the decision rather than copied per
        // priority level (a copy per look was a hash map of every running key).
        let mut running = std::mem::take(&mut self.running_per_key);
        let decision = self.decide_with(task_type, window, slots, now, &mut running);
        self.running_per_key = running;
        decision
    }

    fn decide_with(
        &mut self,
        task_type: &str,
        window: &[TaskSpec],
        slots: Vec<Slot>,
        now: Millis,
        running: &mut HashMap<String, u32>,
    ) -> Decision {
        let mut decision = Decision::default();
        let mut sessions: HashMap<AgentId, String> = HashMap::with_capacity(slots.len());
        let views = slots
            .into_iter()
            .map(|s| {
                sessions.insert(s.view.agent_id.clone(), s.session_id);
                s.view
            })
            .collect();
        let mut snap = Snapshot::for_task_type(task_type, views);
        self.breakers.exclude_open(&mut snap, now);

        // Claim order is priority then submission; add the deadline within a level.
        let mut order: Vec<(QueueKey, usize, Hints)> = window
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let hints = Hints::from_metadata(&spec.metadata).unwrap_or_default();
                (
                    QueueKey::new(spec.priority, spec.deadline_ms, i as u64),
                    i,
                    hints,
                )
            })
            .collect();
        order.sort_by_key(|o| o.0);
        let type_strategy = self
            .policies
            .types
            .get(task_type)
            .and_then(|p| p.strategy)
            .unwrap_or(self.policies.default_strategy);

        let mut start = 0;
        while start < order.len() {
            let level = window[order[start].1].priority;
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|o| window[o.1].priority == level)
                    .count();
            // Keys take turns within the level; tasks without a key share one turn
            // with no limit of its own.
            let mut queue: KeyedQueue<(usize, Hints)> =
                KeyedQueue::new(self.policies.key_concurrency).expect("validated");
            const NO_KEY: &str = "\u{0}";
            let _ = queue.set_limit(NO_KEY, u32::MAX);
            for (_, i, hints) in order[start..end].iter().cloned() {
                let key = hints.concurrency_key.clone();
                match &key {
                    Some(k) => {
                        // The queue's default is the configured one; only
                        // overridden keys need a limit of their own.
                        if let Some(&limit) = self.policies.key_concurrency_overrides.get(k) {
                            let _ = queue.set_limit(k.clone(), limit);
                        }
                        queue.push(k.clone(), (i, hints));
                    }
                    None => queue.push(NO_KEY, (i, hints)),
                }
            }
            while let Some((key, (i, hints))) = queue.next(running) {
                let spec = &window[i];
                let key = (key != NO_KEY).then_some(key);
                // Resource requirements: only agents whose labels satisfy them
                // take part in this task's routing.
                let need = match Resources::from_metadata(&spec.metadata) {
                    Ok(need) => need,
                    Err(e) => {
                        decision
                            .held
                            .push((spec.task_id.clone(), e.message.clone()));
                        continue;
                    }
                };
                let (excluded, none_fits) = match &need {
                    Some(need) => self.exclude_unfit(&mut snap, need),
                    None => (Vec::new(), false),
                };
                let (priced_out, over_budget) =
                    self.exclude_over_budget(&mut snap, hints.estimated_complexity, now);
                let placed = self.place(
                    task_type,
                    spec,
                    hints,
                    type_strategy,
                    &mut snap,
                    now,
                    &mut decision,
                );
                restore_routable(&mut snap, &priced_out);
                restore_routable(&mut snap, &excluded);
                if let (Placed::NoAgent, Some(refusal)) = (&placed, over_budget) {
                    // Only agents whose type's hourly budget is spent could
                    // take it: held until the budget's window frees enough.
                    if let Some(ms) = refusal.retry_after_ms {
                        let at = now + ms;
                        decision.wake_at = Some(decision.wake_at.map_or(at, |w| w.min(at)));
                    }
                    decision.held.push((spec.task_id.clone(), refusal.message));
                    continue;
                }
                if none_fits && matches!(placed, Placed::NoAgent) {
                    // Held, not starved: preempting would not help it.
                    if let Some(need) = &need {
                        decision.held.push((
                            spec.task_id.clone(),
                            format!(
                                "no connected agent of its type satisfies its resources {}",
                                serde_json::to_string(need).unwrap_or_default()
                            ),
                        ));
                        continue;
                    }
                }
                match placed {
                    Placed::Yes(agent_id) => {
                        if let Some(k) = &key {
                            *running.entry(k.clone()).or_insert(0) += 1;
                        }
                        let session_id = sessions.get(&agent_id).cloned().unwrap_or_default();
                        decision.placements.push(Placement {
                            index: i,
                            session_id,
                            agent_id,
                            concurrency_key: key,
                        });
                    }
                    Placed::NoAgent => {
                        if snap.agents().iter().all(|a| a.free_slots() == 0) {
                            decision.starved = decision.starved.max(Some(level));
                            // Nothing more fits anywhere this round.
                            return self.finish(task_type, decision);
                        }
                    }
                    Placed::Held => {}
                    Placed::TypeLimited => return self.finish(task_type, decision),
                }
            }
            // Tasks of keys at their limit stay queued.
            start = end;
        }
        self.finish(task_type, decision)
    }

    /// Takes the routable agents whose labels do not satisfy `need` out of
    /// routing. Returns their positions (for [`restore_routable`]) and whether
    /// no agent of the snapshot satisfies it at all.
    fn exclude_unfit(&self, snap: &mut Snapshot, need: &Resources) -> (Vec<usize>, bool) {
        let mut excluded = Vec::new();
        let mut none_fits = true;
        for (p, a) in snap.agents().iter().enumerate() {
            let fits = self
                .registry
                .get(&a.agent_id)
                .is_some_and(|r| need.satisfied_by(&r.descriptor.labels));
            if fits {
                none_fits = false;
            } else if a.routable {
                excluded.push(p);
            }
        }
        for &p in &excluded {
            snap.set_routable(p, false);
        }
        (excluded, none_fits)
    }

    /// Takes the routable agents whose type's hourly budget cannot pay for a
    /// task of this complexity now out of routing, so that the task goes to an
    /// agent that can take it. Returns their positions (for
    /// [`restore_routable`]) and the first refusal, if any agent was taken out.
    fn exclude_over_budget(
        &self,
        snap: &mut Snapshot,
        complexity: f64,
        now: Millis,
    ) -> (Vec<usize>, Option<baton_core::sched::flow::Refusal>) {
        if self.policies.hourly_budgets.is_empty() {
            return (Vec::new(), None);
        }
        let mut out = Vec::new();
        let mut first = None;
        for (p, a) in snap.agents().iter().enumerate() {
            if !a.routable || a.free_slots() == 0 {
                continue;
            }
            if let Err(r) = self
                .budgets
                .check(&a.agent_type, cost_score(a, complexity), now)
            {
                out.push(p);
                first.get_or_insert(r);
            }
        }
        for &p in &out {
            snap.set_routable(p, false);
        }
        (out, first)
    }

    fn finish(&mut self, task_type: &str, decision: Decision) -> Decision {
        if decision.held.is_empty() {
            self.held.remove(task_type);
        } else {
            self.held.insert(
                task_type.to_string(),
                decision.held.iter().take(20).cloned().collect(),
            );
        }
        decision
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        task_type: &str,
        spec: &TaskSpec,
        hints: Hints,
        type_strategy: Strategy,
        snap: &mut Snapshot,
        now: Millis,
        decision: &mut Decision,
    ) -> Placed {
        let mut wake = |at: Millis| {
            decision.wake_at = Some(decision.wake_at.map_or(at, |w: Millis| w.min(at)));
        };
        // Rate limits: the type's, then the key's. Checked before routing and
        // taken only once the task is placed.
        if let Some(bucket) = self.type_buckets.get_mut(task_type) {
            if bucket.tokens(now) < 1.0 {
                let wait = bucket.try_take(now).err().unwrap_or(1);
                wake(now + wait);
                return Placed::TypeLimited;
            }
        }
        if let Some(k) = &hints.rate_limit_key {
            if self.key_rates.tokens(k, now) < 1.0 {
                if let Err(r) = self.key_rates.try_take(k, now) {
                    wake(now + r.retry_after_ms.unwrap_or(1));
                }
                decision
                    .held
                    .push((spec.task_id.clone(), format!("rate limited on key {k}")));
                return Placed::Held;
            }
        }
        let strategy = match hints.strategy.unwrap_or(type_strategy) {
            // Refused at submission; never one task to many agents here.
            Strategy::Broadcast => Strategy::LeastLoaded,
            s => s,
        };
        let complexity = hints.estimated_complexity;
        let budget = hints.cost_budget;
        let facts = TaskFacts {
            task_type,
            priority: spec.priority,
            metadata: &spec.metadata,
            hints,
        };
        let sample = self.sample();
        let router = self.router(task_type);
        let mut pos = router
            .route(strategy, snap, &facts, sample, now)
            .first()
            .copied();
        let Some(mut p) = pos.take() else {
            return Placed::NoAgent;
        };
        // Cost: the task's own budget, trying the cheapest agent when the chosen
        // one is too dear; then the hourly budget of the agent's type.
        let mut cost = cost_score(&snap.agents()[p], complexity);
        if check_task_budget(cost, budget).is_err() {
            match routing::cost_based(snap, &facts) {
                Some(cheaper)
                    if check_task_budget(
                        cost_score(&snap.agents()[cheaper], complexity),
                        budget,
                    )
                    .is_ok() =>
                {
                    p = cheaper;
                    cost = cost_score(&snap.agents()[p], complexity);
                }
                _ => {
                    let r = check_task_budget(cost, budget).unwrap_err();
                    decision.held.push((spec.task_id.clone(), r.message));
                    return Placed::Held;
                }
            }
        }
        let agent_type = snap.agents()[p].agent_type.clone();
        if let Err(r) = self.budgets.check(&agent_type, cost, now) {
            if let Some(ms) = r.retry_after_ms {
                wake(now + ms);
            }
            decision.held.push((spec.task_id.clone(), r.message));
            return Placed::Held;
        }
        let agent_id = snap.agents()[p].agent_id.clone();
        if !self.breakers.on_dispatch(&agent_id, now) {
            return Placed::NoAgent;
        }
        self.budgets.record(&agent_type, cost, now);
        if let Some(bucket) = self.type_buckets.get_mut(task_type) {
            let _ = bucket.try_take(now);
        }
        if let Some(k) = &facts.hints.rate_limit_key {
            let _ = self.key_rates.try_take(k, now);
        }
        let in_flight = snap.agents()[p].in_flight + 1;
        snap.set_in_flight(p, in_flight);
        Placed::Yes(agent_id)
    }

    /// A uniform sample in [0, 1) for weighted random (xorshift; not for secrets).
    fn sample(&mut self) -> f64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Tokens left in the task type's bucket and a rate-limited key's, for the view.
    pub fn type_tokens(&mut self, task_type: &str, now: Millis) -> Option<f64> {
        self.type_buckets.get_mut(task_type).map(|b| b.tokens(now))
    }

    pub fn key_tokens(&mut self, key: &str, now: Millis) -> f64 {
        self.key_rates.tokens(key, now)
    }

    pub fn hourly_spent(&self, agent_type: &str, now: Millis) -> (f64, Option<f64>) {
        (
            self.budgets.spent(agent_type, now),
            self.budgets.limit(agent_type),
        )
    }
}

/// Puts back the agents [`Sched::exclude_unfit`] took out.
fn restore_routable(snap: &mut Snapshot, unfit: &[usize]) {
    for &p in unfit {
        snap.set_routable(p, true);
    }
}

enum Placed {
    Yes(AgentId),
    /// No eligible agent has a free slot for it.
    NoAgent,
    /// This task waits (its key's rate, its budget); others may go.
    Held,
    /// The task type's rate limit is spent: nothing more of it goes now.
    TypeLimited,
}

/// Checks a task's scheduling metadata at submission: malformed hints and the
/// broadcast strategy (one task cannot run on many agents; a workflow scatter
/// step does that) are refused there, not discovered at dispatch.
pub fn validate_hints(metadata: &serde_json::Map<String, serde_json::Value>) -> Result<(), Error> {
    let resources = Resources::from_metadata(metadata).map(|_| ());
    let hints = validate_routing_hints(metadata);
    match (hints, resources) {
        (Ok(()), r) | (r, Ok(())) => r,
        // Every problem at once: the routing keys' first, then the resources'.
        (Err(e), Err(r)) => Err(Error::from_problems(
            e.problems("metadata")
                .into_iter()
                .chain(r.problems("metadata")),
        )),
    }
}

fn validate_routing_hints(
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), Error> {
    if !may_need_scheduling(metadata)
        && !metadata.contains_key(baton_core::sched::keys::ROUTING_KEY)
        && !metadata.contains_key(baton_core::sched::keys::ESTIMATED_COMPLEXITY)
    {
        return Ok(());
    }
    let hints = Hints::from_metadata(metadata)?;
    if hints.strategy == Some(Strategy::Broadcast) {
        return Err(Error::invalid(
            "metadata.routing_strategy broadcast is not available for a single task: it runs on one agent; use a workflow scatter step to send work to every agent",
        )
        .with_field("metadata.routing_strategy"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(id: &str, priority: Priority, metadata: serde_json::Value) -> TaskSpec {
        TaskSpec {
            task_id: TaskId::parse(id).unwrap(),
            task_type: "work".into(),
            inputs: Vec::new(),
            priority,
            timeout_ms: 30_000,
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            retry: Default::default(),
            deadline_ms: None,
            execution_mode: None,
            dependencies: Vec::new(),
            run_id: None,
        }
    }

    fn sched(cfg: SchedulerConfig) -> Sched {
        let mut s = Sched::new(
            Policies::from_config(&cfg).unwrap(),
            registry::Options::default(),
            0,
        )
        .unwrap();
        for (id, slots) in [("a1", 2u32), ("a2", 2)] {
            let mut d = Descriptor::new(
                AgentId::parse(id).unwrap(),
                "worker",
                semver::Version::new(1, 0, 0),
                slots,
            );
            d.capabilities.insert("work".into());
            s.on_register(d, 0).unwrap();
        }
        s
    }

    fn slots(s: &Sched, busy: &[(&str, usize)]) -> Vec<Slot> {
        ["a1", "a2"]
            .iter()
            .map(|id| {
                let in_flight = busy.iter().find(|b| b.0 == *id).map_or(0, |b| b.1);
                Slot {
                    view: s.view(&AgentId::parse(*id).unwrap(), in_flight, 2, 1),
                    session_id: format!("s-{id}"),
                }
            })
            .collect()
    }

    fn ids(d: &Decision, window: &[TaskSpec]) -> Vec<String> {
        d.placements
            .iter()
            .map(|p| window[p.index].task_id.to_string())
            .collect()
    }

    #[test]
    fn concurrency_keys_take_turns_and_respect_their_limit() {
        let mut s = sched(SchedulerConfig::default());
        let window: Vec<TaskSpec> = ["a", "a", "a", "b", "b"]
            .iter()
            .enumerate()
            .map(|(i, k)| {
                task(
                    &format!("t{i}"),
                    Priority::Normal,
                    json!({"concurrency_key": k}),
                )
            })
            .collect();
        let slots = slots(&s, &[]);
        let d = s.decide("work", &window, slots, 1);
        // Limit 1 per key: one of a, one of b, although four slots are free.
        assert_eq!(ids(&d, &window), ["t0", "t3"]);
        assert_eq!(s.running_per_key.get("a"), Some(&1));
        // Nothing more for a or b until one finishes.
        let slots2 = self::slots(&s, &[("a1", 1), ("a2", 1)]);
        assert!(s
            .decide("work", &window[1..], slots2, 2)
            .placements
            .is_empty());
        s.release_key("a");
        let slots3 = self::slots(&s, &[("a1", 1)]);
        let d = s.decide("work", &window[1..3], slots3, 3);
        assert_eq!(d.placements.len(), 1);
    }

    #[test]
    fn keys_alone_are_checked_on_the_fast_path_anything_more_needs_a_decision() {
        let keyed = |m: serde_json::Value| need_of(&task("k", Priority::Normal, m));
        assert_eq!(keyed(json!({})), Need::Nothing);
        assert_eq!(keyed(json!({"tenant": "a"})), Need::Nothing);
        match keyed(json!({"concurrency_key": "a", "rate_limit_key": "r"})) {
            Need::Keys(h) => {
                assert_eq!(h.concurrency_key.as_deref(), Some("a"));
                assert_eq!(h.rate_limit_key.as_deref(), Some("r"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            keyed(json!({"concurrency_key": "a", "routing_strategy": "least_loaded"})),
            Need::Keys(_)
        ));
        for more in [
            json!({"concurrency_key": "a", "routing_strategy": "round_robin"}),
            json!({"rate_limit_key": "r", "preferred_agents": ["a1"]}),
            json!({"concurrency_key": "a", "cost_budget": 5.0}),
            json!({"concurrency_key": "a", "min_health": 0.9}),
            json!({"concurrency_key": "a", "resources": {"gpu": 1}}),
        ] {
            assert_eq!(keyed(more.clone()), Need::Decision, "{more}");
        }
        let mut dated = task("d", Priority::Normal, json!({"concurrency_key": "a"}));
        dated.deadline_ms = Some(5);
        assert_eq!(need_of(&dated), Need::Decision);
    }

    /// Default key concurrency `n`, and `key` limited to one at a time.
    fn keyed_config(n: u32, key: &str) -> SchedulerConfig {
        let mut cfg = SchedulerConfig {
            key_concurrency: n,
            ..Default::default()
        };
        cfg.keys.insert(
            key.into(),
            crate::config::KeyPolicyConfig {
                concurrency: Some(1),
                ..Default::default()
            },
        );
        cfg
    }

    #[test]
    fn admitting_keys_takes_their_room_and_refuses_without_taking_any() {
        let mut cfg = keyed_config(2, "solo");
        cfg.keys.insert(
            "api".into(),
            crate::config::KeyPolicyConfig {
                rate_per_s: Some(1.0),
                burst: Some(1),
                ..Default::default()
            },
        );
        let mut s = sched(cfg);
        let hints = |m: serde_json::Value| Hints::from_metadata(m.as_object().unwrap()).unwrap();
        let t = hints(json!({"concurrency_key": "t"}));
        // The default limit (2), then refused; a release makes room again.
        assert!(s.admit_keys(&t, 1));
        assert!(s.admit_keys(&t, 1));
        assert!(!s.admit_keys(&t, 1));
        assert_eq!(s.running_per_key.get("t"), Some(&2));
        s.release_key("t");
        assert!(s.admit_keys(&t, 1));
        // An overridden limit.
        let solo = hints(json!({"concurrency_key": "solo"}));
        assert!(s.admit_keys(&solo, 1));
        assert!(!s.admit_keys(&solo, 1));
        // A rate-limit key: one token, then none until it refills; a refusal
        // by the rate takes no room on the concurrency key.
        let both = hints(json!({"concurrency_key": "c", "rate_limit_key": "api"}));
        assert!(s.admit_keys(&both, 1));
        assert!(!s.admit_keys(&both, 2));
        assert_eq!(s.running_per_key.get("c"), Some(&1));
        assert!(s.admit_keys(&both, 1_100));
        assert_eq!(s.running_per_key.get("c"), Some(&2));
    }

    #[test]
    fn admitted_keys_never_exceed_their_limits_under_random_admits_and_releases() {
        let mut s = sched(keyed_config(3, "k0"));
        let limit = |k: &str| if k == "k0" { 1 } else { 3 };
        let mut running: HashMap<String, u32> = HashMap::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("k{}", x % 5);
            if (x >> 8).is_multiple_of(3) {
                if running.get(&key).copied().unwrap_or(0) > 0 {
                    s.release_key(&key);
                    *running.get_mut(&key).unwrap() -= 1;
                }
                continue;
            }
            let hints = Hints {
                concurrency_key: Some(key.clone()),
                ..Hints::default()
            };
            let had = running.get(&key).copied().unwrap_or(0);
            let admitted = s.admit_keys(&hints, 1);
            assert_eq!(admitted, had < limit(&key), "{key} with {had} running");
            if admitted {
                *running.entry(key.clone()).or_insert(0) += 1;
            }
            let counted = s.running_per_key.get(&key).copied().unwrap_or(0);
            assert_eq!(counted, running.get(&key).copied().unwrap_or(0));
            assert!(counted <= limit(&key));
        }
    }

    #[test]
    fn priority_then_deadline_order_and_starvation_is_reported() {
        let mut s = sched(SchedulerConfig::default());
        let mut late = task("late", Priority::High, json!({}));
        late.deadline_ms = Some(9_000);
        let mut soon = task("soon", Priority::High, json!({}));
        soon.deadline_ms = Some(5_000);
        let window = vec![
            late,
            soon,
            task("crit", Priority::Critical, json!({})),
            task("normal", Priority::Normal, json!({})),
        ];
        let slots = slots(&s, &[("a1", 2), ("a2", 1)]);
        let d = s.decide("work", &window, slots, 1);
        assert_eq!(ids(&d, &window), ["crit"]);
        assert_eq!(d.starved, Some(Priority::High));
        let slots = self::slots(&s, &[]);
        let d = s.decide("work", &window[..2], slots, 1);
        assert_eq!(
            ids(&d, &window[..2]),
            ["soon", "late"],
            "earliest deadline first"
        );
    }

    #[test]
    fn key_rate_limits_hold_tasks_and_say_when_to_look_again() {
        let cfg = SchedulerConfig {
            key_rate_per_s: 1.0,
            key_burst: 1,
            key_concurrency: 10,
            ..Default::default()
        };
        let mut s = sched(cfg);
        let window: Vec<TaskSpec> = (0..3)
            .map(|i| {
                task(
                    &format!("t{i}"),
                    Priority::Normal,
                    json!({"rate_limit_key": "tenant-1"}),
                )
            })
            .chain([task("free", Priority::Normal, json!({}))])
            .collect();
        let slots = slots(&s, &[]);
        let d = s.decide("work", &window, slots, 1_000);
        assert_eq!(ids(&d, &window), ["t0", "free"]);
        assert_eq!(d.held.len(), 2);
        assert!(d.wake_at.is_some_and(|w| w > 1_000 && w <= 2_000));
    }

    #[test]
    fn task_budget_prefers_a_cheaper_agent_or_holds_the_task() {
        let mut s = sched(SchedulerConfig::default());
        let window = vec![
            task(
                "cheap-enough",
                Priority::Normal,
                json!({"cost_budget": 100.0}),
            ),
            task(
                "too-poor",
                Priority::Normal,
                json!({"cost_budget": 0.0, "estimated_complexity": 5.0}),
            ),
        ];
        let slots = slots(&s, &[]);
        let d = s.decide("work", &window, slots, 1);
        assert_eq!(ids(&d, &window), ["cheap-enough"]);
        assert!(
            d.held[0].1.contains("exceeds the task's cost_budget"),
            "{:?}",
            d.held
        );
    }

    #[test]
    fn open_breakers_take_agents_out() {
        let mut s = sched(SchedulerConfig::default());
        let a1 = AgentId::parse("a1").unwrap();
        for _ in 0..5 {
            s.on_outcome(&a1, Outcome::Failure, 10, 1);
        }
        assert_eq!(s.admits_agent(&a1, 2), None);
        // A permanent (task) fault neither opens nor closes.
        let a2 = AgentId::parse("a2").unwrap();
        for _ in 0..10 {
            s.on_outcome(&a2, Outcome::TaskFault, 10, 1);
        }
        assert_eq!(s.admits_agent(&a2, 2), Some(usize::MAX));
        let window: Vec<TaskSpec> = (0..4)
            .map(|i| {
                task(
                    &format!("t{i}"),
                    Priority::Normal,
                    json!({"routing_strategy": "round_robin"}),
                )
            })
            .collect();
        let slots = slots(&s, &[]);
        let d = s.decide("work", &window, slots, 2);
        assert!(d.placements.iter().all(|p| p.agent_id == a2));
        assert_eq!(d.placements.len(), 2, "a2's two slots");
        // Half-open after 60 s: one probe.
        assert_eq!(s.admits_agent(&a1, 60_002), Some(1));
    }

    /// `sched` with a2 declaring `gpu = 2` and `zone = eu`, a1 nothing.
    fn labelled() -> Sched {
        let mut s = sched(SchedulerConfig::default());
        let mut d = Descriptor::new(
            AgentId::parse("a2").unwrap(),
            "worker",
            semver::Version::new(1, 0, 0),
            2,
        );
        d.capabilities.insert("work".into());
        d.labels = [("gpu", "2"), ("zone", "eu")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        s.on_register(d, 0).unwrap();
        s
    }

    #[test]
    fn resources_keep_tasks_to_agents_whose_labels_satisfy_them() {
        let mut s = labelled();
        let window = vec![
            task("gpu-0", Priority::Normal, json!({"resources": {"gpu": 1}})),
            task("plain", Priority::Normal, json!({})),
            task(
                "eu",
                Priority::Normal,
                json!({"resources": {"labels": {"zone": "eu"}}}),
            ),
            task("gpu-1", Priority::Normal, json!({"resources": {"gpu": 2}})),
        ];
        let d = s.decide("work", &window, slots(&s, &[]), 1);
        let a2 = AgentId::parse("a2").unwrap();
        for p in &d.placements {
            let id = window[p.index].task_id.as_str();
            if id != "plain" {
                assert_eq!(p.agent_id, a2, "{id} went to {}", p.agent_id);
            }
        }
        // a2 has two slots: two of the three labelled tasks, and the plain one on a1.
        assert_eq!(ids(&d, &window), ["gpu-0", "plain", "eu"]);
        assert_eq!(d.placements[1].agent_id.as_str(), "a1");
        // gpu-1 waits for a2 (busy), although a1 is free; it is not reported
        // as unservable, nor as starved.
        assert!(d.held.is_empty(), "{:?}", d.held);
        assert_eq!(d.starved, None);
        // Excluding agents for one task does not leave them out for the next.
        let d = s.decide("work", &window[1..2], slots(&s, &[("a2", 2)]), 2);
        assert_eq!(ids(&d, &window[1..2]), ["plain"]);
    }

    #[test]
    fn a_requirement_no_agent_satisfies_is_held_with_why() {
        let mut s = labelled();
        let window = vec![
            task("big", Priority::Critical, json!({"resources": {"gpu": 8}})),
            task(
                "zone",
                Priority::Normal,
                json!({"resources": {"labels": {"zone": "us"}}}),
            ),
            task("plain", Priority::Normal, json!({})),
        ];
        let d = s.decide("work", &window, slots(&s, &[]), 1);
        assert_eq!(ids(&d, &window), ["plain"]);
        let held: Vec<&str> = d.held.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(held, ["big", "zone"]);
        assert!(d.held[0].1.contains("no connected agent"), "{:?}", d.held);
        assert!(d.held[0].1.contains("\"gpu\":8"), "{:?}", d.held);
        // A critical task nobody can serve does not preempt anything.
        assert_eq!(d.starved, None);
        // A malformed requirement (stored before validation existed) is held too.
        let bad = vec![task(
            "bad",
            Priority::Normal,
            json!({"resources": {"gpu": "x"}}),
        )];
        let d = s.decide("work", &bad, slots(&s, &[]), 2);
        assert!(d.placements.is_empty());
        assert!(
            d.held[0].1.contains("metadata.resources.gpu"),
            "{:?}",
            d.held
        );
    }

    #[test]
    fn resources_need_a_decision_and_are_checked_at_submission() {
        let mut spec = task("r", Priority::Normal, json!({"resources": {"cpu": 2}}));
        assert!(needs_decision(&spec));
        spec.metadata.insert("resources".into(), json!({}));
        assert!(!needs_decision(&spec));
        let m = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert!(
            validate_hints(&m(json!({"resources": {"cpu": 1.5, "memory": "8Gi",
            "gpu": 1, "labels": {"zone": "eu"}}})))
            .is_ok()
        );
        let e = validate_hints(&m(
            json!({"resources": {"cpu": -1, "ram": 3, "labels": {"a": 1}}}),
        ))
        .unwrap_err();
        let fields = e.problem_fields();
        assert_eq!(
            fields,
            [
                "metadata.resources.cpu",
                "metadata.resources.labels.a",
                "metadata.resources.ram"
            ]
        );
        assert!(
            e.message.starts_with("metadata.resources.cpu "),
            "{}",
            e.message
        );
        let e = validate_hints(&m(json!({"resources": 5, "min_health": 3}))).unwrap_err();
        let fields = e.problem_fields();
        assert_eq!(fields, ["metadata.min_health", "metadata.resources"]);
        assert!(e.message.contains("(and 1 more problem)"), "{}", e.message);
    }

    #[test]
    fn settings_are_checked() {
        let bad = |edit: fn(&mut SchedulerConfig)| {
            let mut c = SchedulerConfig::default();
            edit(&mut c);
            Policies::from_config(&c).unwrap_err().message
        };
        assert!(bad(|c| c.default_strategy = "fastest".into()).contains("default_strategy"));
        assert!(bad(|c| c.key_rate_per_s = -1.0).contains("rate"));
        assert!(bad(|c| c.key_concurrency = 0).contains("key_concurrency"));
        assert!(bad(|c| c.breaker_failures = 0).contains("failure_threshold"));
        assert!(bad(|c| {
            c.task_types.insert(
                "t".into(),
                crate::config::TypePolicyConfig {
                    rules: vec!["metadata.x ~ 1 => tag:gpu".into()],
                    ..Default::default()
                },
            );
        })
        .contains("task_types.t.rules"));
        assert!(bad(|c| {
            c.hourly_budgets.insert("llm".into(), -5.0);
        })
        .contains("hourly_budgets.llm"));
    }

    #[test]
    fn hints_are_checked_at_submission() {
        let m = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert!(validate_hints(&m(json!({"report_title": "x"}))).is_ok());
        assert!(validate_hints(&m(json!({"routing_strategy": "round_robin"}))).is_ok());
        let e = validate_hints(&m(json!({"routing_strategy": "fastest", "min_health": 3})))
            .unwrap_err();
        assert_eq!(e.details["problems"].as_array().unwrap().len(), 2);
        assert!(validate_hints(&m(json!({"routing_strategy": "broadcast"}))).is_err());
        assert!(validate_hints(&m(json!({"estimated_complexity": -1}))).is_err());
    }

    #[test]
    fn descriptors_from_register() {
        let reg = v1::Register {
            agent_id: "a".into(),
            task_types: vec!["echo".into()],
            version: "1.2.3".into(),
            max_concurrent: 4,
            tags: vec!["gpu".into()],
            location: "eu-west".into(),
            weight: Some(3.0),
            ..Default::default()
        };
        let d = descriptor_of(&reg, AgentId::parse("a").unwrap()).unwrap();
        assert_eq!(d.agent_type, "echo");
        assert_eq!(d.weight, 3.0);
        assert_eq!(d.cost_factor, 1.0);
        assert_eq!(d.location.as_deref(), Some("eu-west"));
        let unlabelled = v1::Register {
            version: "unknown".into(),
            ..reg.clone()
        };
        let d = descriptor_of(&unlabelled, AgentId::parse("a").unwrap()).unwrap();
        assert_eq!(d.version, semver::Version::new(0, 0, 0));
        let negative = v1::Register {
            weight: Some(-1.0),
            ..reg
        };
        assert!(descriptor_of(&negative, AgentId::parse("a").unwrap())
            .unwrap_err()
            .message
            .contains("weight"));
    }
}
