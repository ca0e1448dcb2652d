//! Routing strategies: pure functions from a [`Snapshot`] of agents and a task's
//! [`TaskFacts`] to the agent (or, for broadcast, agents) it goes to.
//!
//! Every strategy only ever picks an *eligible* agent ([`AgentView::eligible`]):
//! routable (breaker not open, not draining), health at least the task's
//! `min_health`, a free slot, and the task type among its capabilities. A
//! strategy returns positions in the snapshot; an empty answer means no agent
//! can take the task now and it stays queued.
//!
//! State that outlives one decision (the round-robin cursor, the hash ring, the
//! affinity map, the rules, the failover list) is passed in; [`Router`] bundles
//! it for a caller that wants one value per task type.

pub mod affinity;
pub mod ring;
pub mod rules;

pub use affinity::AffinityMap;
pub use ring::HashRing;
pub use rules::{parse_rules, Rule, Target};

use crate::sched::hints::TaskFacts;
use crate::{AgentId, Error, Millis};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What routing knows about one agent at the moment of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// The agent.
    pub agent_id: AgentId,
    /// Its type (content rules match it).
    pub agent_type: String,
    /// Sorted ([`Snapshot::new`] sorts them).
    pub capabilities: Vec<String>,
    /// Sorted ([`Snapshot::new`] sorts them).
    pub tags: Vec<String>,
    /// Its location.
    pub location: Option<String>,
    /// Tasks assigned and not finished.
    pub in_flight: u32,
    /// Most tasks it runs at once.
    pub max_concurrency: u32,
    /// Relative share for the weighted strategies (0 = none).
    pub weight: f64,
    /// Seed 001's price per hour of work.
    pub cost_factor: f64,
    /// Average task duration; 0 while unknown.
    pub avg_task_ms: f64,
    /// 0..=1, see [`crate::sched::registry`].
    pub health: f64,
    /// False when the breaker is open or the agent is draining.
    pub routable: bool,
}

impl AgentView {
    /// A view with neutral defaults (weight 1, cost factor 1, health 1, no tags,
    /// no location, routable), for a caller that knows only what a connected
    /// session declared: its id, the task types it serves and its slots.
    pub fn new(
        agent_id: AgentId,
        capabilities: Vec<String>,
        in_flight: u32,
        max_concurrency: u32,
    ) -> Self {
        Self {
            agent_id,
            agent_type: String::new(),
            capabilities,
            tags: Vec::new(),
            location: None,
            in_flight,
            max_concurrency,
            weight: 1.0,
            cost_factor: 1.0,
            avg_task_ms: 0.0,
            health: 1.0,
            routable: true,
        }
    }

    /// Slots left.
    pub fn free_slots(&self) -> u32 {
        self.max_concurrency.saturating_sub(self.in_flight)
    }

    /// In-flight tasks over the concurrency limit (1 when the limit is 0).
    pub fn load(&self) -> f64 {
        if self.max_concurrency == 0 {
            return 1.0;
        }
        f64::from(self.in_flight) / f64::from(self.max_concurrency)
    }

    /// True if the task type is one of its capabilities.
    pub fn serves(&self, task_type: &str) -> bool {
        self.capabilities
            .binary_search_by(|c| c.as_str().cmp(task_type))
            .is_ok()
    }

    /// May this agent take this task now?
    pub fn eligible(&self, task: &TaskFacts) -> bool {
        self.routable
            && self.health >= task.hints.min_health
            && self.in_flight < self.max_concurrency
            && self.serves(task.task_type)
    }
}

/// Agents sorted by id, so that positions are stable, lookups by id are binary
/// searches, and round-robin order does not depend on how the caller collected
/// them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    agents: Vec<AgentView>,
}

impl Snapshot {
    /// Sorts by id (keeping the first of duplicate ids) and sorts each agent's
    /// capabilities and tags.
    pub fn new(mut agents: Vec<AgentView>) -> Self {
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        agents.dedup_by(|b, a| a.agent_id == b.agent_id);
        for a in &mut agents {
            a.capabilities.sort();
            a.tags.sort();
        }
        Self { agents }
    }

    /// The agents, by id.
    pub fn agents(&self) -> &[AgentView] {
        &self.agents
    }

    /// Mutable access that cannot break the ordering (for marking breakers).
    pub fn agents_mut(&mut self) -> impl Iterator<Item = &mut AgentView> {
        self.agents.iter_mut()
    }

    /// Where the agent with `id` is, if present.
    pub fn position(&self, id: &AgentId) -> Option<usize> {
        self.agents.binary_search_by(|a| a.agent_id.cmp(id)).ok()
    }

    /// The agents, by id, to rebuild a snapshot after changing them.
    pub fn into_inner(self) -> Vec<AgentView> {
        self.agents
    }
}

impl std::ops::Deref for Snapshot {
    type Target = [AgentView];
    fn deref(&self) -> &[AgentView] {
        &self.agents
    }
}

/// The ten strategies. `least_loaded` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    /// Lowest in-flight / limit ratio (the default).
    LeastLoaded,
    /// Each eligible agent in turn, in id order.
    RoundRobin,
    /// In proportion to weight × max concurrency, deterministically.
    WeightedCapacity,
    /// At random in proportion to weight.
    WeightedRandom,
    /// Lowest seed 001 cost score.
    CostBased,
    /// Owner of the task's routing key on a hash ring.
    ConsistentHash,
    /// The agent that last served the task's routing key.
    Affinity,
    /// Target chosen by the first matching content rule.
    ContentBased,
    /// First eligible agent of an ordered preference list.
    Failover,
    /// Every eligible agent.
    Broadcast,
}

impl Strategy {
    /// Every strategy, the default first.
    pub const ALL: [Strategy; 10] = [
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::WeightedCapacity,
        Strategy::WeightedRandom,
        Strategy::CostBased,
        Strategy::ConsistentHash,
        Strategy::Affinity,
        Strategy::ContentBased,
        Strategy::Failover,
        Strategy::Broadcast,
    ];

    /// The strategy's name, as `routing_strategy` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastLoaded => "least_loaded",
            Strategy::RoundRobin => "round_robin",
            Strategy::WeightedCapacity => "weighted_capacity",
            Strategy::WeightedRandom => "weighted_random",
            Strategy::CostBased => "cost_based",
            Strategy::ConsistentHash => "consistent_hash",
            Strategy::Affinity => "affinity",
            Strategy::ContentBased => "content_based",
            Strategy::Failover => "failover",
            Strategy::Broadcast => "broadcast",
        }
    }

    /// Parses a strategy name (case-insensitive, `-` accepted for `_`); an
    /// unknown name is an `invalid_argument` error naming the valid ones.
    pub fn parse(raw: &str) -> Result<Strategy, Error> {
        let norm = raw.trim().to_ascii_lowercase().replace('-', "_");
        Strategy::ALL
            .into_iter()
            .find(|s| s.as_str() == norm)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
                Error::invalid(format!(
                    "unknown routing strategy {raw:?}: use one of {}",
                    names.join(", ")
                ))
                .with_field("routing_strategy")
            })
    }
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Strategy::parse(s)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The eligible agent minimising `key`, ties to the lowest position (lowest id).
fn min_by<K: PartialOrd>(
    snap: &[AgentView],
    task: &TaskFacts,
    mut key: impl FnMut(&AgentView) -> K,
) -> Option<usize> {
    let mut best: Option<(usize, K)> = None;
    for (i, a) in snap.iter().enumerate() {
        if !a.eligible(task) {
            continue;
        }
        let k = key(a);
        if best.as_ref().is_none_or(|(_, b)| k < *b) {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i)
}

/// Lowest load (in flight / limit), then most free slots, then lowest id.
pub fn least_loaded(snap: &[AgentView], task: &TaskFacts) -> Option<usize> {
    min_by(snap, task, |a| (a.load(), -f64::from(a.free_slots())))
}

/// The first eligible agent at or after `*cursor` in id order, wrapping; moves
/// the cursor past it. Agents that become ineligible are skipped without
/// disturbing the order of the others.
pub fn round_robin(snap: &[AgentView], task: &TaskFacts, cursor: &mut u64) -> Option<usize> {
    let n = snap.len();
    if n == 0 {
        return None;
    }
    let start = (*cursor % n as u64) as usize;
    let pick = (0..n)
        .map(|i| (start + i) % n)
        .find(|&i| snap[i].eligible(task))?;
    *cursor = pick as u64 + 1;
    Some(pick)
}

/// Capacity share `weight × max_concurrency`: the agent whose in-flight count,
/// once it takes this task, is smallest relative to its share. Over many
/// decisions each agent receives work in proportion to its share. Agents of
/// weight 0 get nothing.
pub fn weighted_capacity(snap: &[AgentView], task: &TaskFacts) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, a) in snap.iter().enumerate() {
        let share = a.weight * f64::from(a.max_concurrency);
        if !a.eligible(task) || share <= 0.0 {
            continue;
        }
        let k = (f64::from(a.in_flight) + 1.0) / share;
        if best.is_none_or(|(_, b)| k < b) {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i)
}

/// Picks an eligible agent with probability proportional to its weight;
/// `sample` is uniform in `[0, 1)`. Agents of weight 0 get nothing.
pub fn weighted_random(snap: &[AgentView], task: &TaskFacts, sample: f64) -> Option<usize> {
    // One pass over the snapshot, since checking eligibility is the costly part:
    // the eligible agents with their running total of weight.
    let mut cumulative: Vec<(usize, f64)> = Vec::with_capacity(snap.len());
    let mut total = 0.0;
    for (i, a) in snap.iter().enumerate() {
        if a.weight > 0.0 && a.eligible(task) {
            total += a.weight;
            cumulative.push((i, total));
        }
    }
    if total <= 0.0 {
        return None;
    }
    let target = sample.clamp(0.0, 1.0) * total;
    // The first agent whose running total passes the target. Rounding can leave
    // a sliver past the last agent: it is the last one's.
    let at = cumulative.partition_point(|&(_, c)| c <= target);
    cumulative.get(at).or(cumulative.last()).map(|&(i, _)| i)
}

/// Task duration assumed for an agent with no measured average: one second.
pub const DEFAULT_TASK_MS: f64 = 1_000.0;

/// Seed 001's `cost_score`, as written there:
/// `cost_factor × (estimated_time / 3600) × (1 + active / max_concurrent)`, with
/// `estimated_time = average_task_time × estimated_complexity` in seconds (the
/// agent's average, or [`DEFAULT_TASK_MS`] while unknown). It is the expected
/// price of the task on that agent, in the unit of `cost_factor` per hour.
pub fn cost_score(agent: &AgentView, estimated_complexity: f64) -> f64 {
    let base_cost = agent.cost_factor;
    let utilization_penalty = f64::from(agent.in_flight) / f64::from(agent.max_concurrency.max(1));
    let avg_ms = if agent.avg_task_ms > 0.0 {
        agent.avg_task_ms
    } else {
        DEFAULT_TASK_MS
    };
    let estimated_time_s = avg_ms / 1000.0 * estimated_complexity;
    base_cost * (estimated_time_s / 3600.0) * (1.0 + utilization_penalty)
}

/// Lowest [`cost_score`], then lowest load, then lowest id.
pub fn cost_based(snap: &[AgentView], task: &TaskFacts) -> Option<usize> {
    let c = task.hints.estimated_complexity;
    min_by(snap, task, |a| (cost_score(a, c), a.load()))
}

/// The first eligible agent clockwise from the task's `routing_key` on the ring.
/// Only agents on the ring are candidates; a task without a key goes
/// least-loaded.
pub fn consistent_hash(snap: &Snapshot, task: &TaskFacts, ring: &HashRing) -> Option<usize> {
    let Some(key) = task.hints.routing_key.as_deref() else {
        return least_loaded(snap, task);
    };
    ring.walk(key)
        .filter_map(|id| snap.position(id))
        .find(|&i| snap[i].eligible(task))
}

/// Sticky routing: the agent that last served the task's `routing_key`, while it
/// is eligible; otherwise least-loaded, and the key now sticks to that agent.
/// A task without a key goes least-loaded and is not remembered.
pub fn affinity(
    snap: &Snapshot,
    task: &TaskFacts,
    map: &mut AffinityMap,
    now: Millis,
) -> Option<usize> {
    let Some(key) = task.hints.routing_key.as_deref() else {
        return least_loaded(snap, task);
    };
    let sticky = map
        .get(key, now)
        .and_then(|id| snap.position(id))
        .filter(|&i| snap[i].eligible(task));
    let pick = sticky.or_else(|| least_loaded(snap, task))?;
    map.record(key, &snap[pick].agent_id, now);
    Some(pick)
}

/// The first rule that matches the task decides the target (an agent type or a
/// tag) and the least-loaded eligible agent of that target is chosen, or none:
/// a matched rule is a constraint, never silently widened. When no rule
/// matches, the task goes least-loaded over every eligible agent.
pub fn content_based(snap: &[AgentView], task: &TaskFacts, rules: &[Rule]) -> Option<usize> {
    match rules.iter().find(|r| r.matches(task)) {
        Some(rule) => min_by(snap, task, |a| {
            (
                if rule.target.admits(a) { 0u8 } else { 1 },
                a.load(),
                -f64::from(a.free_slots()),
            )
        })
        .filter(|&i| rule.target.admits(&snap[i])),
        None => least_loaded(snap, task),
    }
}

/// The first agent in `preference` order that is in the snapshot and eligible.
pub fn failover(snap: &Snapshot, task: &TaskFacts, preference: &[AgentId]) -> Option<usize> {
    preference
        .iter()
        .filter_map(|id| snap.position(id))
        .find(|&i| snap[i].eligible(task))
}

/// Every eligible agent, in id order.
pub fn broadcast(snap: &[AgentView], task: &TaskFacts) -> Vec<usize> {
    snap.iter()
        .enumerate()
        .filter(|(_, a)| a.eligible(task))
        .map(|(i, _)| i)
        .collect()
}

/// The state the strategies carry between decisions, for one routing domain
/// (typically one task type).
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Round-robin cursor.
    pub cursor: u64,
    /// Consistent-hash ring; keep it in step with registrations
    /// ([`Router::on_register`], [`Router::on_deregister`]).
    pub ring: HashRing,
    /// Sticky keys for `affinity`.
    pub affinity: AffinityMap,
    /// Rules for `content_based`, in order.
    pub rules: Vec<Rule>,
    /// Failover order when the task names none (`preferred_agents`).
    pub failover: Vec<AgentId>,
}

impl Router {
    /// Adds a newly registered agent to the ring.
    pub fn on_register(&mut self, id: &AgentId) {
        self.ring.add(id);
    }

    /// Takes a departed agent off the ring and out of the affinity map.
    pub fn on_deregister(&mut self, id: &AgentId) {
        self.ring.remove(id);
        self.affinity.forget_agent(id);
    }

    /// Routes one task with `strategy`. `sample` (uniform in `[0, 1)`) is used by
    /// `weighted_random` only. Returns snapshot positions: one for every strategy
    /// but broadcast, none when no eligible agent exists.
    pub fn route(
        &mut self,
        strategy: Strategy,
        snap: &Snapshot,
        task: &TaskFacts,
        sample: f64,
        now: Millis,
    ) -> Vec<usize> {
        let one = match strategy {
            Strategy::LeastLoaded => least_loaded(snap, task),
            Strategy::RoundRobin => round_robin(snap, task, &mut self.cursor),
            Strategy::WeightedCapacity => weighted_capacity(snap, task),
            Strategy::WeightedRandom => weighted_random(snap, task, sample),
            Strategy::CostBased => cost_based(snap, task),
            Strategy::ConsistentHash => consistent_hash(snap, task, &self.ring),
            Strategy::Affinity => affinity(snap, task, &mut self.affinity, now),
            Strategy::ContentBased => content_based(snap, task, &self.rules),
            Strategy::Failover => {
                let pref = if task.hints.preferred_agents.is_empty() {
                    &self.failover
                } else {
                    &task.hints.preferred_agents
                };
                failover(snap, task, pref)
            }
            Strategy::Broadcast => return broadcast(snap, task),
        };
        one.into_iter().collect()
    }
}

#[cfg(test)]
mod tests;
