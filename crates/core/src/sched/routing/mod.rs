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
use std::collections::HashMap;
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
///
/// Beside the views, a snapshot keeps a dense copy of what the strategies read
/// on every agent (flags, health, slots, weight, cost, an interned agent type
/// and tag set), one array per field, so that a scan of 10,000 agents reads a
/// few hundred kilobytes in order instead of 10,000 scattered views and their
/// heap strings. A snapshot built for one task type
/// ([`Snapshot::for_task_type`]) also answers "does it serve the task type"
/// from a bit decided once at build, which the views answer with a string
/// search per agent per decision. Changes go through [`Snapshot::modify_at`],
/// [`Snapshot::set_in_flight`] and [`Snapshot::set_routable`], which keep both
/// in step.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    agents: Vec<AgentView>,
    dense: Dense,
    /// The task type the `SERVES` flag answers for.
    task_type: Option<String>,
}

/// Routable (breaker allows, not draining).
const ROUTABLE: u8 = 1;
/// A free slot.
const FREE: u8 = 2;
/// Serves the snapshot's task type.
const SERVES: u8 = 4;

/// The fields of [`AgentView`] routing reads, one array per field, in snapshot
/// order.
#[derive(Debug, Clone, Default)]
struct Dense {
    flags: Vec<u8>,
    health: Vec<f64>,
    in_flight: Vec<u32>,
    max_concurrency: Vec<u32>,
    weight: Vec<f64>,
    cost_factor: Vec<f64>,
    avg_task_ms: Vec<f64>,
    /// Index into `types`.
    agent_type: Vec<u32>,
    /// Bit `i` set: the agent has tag `i` of `tags` (the first 64 tags only).
    tag_bits: Vec<u64>,
    types: HashMap<String, u32>,
    tags: HashMap<String, u32>,
}

impl Dense {
    fn push(&mut self, a: &AgentView, serves: bool) {
        let n_types = self.types.len() as u32;
        let agent_type = *self.types.entry(a.agent_type.clone()).or_insert(n_types);
        let mut bits = 0u64;
        for t in &a.tags {
            let n_tags = self.tags.len() as u32;
            let at = *self.tags.entry(t.clone()).or_insert(n_tags);
            if at < 64 {
                bits |= 1 << at;
            }
        }
        self.flags.push(flags_of(a, serves));
        self.health.push(a.health);
        self.in_flight.push(a.in_flight);
        self.max_concurrency.push(a.max_concurrency);
        self.weight.push(a.weight);
        self.cost_factor.push(a.cost_factor);
        self.avg_task_ms.push(a.avg_task_ms);
        self.agent_type.push(agent_type);
        self.tag_bits.push(bits);
    }
}

fn flags_of(a: &AgentView, serves: bool) -> u8 {
    let mut f = 0;
    if a.routable {
        f |= ROUTABLE;
    }
    if a.in_flight < a.max_concurrency {
        f |= FREE;
    }
    if serves {
        f |= SERVES;
    }
    f
}

impl Snapshot {
    /// Sorts by id (keeping the first of duplicate ids) and sorts each agent's
    /// capabilities and tags.
    pub fn new(agents: Vec<AgentView>) -> Self {
        Self::build(agents, None)
    }

    /// A snapshot for routing tasks of one type, such as the agents serving it:
    /// whether each agent serves the type is decided here, once, rather than in
    /// every decision. Tasks of another type are still routed correctly, at the
    /// cost of that test per agent.
    pub fn for_task_type(task_type: &str, agents: Vec<AgentView>) -> Self {
        Self::build(agents, Some(task_type.to_string()))
    }

    fn build(mut agents: Vec<AgentView>, task_type: Option<String>) -> Self {
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        agents.dedup_by(|b, a| a.agent_id == b.agent_id);
        let mut dense = Dense::default();
        for a in &mut agents {
            a.capabilities.sort();
            a.tags.sort();
            let serves = task_type.as_deref().is_some_and(|t| a.serves(t));
            dense.push(a, serves);
        }
        Self {
            agents,
            dense,
            task_type,
        }
    }

    /// The agents, by id.
    pub fn agents(&self) -> &[AgentView] {
        &self.agents
    }

    /// The task type it was built for, if any ([`Snapshot::for_task_type`]).
    pub fn task_type(&self) -> Option<&str> {
        self.task_type.as_deref()
    }

    /// Changes the agent at `pos` (not its id: the order must hold).
    pub fn modify_at(&mut self, pos: usize, change: impl FnOnce(&mut AgentView)) {
        let Some(a) = self.agents.get_mut(pos) else {
            return;
        };
        let id = a.agent_id.clone();
        change(a);
        a.agent_id = id;
        a.capabilities.sort();
        a.tags.sort();
        let serves = self.task_type.as_deref().is_some_and(|t| a.serves(t));
        let a = &self.agents[pos];
        let d = &mut self.dense;
        let n_types = d.types.len() as u32;
        d.agent_type[pos] = *d.types.entry(a.agent_type.clone()).or_insert(n_types);
        let mut bits = 0u64;
        for t in &a.tags {
            let n_tags = d.tags.len() as u32;
            let at = *d.tags.entry(t.clone()).or_insert(n_tags);
            if at < 64 {
                bits |= 1 << at;
            }
        }
        d.tag_bits[pos] = bits;
        d.flags[pos] = flags_of(a, serves);
        d.health[pos] = a.health;
        d.in_flight[pos] = a.in_flight;
        d.max_concurrency[pos] = a.max_concurrency;
        d.weight[pos] = a.weight;
        d.cost_factor[pos] = a.cost_factor;
        d.avg_task_ms[pos] = a.avg_task_ms;
    }

    /// Changes every agent (see [`Snapshot::modify_at`]).
    pub fn modify_all(&mut self, mut change: impl FnMut(&mut AgentView)) {
        for pos in 0..self.agents.len() {
            self.modify_at(pos, &mut change);
        }
    }

    /// Sets the in-flight count of the agent at `pos` (a task placed on it).
    pub fn set_in_flight(&mut self, pos: usize, in_flight: u32) {
        let Some(a) = self.agents.get_mut(pos) else {
            return;
        };
        a.in_flight = in_flight;
        self.dense.in_flight[pos] = in_flight;
        if in_flight < a.max_concurrency {
            self.dense.flags[pos] |= FREE;
        } else {
            self.dense.flags[pos] &= !FREE;
        }
    }

    /// Marks the agent at `pos` routable or not (breaker, draining).
    pub fn set_routable(&mut self, pos: usize, routable: bool) {
        let Some(a) = self.agents.get_mut(pos) else {
            return;
        };
        a.routable = routable;
        if routable {
            self.dense.flags[pos] |= ROUTABLE;
        } else {
            self.dense.flags[pos] &= !ROUTABLE;
        }
    }

    /// Where the agent with `id` is, if present.
    pub fn position(&self, id: &AgentId) -> Option<usize> {
        self.agents.binary_search_by(|a| a.agent_id.cmp(id)).ok()
    }

    /// May the agent at `pos` take this task now? The same answer as
    /// [`AgentView::eligible`], from the dense copy.
    pub fn eligible(&self, pos: usize, task: &TaskFacts) -> bool {
        pos < self.len() && self.filter(task).admits(pos)
    }

    /// The agents, by id, to rebuild a snapshot after changing them.
    pub fn into_inner(self) -> Vec<AgentView> {
        self.agents
    }

    /// The eligibility test of one task, with what does not depend on the agent
    /// decided once.
    fn filter<'a>(&'a self, task: &TaskFacts<'a>) -> Filter<'a> {
        let known = self.task_type.as_deref() == Some(task.task_type);
        Filter {
            flags: &self.dense.flags,
            health: &self.dense.health,
            agents: &self.agents,
            min_health: task.hints.min_health,
            need: if known {
                ROUTABLE | FREE | SERVES
            } else {
                ROUTABLE | FREE
            },
            task_type: (!known).then_some(task.task_type),
        }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = [AgentView];
    fn deref(&self) -> &[AgentView] {
        &self.agents
    }
}

/// [`AgentView::eligible`] over a snapshot's dense arrays.
struct Filter<'a> {
    flags: &'a [u8],
    health: &'a [f64],
    agents: &'a [AgentView],
    min_health: f64,
    need: u8,
    /// Set when the snapshot's `SERVES` flag does not answer for this task type.
    task_type: Option<&'a str>,
}

impl Filter<'_> {
    #[inline]
    fn admits(&self, i: usize) -> bool {
        self.flags_and_health(i) && self.serves(i)
    }

    /// The flags and health part, without branches: whether an agent passes is
    /// close to random in a scan, so a mispredicted branch per agent would cost
    /// more than the test. The scans below combine it with `&`.
    #[inline]
    fn flags_and_health(&self, i: usize) -> bool {
        (self.flags[i] & self.need == self.need) & (self.health[i] >= self.min_health)
    }

    /// The task type part, for a snapshot that was not built for it.
    #[inline]
    fn serves(&self, i: usize) -> bool {
        self.task_type.is_none_or(|t| self.agents[i].serves(t))
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

/// Lowest load (in flight / limit), then most free slots, then lowest id,
/// among the eligible agents that `admit` lets through.
fn least_loaded_where(
    snap: &Snapshot,
    task: &TaskFacts,
    admit: impl Fn(usize) -> bool,
) -> Option<usize> {
    let f = snap.filter(task);
    let d = &snap.dense;
    let n = snap.len();
    let (in_flight, max) = (&d.in_flight[..n], &d.max_concurrency[..n]);
    // `usize::MAX`: none yet. Keys are computed for every agent (an eligible one
    // has a limit above its in-flight count, so the values are the real ones)
    // and only the rare improvement branches.
    let (mut bi, mut bl, mut bf) = (usize::MAX, 0.0, 0u32);
    for i in 0..n {
        let limit = max[i].max(1);
        let load = f64::from(in_flight[i]) / f64::from(limit);
        let free = limit.saturating_sub(in_flight[i]);
        let better = (bi == usize::MAX) | (load < bl) | ((load == bl) & (free > bf));
        if f.flags_and_health(i) & better & admit(i) && f.serves(i) {
            (bi, bl, bf) = (i, load, free);
        }
    }
    (bi != usize::MAX).then_some(bi)
}

/// Lowest load (in flight / limit), then most free slots, then lowest id.
pub fn least_loaded(snap: &Snapshot, task: &TaskFacts) -> Option<usize> {
    least_loaded_where(snap, task, |_| true)
}

/// The first eligible agent at or after `*cursor` in id order, wrapping; moves
/// the cursor past it. Agents that become ineligible are skipped without
/// disturbing the order of the others.
pub fn round_robin(snap: &Snapshot, task: &TaskFacts, cursor: &mut u64) -> Option<usize> {
    let n = snap.len();
    if n == 0 {
        return None;
    }
    let f = snap.filter(task);
    let start = (*cursor % n as u64) as usize;
    let pick = (start..n).chain(0..start).find(|&i| f.admits(i))?;
    *cursor = pick as u64 + 1;
    Some(pick)
}

/// Capacity share `weight × max_concurrency`: the agent whose in-flight count,
/// once it takes this task, is smallest relative to its share. Over many
/// decisions each agent receives work in proportion to its share. Agents of
/// weight 0 get nothing.
pub fn weighted_capacity(snap: &Snapshot, task: &TaskFacts) -> Option<usize> {
    let f = snap.filter(task);
    let d = &snap.dense;
    let n = snap.len();
    let (weight, in_flight, max) = (&d.weight[..n], &d.in_flight[..n], &d.max_concurrency[..n]);
    let (mut bi, mut bk) = (usize::MAX, 0.0);
    for i in 0..n {
        let share = weight[i] * f64::from(max[i]);
        let k = (f64::from(in_flight[i]) + 1.0) / share;
        let better = (bi == usize::MAX) | (k < bk);
        if f.flags_and_health(i) & (share > 0.0) & better && f.serves(i) {
            (bi, bk) = (i, k);
        }
    }
    (bi != usize::MAX).then_some(bi)
}

/// Picks an eligible agent with probability proportional to its weight;
/// `sample` is uniform in `[0, 1)`. Agents of weight 0 get nothing.
pub fn weighted_random(snap: &Snapshot, task: &TaskFacts, sample: f64) -> Option<usize> {
    let f = snap.filter(task);
    let n = snap.len();
    let weight = &snap.dense.weight[..n];
    // Two passes over the dense arrays, the running total summed in the same
    // order both times: the total, then the first agent whose running total
    // passes the target. Rounding can leave a sliver past the last agent: it is
    // the last one's.
    let mut total = 0.0;
    let mut last = None;
    for (i, &w) in weight.iter().enumerate() {
        // Adding 0.0 leaves a running total of non-negative weights unchanged.
        let take = f.flags_and_health(i) & (w > 0.0) && f.serves(i);
        total += if take { w } else { 0.0 };
        last = if take { Some(i) } else { last };
    }
    if total <= 0.0 {
        return None;
    }
    let target = sample.clamp(0.0, 1.0) * total;
    let mut running = 0.0;
    for (i, &w) in weight.iter().enumerate() {
        let take = f.flags_and_health(i) & (w > 0.0) && f.serves(i);
        running += if take { w } else { 0.0 };
        if take & (running > target) {
            return Some(i);
        }
    }
    last
}

/// Task duration assumed for an agent with no measured average: one second.
pub const DEFAULT_TASK_MS: f64 = 1_000.0;

/// Seed 001's `cost_score`, as written there:
/// `cost_factor × (estimated_time / 3600) × (1 + active / max_concurrent)`, with
/// `estimated_time = average_task_time × estimated_complexity` in seconds (the
/// agent's average, or [`DEFAULT_TASK_MS`] while unknown). It is the expected
/// price of the task on that agent, in the unit of `cost_factor` per hour.
pub fn cost_score(agent: &AgentView, estimated_complexity: f64) -> f64 {
    cost_of(
        agent.cost_factor,
        agent.avg_task_ms,
        agent.in_flight,
        agent.max_concurrency,
        estimated_complexity,
    )
}

#[inline]
fn cost_of(
    cost_factor: f64,
    avg_task_ms: f64,
    in_flight: u32,
    max_concurrency: u32,
    estimated_complexity: f64,
) -> f64 {
    let base_cost = cost_factor;
    let utilization_penalty = f64::from(in_flight) / f64::from(max_concurrency.max(1));
    let avg_ms = if avg_task_ms > 0.0 {
        avg_task_ms
    } else {
        DEFAULT_TASK_MS
    };
    let estimated_time_s = avg_ms / 1000.0 * estimated_complexity;
    base_cost * (estimated_time_s / 3600.0) * (1.0 + utilization_penalty)
}

/// Lowest [`cost_score`], then lowest load, then lowest id.
pub fn cost_based(snap: &Snapshot, task: &TaskFacts) -> Option<usize> {
    let c = task.hints.estimated_complexity;
    let f = snap.filter(task);
    let d = &snap.dense;
    let n = snap.len();
    let (cost_factor, avg, in_flight, max) = (
        &d.cost_factor[..n],
        &d.avg_task_ms[..n],
        &d.in_flight[..n],
        &d.max_concurrency[..n],
    );
    let (mut bi, mut bc, mut bl) = (usize::MAX, 0.0, 0.0);
    for i in 0..n {
        let cost = cost_of(cost_factor[i], avg[i], in_flight[i], max[i], c);
        let load = f64::from(in_flight[i]) / f64::from(max[i].max(1));
        let better = (bi == usize::MAX) | (cost < bc) | ((cost == bc) & (load < bl));
        if f.flags_and_health(i) & better && f.serves(i) {
            (bi, bc, bl) = (i, cost, load);
        }
    }
    (bi != usize::MAX).then_some(bi)
}

/// The first eligible agent clockwise from the task's `routing_key` on the ring.
/// Only agents on the ring are candidates; a task without a key goes
/// least-loaded.
pub fn consistent_hash(snap: &Snapshot, task: &TaskFacts, ring: &HashRing) -> Option<usize> {
    let Some(key) = task.hints.routing_key.as_deref() else {
        return least_loaded(snap, task);
    };
    let f = snap.filter(task);
    ring.walk(key)
        .filter_map(|id| snap.position(id))
        .find(|&i| f.admits(i))
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
        .filter(|&i| snap.eligible(i, task));
    let pick = sticky.or_else(|| least_loaded(snap, task))?;
    map.record(key, &snap[pick].agent_id, now);
    Some(pick)
}

/// The first rule that matches the task decides the target (an agent type or a
/// tag) and the least-loaded eligible agent of that target is chosen, or none:
/// a matched rule is a constraint, never silently widened. When no rule
/// matches, the task goes least-loaded over every eligible agent.
pub fn content_based(snap: &Snapshot, task: &TaskFacts, rules: &[Rule]) -> Option<usize> {
    let Some(rule) = rules.iter().find(|r| r.matches(task)) else {
        return least_loaded(snap, task);
    };
    // The target as the snapshot's interned type or tag bit, looked up once.
    let d = &snap.dense;
    match &rule.target {
        Target::AgentType(t) => {
            let want = *d.types.get(t)?;
            least_loaded_where(snap, task, |i| d.agent_type[i] == want)
        }
        Target::Tag(t) => match *d.tags.get(t)? {
            at if at < 64 => {
                let bit = 1u64 << at;
                least_loaded_where(snap, task, |i| d.tag_bits[i] & bit != 0)
            }
            _ => least_loaded_where(snap, task, |i| rule.target.admits(&snap[i])),
        },
    }
}

/// The first agent in `preference` order that is in the snapshot and eligible.
pub fn failover(snap: &Snapshot, task: &TaskFacts, preference: &[AgentId]) -> Option<usize> {
    let f = snap.filter(task);
    preference
        .iter()
        .filter_map(|id| snap.position(id))
        .find(|&i| f.admits(i))
}

/// Every eligible agent, in id order.
pub fn broadcast(snap: &Snapshot, task: &TaskFacts) -> Vec<usize> {
    let f = snap.filter(task);
    let n = snap.len();
    if f.task_type.is_some() {
        return (0..n).filter(|&i| f.admits(i)).collect();
    }
    // Write every position and advance past the eligible ones only: no branch
    // per agent.
    let mut out = vec![0; n];
    let mut len = 0;
    for i in 0..n {
        out[len] = i;
        len += usize::from(f.flags_and_health(i));
    }
    out.truncate(len);
    out
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
