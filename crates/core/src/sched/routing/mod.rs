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
use std::borrow::Cow;
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
/// on every agent, one array per field, so that a scan of 10,000 agents reads a
/// few hundred kilobytes in order instead of 10,000 scattered views and their
/// heap strings. The keys the scans compare are computed once per agent, when
/// it enters the snapshot or changes, rather than once per agent per decision:
/// the load ratio, the free slots, the weighted-capacity key and the cost rate
/// ([`cost_rate`]). A snapshot built for one task type
/// ([`Snapshot::for_task_type`]) also folds "routable, a free slot and serves
/// the type" into a `gate` per agent, its health or NaN, so that a task of that
/// type is admitted by one comparison with its `min_health`; a task of another
/// type is tested field by field, with a string search for its type. The
/// arrays are padded to whole chunks of `LANES` agents with rows that never
/// pass, so the scans run over whole chunks, which the compiler turns into
/// vector instructions. Changes go through [`Snapshot::modify_at`],
/// [`Snapshot::set_in_flight`] and [`Snapshot::set_routable`], which keep both
/// in step.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    agents: Vec<AgentView>,
    dense: Dense,
    /// The task type the `SERVES` flag and the gate answer for.
    task_type: Option<String>,
}

/// Agents per chunk of the scans: each lane keeps its own best, so that the
/// lanes of one chunk do not wait on each other.
const LANES: usize = 4;

/// Routable (breaker allows, not draining).
const ROUTABLE: u8 = 1;
/// A free slot.
const FREE: u8 = 2;
/// Serves the snapshot's task type.
const SERVES: u8 = 4;

/// The fields of [`AgentView`] routing reads and the keys it compares, one
/// array per field, in snapshot order, padded to whole chunks of [`LANES`].
#[derive(Debug, Clone, Default)]
struct Dense {
    flags: Vec<u8>,
    health: Vec<f64>,
    /// Health when routable, free and serving the snapshot's task type; NaN
    /// otherwise, and in the padding (NaN passes no comparison).
    gate: Vec<f64>,
    /// In flight / limit, the limit taken as at least 1.
    load: Vec<f64>,
    /// Minus the free slots: least-loaded's tie-break, as a key to minimise.
    neg_free: Vec<f64>,
    /// Weighted capacity's `(in flight + 1) / (weight × limit)`; NaN when the
    /// share is not positive.
    capacity_key: Vec<f64>,
    /// [`cost_rate`].
    cost_rate: Vec<f64>,
    weight: Vec<f64>,
    /// Index into `types`.
    agent_type: Vec<u32>,
    /// Bit `i` set: the agent has tag `i` of `tags` (the first 64 tags only).
    tag_bits: Vec<u64>,
    types: HashMap<String, u32>,
    tags: HashMap<String, u32>,
}

impl Dense {
    /// Appends a row that never passes: padding, or a row [`Dense::set`] fills.
    fn push_blank(&mut self) {
        self.flags.push(0);
        self.health.push(f64::NAN);
        self.gate.push(f64::NAN);
        self.load.push(0.0);
        self.neg_free.push(0.0);
        self.capacity_key.push(f64::NAN);
        self.cost_rate.push(f64::NAN);
        self.weight.push(0.0);
        self.agent_type.push(u32::MAX);
        self.tag_bits.push(0);
    }

    /// Rows up to a whole number of chunks.
    fn pad(&mut self) {
        while !self.flags.len().is_multiple_of(LANES) {
            self.push_blank();
        }
    }

    /// Writes row `pos` from `a`: its interned type and tags, then its state.
    fn set(&mut self, pos: usize, a: &AgentView, serves: bool) {
        let n_types = self.types.len() as u32;
        self.agent_type[pos] = *self.types.entry(a.agent_type.clone()).or_insert(n_types);
        let mut bits = 0u64;
        for t in &a.tags {
            let n_tags = self.tags.len() as u32;
            let at = *self.tags.entry(t.clone()).or_insert(n_tags);
            if at < 64 {
                bits |= 1 << at;
            }
        }
        self.tag_bits[pos] = bits;
        self.set_state(pos, a, serves);
    }

    /// Writes what changes with in-flight counts and breakers: flags, health,
    /// gate and the keys.
    fn set_state(&mut self, pos: usize, a: &AgentView, serves: bool) {
        let flags = flags_of(a, serves);
        let share = a.weight * f64::from(a.max_concurrency);
        self.flags[pos] = flags;
        self.health[pos] = a.health;
        self.gate[pos] = if flags == ROUTABLE | FREE | SERVES {
            a.health
        } else {
            f64::NAN
        };
        self.load[pos] = f64::from(a.in_flight) / f64::from(a.max_concurrency.max(1));
        self.neg_free[pos] = -f64::from(a.free_slots());
        self.capacity_key[pos] = if share > 0.0 {
            (f64::from(a.in_flight) + 1.0) / share
        } else {
            f64::NAN
        };
        self.cost_rate[pos] = cost_rate(a);
        self.weight[pos] = a.weight;
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

/// One chunk of a dense array.
#[inline(always)]
fn chunk<T>(xs: &[T], start: usize) -> &[T; LANES] {
    xs[start..start + LANES]
        .try_into()
        .expect("dense arrays hold whole chunks")
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
        for (pos, a) in agents.iter_mut().enumerate() {
            a.capabilities.sort();
            a.tags.sort();
            let serves = task_type.as_deref().is_some_and(|t| a.serves(t));
            dense.push_blank();
            dense.set(pos, a, serves);
        }
        dense.pad();
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
        self.dense.set(pos, &self.agents[pos], serves);
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
        let serves = self.dense.flags[pos] & SERVES != 0;
        self.dense.set_state(pos, a, serves);
    }

    /// Marks the agent at `pos` routable or not (breaker, draining).
    pub fn set_routable(&mut self, pos: usize, routable: bool) {
        let Some(a) = self.agents.get_mut(pos) else {
            return;
        };
        a.routable = routable;
        let serves = self.dense.flags[pos] & SERVES != 0;
        self.dense.set_state(pos, a, serves);
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

    /// Chunks of the dense arrays: positions `0..chunks() * LANES`, the last
    /// ones padding.
    fn chunks(&self) -> usize {
        self.dense.flags.len() / LANES
    }

    /// The eligibility test of one task, with what does not depend on the agent
    /// decided once.
    fn filter<'a>(&'a self, task: &TaskFacts<'a>) -> Filter<'a> {
        Filter {
            dense: &self.dense,
            agents: &self.agents,
            min_health: task.hints.min_health,
            known: self.task_type.as_deref() == Some(task.task_type),
            task_type: task.task_type,
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
    dense: &'a Dense,
    agents: &'a [AgentView],
    min_health: f64,
    /// The snapshot was built for the task's type: the gate answers.
    known: bool,
    task_type: &'a str,
}

impl Filter<'_> {
    /// Position `i` (padding included, which never passes).
    #[inline]
    fn admits(&self, i: usize) -> bool {
        let d = self.dense;
        if self.known {
            return d.gate[i] >= self.min_health;
        }
        // Flags and health without a branch between them; the padding fails
        // them, so the string search never reads past the views.
        (d.flags[i] & (ROUTABLE | FREE) == ROUTABLE | FREE) & (d.health[i] >= self.min_health)
            && self.agents[i].serves(self.task_type)
    }

    /// Per position (padding included), a value that is at least `min_health`
    /// exactly when the agent may take the task: the snapshot's gates for its
    /// own task type; otherwise +∞ or NaN, from the test field by field. The
    /// scans compare it without a branch: whether an agent passes is close to
    /// random in a scan, so a mispredicted branch per agent would cost more
    /// than the test.
    fn gates(&self) -> Cow<'_, [f64]> {
        if self.known {
            return Cow::Borrowed(&self.dense.gate);
        }
        (0..self.dense.gate.len())
            .map(|i| {
                if self.admits(i) {
                    f64::INFINITY
                } else {
                    f64::NAN
                }
            })
            .collect()
    }
}

/// All ones when `c` holds, else zero: a lane mask for [`select`].
#[inline(always)]
fn mask(c: bool) -> u64 {
    0u64.wrapping_sub(u64::from(c))
}

/// `a` where `m` is all ones, `b` where it is zero, without a branch. The scans
/// select this way rather than with `if`, which the compiler may turn into a
/// branch per agent and does not vectorise.
#[inline(always)]
fn select(m: u64, a: f64, b: f64) -> f64 {
    f64::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
}

/// `x`, or NaN (all bits set) where `m` is zero: NaN is never lower.
#[inline(always)]
fn or_nan(m: u64, x: f64) -> f64 {
    f64::from_bits(x.to_bits() | !m)
}

/// The position with the lowest `(k1, k2)`, the lowest position among equals,
/// over `chunks` whole chunks; `keys(start)` gives the keys of the chunk at
/// `start`, NaN in `k1` for a position that may not be chosen. Each lane keeps
/// the best of its own positions (as an `f64`, exact far beyond any snapshot),
/// with no dependency between lanes and no branch, so the loop compiles to
/// vector instructions; the lanes are merged at the end. `k2` must never be
/// NaN or +∞: a lane starts at (+∞, +∞), so that a first key of +∞ is taken.
#[inline(always)]
fn lowest(chunks: usize, keys: impl Fn(usize) -> ([f64; LANES], [f64; LANES])) -> Option<usize> {
    let mut b1 = [f64::INFINITY; LANES];
    let mut b2 = [f64::INFINITY; LANES];
    let mut at = [f64::INFINITY; LANES];
    let mut pos: [f64; LANES] = std::array::from_fn(|j| j as f64);
    for c in 0..chunks {
        let (k1, k2) = keys(c * LANES);
        for j in 0..LANES {
            let better = mask((k1[j] < b1[j]) | ((k1[j] == b1[j]) & (k2[j] < b2[j])));
            b1[j] = select(better, k1[j], b1[j]);
            b2[j] = select(better, k2[j], b2[j]);
            at[j] = select(better, pos[j], at[j]);
            pos[j] += LANES as f64;
        }
    }
    let mut best: Option<usize> = None;
    for j in 0..LANES {
        if at[j] == f64::INFINITY {
            continue;
        }
        let better = best.is_none_or(|b| {
            let lane = b % LANES;
            (b1[j], b2[j], at[j]).partial_cmp(&(b1[lane], b2[lane], at[lane]))
                == Some(std::cmp::Ordering::Less)
        });
        if better {
            best = Some(at[j] as usize);
        }
    }
    best
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
/// among the eligible agents that `admit` lets through (a lane mask for the
/// chunk at the position it is given).
#[inline(always)]
fn least_loaded_where(
    snap: &Snapshot,
    task: &TaskFacts,
    admit: impl Fn(usize) -> [u64; LANES],
) -> Option<usize> {
    let f = snap.filter(task);
    let (gate, min_health) = (f.gates(), f.min_health);
    let d = &snap.dense;
    lowest(snap.chunks(), |s| {
        let (g, extra) = (chunk(&gate, s), admit(s));
        let load = chunk(&d.load, s);
        let k1 = std::array::from_fn(|j| or_nan(mask(g[j] >= min_health) & extra[j], load[j]));
        (k1, *chunk(&d.neg_free, s))
    })
}

/// Lowest load (in flight / limit), then most free slots, then lowest id.
pub fn least_loaded(snap: &Snapshot, task: &TaskFacts) -> Option<usize> {
    least_loaded_where(snap, task, |_| [u64::MAX; LANES])
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
    let (gate, min_health) = (f.gates(), f.min_health);
    let d = &snap.dense;
    // The key is NaN for a share that is not positive: never chosen.
    lowest(snap.chunks(), |s| {
        let (g, key) = (chunk(&gate, s), chunk(&d.capacity_key, s));
        let k1 = std::array::from_fn(|j| or_nan(mask(g[j] >= min_health), key[j]));
        (k1, [0.0; LANES])
    })
}

/// Agents per block of [`weighted_random`]'s first pass.
const BLOCK: usize = 16 * LANES;

/// Picks an eligible agent with probability proportional to its weight;
/// `sample` is uniform in `[0, 1)`. Agents of weight 0 get nothing.
///
/// Each agent owns an interval of the running total of the eligible weights,
/// in id order, and the agent whose interval holds `sample × total` is chosen.
/// The total is summed by blocks of [`BLOCK`] agents (lanes within a block,
/// then the blocks in order), so that the pass over every agent is not one
/// long chain of additions; then only the block holding the target is walked
/// agent by agent. Rounding can leave a sliver at the end of a block or of the
/// total: it is the last agent's of that block, or of all.
pub fn weighted_random(snap: &Snapshot, task: &TaskFacts, sample: f64) -> Option<usize> {
    let f = snap.filter(task);
    let (gate, min_health) = (f.gates(), f.min_health);
    let d = &snap.dense;
    let len = snap.chunks() * LANES;
    // The weight an agent counts with: 0 unless it may be chosen.
    let counted = |s: usize| -> [f64; LANES] {
        let (g, w) = (chunk(&gate, s), chunk(&d.weight, s));
        std::array::from_fn(|j| select(mask((g[j] >= min_health) & (w[j] > 0.0)), w[j], 0.0))
    };
    let mut sums = Vec::with_capacity(len.div_ceil(BLOCK));
    let mut total = 0.0;
    for b in (0..len).step_by(BLOCK) {
        let mut lanes = [0.0; LANES];
        for s in (b..len.min(b + BLOCK)).step_by(LANES) {
            let w = counted(s);
            for j in 0..LANES {
                lanes[j] += w[j];
            }
        }
        let sum: f64 = lanes.iter().sum();
        sums.push(sum);
        total += sum;
    }
    if total <= 0.0 {
        return None;
    }
    let target = sample.clamp(0.0, 1.0) * total;
    let block = |b: usize| (b * BLOCK..len.min((b + 1) * BLOCK)).step_by(LANES);
    let mut running = 0.0;
    let (mut within, mut last_block) = (None, None);
    for (b, &sum) in sums.iter().enumerate() {
        if sum <= 0.0 {
            continue;
        }
        last_block = Some(b);
        if running + sum > target {
            within = Some(b);
            break;
        }
        running += sum;
    }
    // Past the end (rounding): the last agent that counts, of the last block.
    let (b, target) = match within {
        Some(b) => (b, target),
        None => (last_block?, f64::INFINITY),
    };
    // The block's agents one by one, from the running total before it.
    let mut last = None;
    for s in block(b) {
        for (j, &w) in counted(s).iter().enumerate() {
            if w > 0.0 {
                running += w;
                last = Some(s + j);
                if running > target {
                    return last;
                }
            }
        }
    }
    last
}

/// Task duration assumed for an agent with no measured average: one second.
pub const DEFAULT_TASK_MS: f64 = 1_000.0;

/// Seed 001's `cost_score`:
/// `cost_factor × (estimated_time / 3600) × (1 + active / max_concurrent)`, with
/// `estimated_time = average_task_time × estimated_complexity` in seconds (the
/// agent's average, or [`DEFAULT_TASK_MS`] while unknown). It is the expected
/// price of the task on that agent, in the unit of `cost_factor` per hour.
/// Computed as [`cost_rate`] × `estimated_complexity`: the same product, with
/// the factor that depends on the task last, so that a snapshot can keep the
/// rest per agent and cost-based routing multiplies once per agent.
pub fn cost_score(agent: &AgentView, estimated_complexity: f64) -> f64 {
    cost_rate(agent) * estimated_complexity
}

/// The part of [`cost_score`] that does not depend on the task: the price of
/// one unit of complexity on that agent,
/// `cost_factor × (average_task_time / 3600) × (1 + active / max_concurrent)`.
pub fn cost_rate(agent: &AgentView) -> f64 {
    let utilization_penalty = f64::from(agent.in_flight) / f64::from(agent.max_concurrency.max(1));
    let avg_ms = if agent.avg_task_ms > 0.0 {
        agent.avg_task_ms
    } else {
        DEFAULT_TASK_MS
    };
    agent.cost_factor * (avg_ms / 1000.0 / 3600.0) * (1.0 + utilization_penalty)
}

/// Lowest [`cost_score`], then lowest load, then lowest id. A score that is
/// not a number (an infinite rate times a complexity of 0) counts as +∞.
pub fn cost_based(snap: &Snapshot, task: &TaskFacts) -> Option<usize> {
    let c = task.hints.estimated_complexity;
    let f = snap.filter(task);
    let (gate, min_health) = (f.gates(), f.min_health);
    let d = &snap.dense;
    lowest(snap.chunks(), |s| {
        let (g, rate) = (chunk(&gate, s), chunk(&d.cost_rate, s));
        let k1 = std::array::from_fn(|j| {
            let cost = rate[j] * c;
            let cost = select(mask(cost.is_nan()), f64::INFINITY, cost);
            or_nan(mask(g[j] >= min_health), cost)
        });
        (k1, *chunk(&d.load, s))
    })
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
    // The target as the snapshot's interned type or tag bit, looked up once per
    // decision and tested on whole chunks.
    let d = &snap.dense;
    match &rule.target {
        Target::AgentType(t) => {
            let want = *d.types.get(t)?;
            least_loaded_where(snap, task, |s| {
                let ty = chunk(&d.agent_type, s);
                std::array::from_fn(|j| mask(ty[j] == want))
            })
        }
        Target::Tag(t) => match *d.tags.get(t)? {
            at if at < 64 => {
                let bit = 1u64 << at;
                least_loaded_where(snap, task, |s| {
                    let tags = chunk(&d.tag_bits, s);
                    std::array::from_fn(|j| mask(tags[j] & bit != 0))
                })
            }
            _ => least_loaded_where(snap, task, |s| {
                std::array::from_fn(|j| {
                    mask(snap.get(s + j).is_some_and(|a| rule.target.admits(a)))
                })
            }),
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
    let (gate, min_health) = (f.gates(), f.min_health);
    let n = snap.len();
    // Write every position and advance past the eligible ones only: no branch
    // per agent.
    let mut out = vec![0; n];
    let mut len = 0;
    for (i, &g) in gate[..n].iter().enumerate() {
        out[len] = i;
        len += usize::from(g >= min_health);
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
