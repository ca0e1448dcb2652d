//! The agent registry of seed 004: what each agent declared when it registered,
//! its last heartbeat, a health score, liveness, and discovery queries.
//!
//! # Health score
//!
//! `health = freshness × (1 − error_rate) × latency_factor`, each factor in 0..=1:
//!
//! - `freshness` is 1 while the last heartbeat is at most one heartbeat interval
//!   old, then falls linearly to 0 at the deregistration timeout;
//! - `error_rate` is the one the agent reported, clamped to 0..=1;
//! - `latency_factor` is 1 up to `latency_target_ms` (default 1 s) and
//!   `latency_target_ms / response_time_ms` above it (2 s gives 0.5).
//!
//! A product, so that any one bad signal is enough to keep an agent out of
//! routing: a silent agent with a perfect error rate is not healthy.
//!
//! # Liveness
//!
//! With seed 004's defaults (heartbeat every 30 s, deregistration after 300 s): an
//! agent is [`Liveness::Alive`] up to 30 s after its last heartbeat (or its
//! registration), [`Liveness::Late`] after that, and [`Liveness::Expired`] from
//! 300 s on, when [`Registry::sweep`] removes it.

use super::routing::AgentView;
use crate::{AgentId, Error, Millis};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Registry settings; defaults are seed 004's.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// How often agents are expected to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Silence after which an agent is deregistered.
    pub deregister_after_ms: u64,
    /// Response time up to which latency does not lower the health score.
    pub latency_target_ms: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 30_000,
            deregister_after_ms: 300_000,
            latency_target_ms: 1_000.0,
        }
    }
}

impl Options {
    /// Refuses zero intervals, a deregistration timeout not longer than the
    /// heartbeat interval, and a latency target that is not a positive number.
    pub fn validate(&self) -> Result<(), Error> {
        if self.heartbeat_interval_ms == 0 {
            return Err(Error::invalid("heartbeat_interval_ms must be above 0")
                .with_field("heartbeat_interval_ms"));
        }
        if self.deregister_after_ms <= self.heartbeat_interval_ms {
            return Err(Error::invalid(
                "deregister_after_ms must be longer than heartbeat_interval_ms",
            )
            .with_field("deregister_after_ms"));
        }
        if !(self.latency_target_ms.is_finite() && self.latency_target_ms > 0.0) {
            return Err(
                Error::invalid("latency_target_ms must be a positive number")
                    .with_field("latency_target_ms"),
            );
        }
        Ok(())
    }
}

/// What an agent declares when it registers (seed 004's `AgentDescriptor`).
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    /// Unique id; registering again with it replaces the descriptor.
    pub agent_id: AgentId,
    /// The agent's kind (hourly budgets and content rules use it).
    pub agent_type: String,
    /// Matched by discovery's version constraint.
    pub version: semver::Version,
    /// What it can do; for Baton agents, the task types it serves.
    pub capabilities: BTreeSet<String>,
    /// Seed 004's service types (computation, ...).
    pub service_types: BTreeSet<String>,
    /// Where the agent listens, if it is reached directly.
    pub endpoint: String,
    /// Free-form labels (content rules and discovery match them).
    pub tags: BTreeSet<String>,
    /// Key-value labels (`gpu = 1`, `zone = eu`): a task's `resources`
    /// requirement is matched against them at dispatch.
    pub labels: BTreeMap<String, String>,
    /// Region or zone, matched by discovery's location preference.
    pub location: Option<String>,
    /// Seed 001's `cost_factor`: price per hour of work, in the budget's unit.
    pub cost_factor: f64,
    /// Relative share for the weighted strategies.
    pub weight: f64,
    /// Most tasks it runs at once.
    pub max_concurrency: u32,
}

impl Descriptor {
    /// A descriptor with seed-like defaults (cost factor 1, weight 1, no tags, no
    /// location); the caller fills in what the agent declared.
    pub fn new(
        agent_id: AgentId,
        agent_type: impl Into<String>,
        version: semver::Version,
        max_concurrency: u32,
    ) -> Self {
        Self {
            agent_id,
            agent_type: agent_type.into(),
            version,
            capabilities: BTreeSet::new(),
            service_types: BTreeSet::new(),
            endpoint: String::new(),
            tags: BTreeSet::new(),
            labels: BTreeMap::new(),
            location: None,
            cost_factor: 1.0,
            weight: 1.0,
            max_concurrency,
        }
    }

    /// Refuses an empty type, a negative or non-finite cost factor or weight, and
    /// a zero concurrency limit.
    pub fn validate(&self) -> Result<(), Error> {
        if self.agent_type.trim().is_empty() {
            return Err(Error::invalid("agent_type must not be empty").with_field("agent_type"));
        }
        if !(self.cost_factor.is_finite() && self.cost_factor >= 0.0) {
            return Err(Error::invalid("cost_factor must be a number of at least 0")
                .with_field("cost_factor"));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(
                Error::invalid("weight must be a number of at least 0").with_field("weight")
            );
        }
        if self.max_concurrency == 0 {
            return Err(
                Error::invalid("max_concurrency must be at least 1").with_field("max_concurrency")
            );
        }
        Ok(())
    }
}

/// Parses an agent version such as `2.1.0`.
pub fn parse_version(raw: &str) -> Result<semver::Version, Error> {
    semver::Version::parse(raw.trim()).map_err(|e| {
        Error::invalid(format!("version {raw:?} is not a semantic version: {e}"))
            .with_field("version")
    })
}

/// Parses a version constraint such as `>=1.2, <2` or `^2.1`.
pub fn parse_version_req(raw: &str) -> Result<semver::VersionReq, Error> {
    semver::VersionReq::parse(raw.trim()).map_err(|e| {
        Error::invalid(format!("version constraint {raw:?} does not parse: {e}"))
            .with_field("version")
    })
}

/// The load an agent reports in each heartbeat (seed 004's fields).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HeartbeatLoad {
    /// 0..=1.
    pub cpu_usage: f64,
    /// Share of recent tasks that failed, 0..=1.
    pub error_rate: f64,
    /// Recent average response time.
    pub response_time_ms: f64,
}

/// How recently an agent was heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Heard from within one heartbeat interval.
    Alive,
    /// Missed at least one heartbeat, not yet deregistered.
    Late,
    /// Silent for the deregistration timeout: to be removed.
    Expired,
}

/// One registered agent: its descriptor and what is known of it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// What it declared.
    pub descriptor: Descriptor,
    /// When it (last) registered.
    pub registered_at_ms: Millis,
    /// Last heartbeat, or the registration time before the first one.
    pub last_heartbeat_ms: Millis,
    /// What its last heartbeat reported.
    pub load: HeartbeatLoad,
    /// Tasks assigned and not yet finished.
    pub in_flight: u32,
    /// Average task duration, as the server measures it (0 while unknown).
    pub avg_task_ms: f64,
}

impl Agent {
    /// Liveness at `now` under `opts`.
    pub fn liveness(&self, opts: &Options, now: Millis) -> Liveness {
        let age = now.saturating_sub(self.last_heartbeat_ms);
        if age >= opts.deregister_after_ms {
            Liveness::Expired
        } else if age > opts.heartbeat_interval_ms {
            Liveness::Late
        } else {
            Liveness::Alive
        }
    }

    /// The health score at `now` (see the module documentation for the formula).
    pub fn health(&self, opts: &Options, now: Millis) -> f64 {
        health_score(now.saturating_sub(self.last_heartbeat_ms), &self.load, opts)
    }

    /// The snapshot routing reads. `routable` starts true; the breakers and the
    /// server (draining sessions) clear it.
    pub fn view(&self, opts: &Options, now: Millis) -> AgentView {
        let d = &self.descriptor;
        AgentView {
            agent_id: d.agent_id.clone(),
            agent_type: d.agent_type.clone(),
            capabilities: d.capabilities.iter().cloned().collect(),
            tags: d.tags.iter().cloned().collect(),
            location: d.location.clone(),
            in_flight: self.in_flight,
            max_concurrency: d.max_concurrency,
            weight: d.weight,
            cost_factor: d.cost_factor,
            avg_task_ms: self.avg_task_ms,
            health: self.health(opts, now),
            routable: true,
        }
    }
}

/// `freshness × (1 − error_rate) × latency_factor`, in 0..=1.
pub fn health_score(heartbeat_age_ms: u64, load: &HeartbeatLoad, opts: &Options) -> f64 {
    aged(heartbeat_age_ms, quality(load, opts), opts)
}

/// `(1 − error_rate) × latency_factor`: the part of the health score that does
/// not change with time, which the registry keeps per agent from its last
/// heartbeat.
fn quality(load: &HeartbeatLoad, opts: &Options) -> f64 {
    let error_rate = if load.error_rate.is_finite() {
        load.error_rate.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let rt = load.response_time_ms;
    let latency = if !rt.is_finite() {
        0.0
    } else if rt <= opts.latency_target_ms {
        1.0
    } else {
        opts.latency_target_ms / rt
    };
    (1.0 - error_rate) * latency
}

/// The health score from its [`quality`] and the heartbeat's age.
fn aged(heartbeat_age_ms: u64, quality: f64, opts: &Options) -> f64 {
    let freshness = if heartbeat_age_ms <= opts.heartbeat_interval_ms {
        1.0
    } else if heartbeat_age_ms >= opts.deregister_after_ms {
        0.0
    } else {
        let span = (opts.deregister_after_ms - opts.heartbeat_interval_ms) as f64;
        1.0 - (heartbeat_age_ms - opts.heartbeat_interval_ms) as f64 / span
    };
    (freshness * quality).clamp(0.0, 1.0)
}

/// A discovery query (seed 004's `discover`).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The agent must have every one of these.
    pub capabilities: Vec<String>,
    /// Lowest health score accepted.
    pub min_health: f64,
    /// A semver constraint such as `>=1.2, <2`.
    pub version: Option<semver::VersionReq>,
    /// Agents in this location come first.
    pub location: Option<String>,
    /// Only agents of this type.
    pub agent_type: Option<String>,
    /// Every one of these tags.
    pub tags: Vec<String>,
    /// At most this many results (0 = all).
    pub limit: usize,
}

/// One discovery result.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The agent.
    pub agent_id: AgentId,
    /// Its health score now.
    pub health: f64,
    /// True if it is in the preferred location.
    pub same_location: bool,
    /// In flight over its concurrency limit.
    pub load: f64,
}

/// Every registered agent, indexed by capability. Pure: the server calls it with
/// the current time and owns it behind its own lock.
///
/// Agents live in slots of one vector; the id map and the capability index hold
/// slot numbers (each capability's slots sorted), so discovery walks an index
/// without looking ids up by string. Beside each slot, a [`Row`] keeps what
/// discovery tests and orders by on every candidate (heartbeat time, the
/// health score's lasting part, load, an interned location and version), so
/// the walk reads one small row per agent instead of its descriptor's heap
/// data.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    opts: Options,
    /// Registered agents; `None` is a free slot (listed in `free`).
    slots: Vec<Option<Agent>>,
    /// Per slot; a free slot's row is stale.
    rows: Vec<Row>,
    free: Vec<u32>,
    by_id: BTreeMap<AgentId, u32>,
    /// Slots of the agents with each capability, ascending.
    by_capability: HashMap<String, Vec<u32>>,
    /// Every location and version registered so far, interned: a handful in a
    /// fleet, and never removed, so that ids stay valid without reference
    /// counts.
    locations: HashMap<String, u32>,
    versions: Vec<semver::Version>,
    version_ids: HashMap<semver::Version, u32>,
    /// Every slot's id, back to back ([`Row::id_at`]), so that copying the ids
    /// discovery returns, in result order, reads a compact text instead of one
    /// heap string per agent scattered among the descriptors. Registrations
    /// append; it is rebuilt from the live ids when departed ones outweigh them.
    id_text: String,
    /// Bytes of `id_text` that belong to registered agents.
    id_live: usize,
}

/// What discovery reads of one slot.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    last_heartbeat_ms: Millis,
    /// [`quality`] of the last heartbeat.
    quality: f64,
    in_flight: u32,
    max_concurrency: u32,
    /// Into `locations`; [`NO_LOCATION`] for none.
    location: u32,
    /// Into `versions`.
    version: u32,
    /// Where the id is in `id_text`, and its length.
    id_at: u32,
    id_len: u32,
}

/// [`Row::location`] of an agent without one.
const NO_LOCATION: u32 = u32::MAX;

impl Row {
    fn health(&self, opts: &Options, now: Millis) -> f64 {
        aged(
            now.saturating_sub(self.last_heartbeat_ms),
            self.quality,
            opts,
        )
    }

    fn load(&self) -> f64 {
        f64::from(self.in_flight) / f64::from(self.max_concurrency.max(1))
    }
}

/// `x` as an integer with the order of [`f64::total_cmp`].
fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    // Negative numbers: flip all but the sign bit (as `total_cmp` does), then
    // the sign bit, so that unsigned order is the total order.
    (bits ^ ((((bits as i64) >> 63) as u64) >> 1)) ^ (1 << 63)
}

impl Registry {
    /// An empty registry; refuses invalid options.
    pub fn new(opts: Options) -> Result<Self, Error> {
        opts.validate()?;
        Ok(Self {
            opts,
            ..Default::default()
        })
    }

    /// Its settings.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Registered agents.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True if no agent is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn slot(&self, slot: u32) -> &Agent {
        self.slots[slot as usize]
            .as_ref()
            .expect("indexed slots hold an agent")
    }

    fn get_mut(&mut self, id: &AgentId) -> Option<&mut Agent> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_mut()
    }

    /// One agent, if registered.
    pub fn get(&self, id: &AgentId) -> Option<&Agent> {
        self.by_id.get(id).map(|&slot| self.slot(slot))
    }

    /// Every agent, by id.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.by_id.values().map(|&slot| self.slot(slot))
    }

    /// Registers an agent, or replaces the descriptor of one that registers again
    /// (a reconnect), keeping its in-flight count. An invalid descriptor changes
    /// nothing.
    pub fn register(&mut self, descriptor: Descriptor, now: Millis) -> Result<(), Error> {
        descriptor.validate()?;
        let id = descriptor.agent_id.clone();
        let in_flight = match self.deregister(&id) {
            Some(old) => old.in_flight,
            None => 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        for cap in &descriptor.capabilities {
            let slots = self.by_capability.entry(cap.clone()).or_default();
            if let Err(at) = slots.binary_search(&slot) {
                slots.insert(at, slot);
            }
        }
        let location = match &descriptor.location {
            Some(l) => {
                let next = self.locations.len() as u32;
                *self.locations.entry(l.clone()).or_insert(next)
            }
            None => NO_LOCATION,
        };
        let version = match self.version_ids.get(&descriptor.version) {
            Some(&v) => v,
            None => {
                let v = self.versions.len() as u32;
                self.versions.push(descriptor.version.clone());
                self.version_ids.insert(descriptor.version.clone(), v);
                v
            }
        };
        let (id_at, id_len) = (self.id_text.len() as u32, id.as_str().len() as u32);
        self.id_text.push_str(id.as_str());
        self.id_live += id.as_str().len();
        let row = Row {
            id_at,
            id_len,
            last_heartbeat_ms: now,
            quality: quality(&HeartbeatLoad::default(), &self.opts),
            in_flight,
            max_concurrency: descriptor.max_concurrency,
            location,
            version,
        };
        if self.rows.len() <= slot as usize {
            self.rows.resize(slot as usize + 1, Row::default());
        }
        self.rows[slot as usize] = row;
        self.slots[slot as usize] = Some(Agent {
            descriptor,
            registered_at_ms: now,
            last_heartbeat_ms: now,
            load: HeartbeatLoad::default(),
            in_flight,
            avg_task_ms: 0.0,
        });
        self.by_id.insert(id, slot);
        if self.id_text.len() > 4096 && self.id_text.len() > 2 * self.id_live {
            self.compact_ids();
        }
        Ok(())
    }

    /// Rebuilds `id_text` from the registered agents' ids only.
    fn compact_ids(&mut self) {
        let mut text = String::with_capacity(self.id_live);
        for (id, &slot) in &self.by_id {
            let row = &mut self.rows[slot as usize];
            row.id_at = text.len() as u32;
            text.push_str(id.as_str());
        }
        self.id_text = text;
    }

    /// The id in `slot`, from the compact copy.
    fn id_str(&self, slot: u32) -> &str {
        let row = &self.rows[slot as usize];
        let at = row.id_at as usize;
        &self.id_text[at..at + row.id_len as usize]
    }

    /// Records a heartbeat; unknown agents are `not_found` (they must register).
    pub fn heartbeat(
        &mut self,
        id: &AgentId,
        load: HeartbeatLoad,
        now: Millis,
    ) -> Result<(), Error> {
        let slot = *self
            .by_id
            .get(id)
            .ok_or_else(|| Error::not_found(format!("agent {id} is not registered")))?;
        let agent = self.slots[slot as usize]
            .as_mut()
            .expect("indexed slots hold an agent");
        agent.load = load;
        agent.last_heartbeat_ms = agent.last_heartbeat_ms.max(now);
        let row = &mut self.rows[slot as usize];
        row.quality = quality(&load, &self.opts);
        row.last_heartbeat_ms = agent.last_heartbeat_ms;
        Ok(())
    }

    /// Sets the number of tasks the agent is running (the server's count).
    pub fn set_in_flight(&mut self, id: &AgentId, in_flight: u32) {
        if let Some(&slot) = self.by_id.get(id) {
            if let Some(agent) = self.slots[slot as usize].as_mut() {
                agent.in_flight = in_flight;
                self.rows[slot as usize].in_flight = in_flight;
            }
        }
    }

    /// Folds one finished task's duration into the agent's average (an
    /// exponential moving average giving the new sample a fifth of the weight).
    pub fn record_duration(&mut self, id: &AgentId, duration_ms: u64) {
        if let Some(agent) = self.get_mut(id) {
            let sample = duration_ms as f64;
            agent.avg_task_ms = if agent.avg_task_ms <= 0.0 {
                sample
            } else {
                agent.avg_task_ms * 0.8 + sample * 0.2
            };
        }
    }

    /// Removes an agent (a clean disconnect); returns it if it was registered.
    pub fn deregister(&mut self, id: &AgentId) -> Option<Agent> {
        let slot = self.by_id.remove(id)?;
        let agent = self.slots[slot as usize].take()?;
        self.id_live -= id.as_str().len();
        for cap in &agent.descriptor.capabilities {
            if let Some(set) = self.by_capability.get_mut(cap) {
                if let Ok(at) = set.binary_search(&slot) {
                    set.remove(at);
                }
                if set.is_empty() {
                    self.by_capability.remove(cap);
                }
            }
        }
        self.free.push(slot);
        Some(agent)
    }

    /// Removes every expired agent and returns them, so the caller can re-queue
    /// their work and drop their breakers.
    pub fn sweep(&mut self, now: Millis) -> Vec<Agent> {
        let expired: Vec<AgentId> = self
            .agents()
            .filter(|a| a.liveness(&self.opts, now) == Liveness::Expired)
            .map(|a| a.descriptor.agent_id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|id| self.deregister(id))
            .collect()
    }

    /// Routing snapshots of every agent, sorted by id.
    pub fn views(&self, now: Millis) -> Vec<AgentView> {
        self.agents().map(|a| a.view(&self.opts, now)).collect()
    }

    /// Agents matching `query`, best first: same location first (when a location
    /// is preferred), then higher health, then lower load, then id.
    ///
    /// It walks the smallest index set of the required capabilities by slot, so
    /// its cost follows the number of agents with the rarest one; the other
    /// required capabilities are followed along their own (sorted) sets. Each
    /// candidate is tested on its row: health, location and version (each
    /// distinct version matched against the constraint once per query); only
    /// tags and an agent type, when asked for, read the descriptor. Results
    /// are ordered as integer keys with slot numbers, ids compared only on
    /// ties, with a `limit` only that many, and only the returned ids are
    /// copied.
    pub fn discover(&self, query: &Query, now: Millis) -> Vec<Candidate> {
        // Start from the smallest capability set; the others are followed.
        let mut sets: Vec<&[u32]> = Vec::with_capacity(query.capabilities.len());
        for cap in &query.capabilities {
            match self.by_capability.get(cap) {
                Some(set) => sets.push(set),
                None => return Vec::new(),
            }
        }
        sets.sort_by_key(|s| s.len());
        let (pool, rest): (Box<dyn Iterator<Item = u32>>, &[&[u32]]) = match sets.split_first() {
            Some((first, rest)) => (Box::new(first.iter().copied()), rest),
            None => (Box::new(self.by_id.values().copied()), &[]),
        };
        // Where each other set stands: the pool's slots ascend, so each cursor
        // only moves forward.
        let mut cursors = vec![0usize; rest.len()];
        let want_location = query
            .location
            .as_ref()
            .map(|l| self.locations.get(l).copied().unwrap_or(NO_LOCATION - 1));
        // Per interned version: 0 not yet matched, 1 matches, 2 does not.
        let mut version_ok = vec![
            0u8;
            if query.version.is_some() {
                self.versions.len()
            } else {
                0
            }
        ];
        // (location then health, load, slot): the sort key and where the id is.
        let mut found: Vec<(u128, u64, u32)> = Vec::with_capacity(match sets.first() {
            Some(s) => s.len(),
            None => self.by_id.len(),
        });
        'pool: for slot in pool {
            for (set, at) in rest.iter().zip(cursors.iter_mut()) {
                *at += set[*at..].partition_point(|&s| s < slot);
                if set.get(*at) != Some(&slot) {
                    continue 'pool;
                }
            }
            let row = &self.rows[slot as usize];
            let health = row.health(&self.opts, now);
            if health < query.min_health {
                continue;
            }
            if let Some(req) = &query.version {
                let v = row.version as usize;
                if version_ok[v] == 0 {
                    version_ok[v] = if req.matches(&self.versions[v]) { 1 } else { 2 };
                }
                if version_ok[v] != 1 {
                    continue;
                }
            }
            if !query.tags.is_empty() || query.agent_type.is_some() {
                let d = &self.slot(slot).descriptor;
                if !(query.tags.iter().all(|t| d.tags.contains(t))
                    && query.agent_type.as_ref().is_none_or(|t| &d.agent_type == t))
                {
                    continue;
                }
            }
            let elsewhere = want_location != Some(row.location);
            let first = (u128::from(elsewhere) << 64) | u128::from(!order_key(health));
            found.push((first, order_key(row.load()), slot));
        }
        let order = |a: &(u128, u64, u32), b: &(u128, u64, u32)| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| self.id_str(a.2).cmp(self.id_str(b.2)))
        };
        if query.limit > 0 && query.limit < found.len() {
            found.select_nth_unstable_by(query.limit - 1, order);
            found.truncate(query.limit);
        }
        found.sort_unstable_by(order);
        found
            .into_iter()
            .map(|(first, _, slot)| {
                let row = &self.rows[slot as usize];
                Candidate {
                    agent_id: AgentId::from_trusted(self.id_str(slot)),
                    health: row.health(&self.opts, now),
                    same_location: first >> 64 == 0 && want_location.is_some(),
                    load: row.load(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    /// The ids discovery returns for one capability, in its order.
    fn names(r: &Registry, capability: &str) -> Vec<String> {
        r.discover(
            &Query {
                capabilities: vec![capability.into()],
                ..Default::default()
            },
            0,
        )
        .into_iter()
        .map(|c| c.agent_id.to_string())
        .collect()
    }

    fn desc(name: &str, version: &str, caps: &[&str], location: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new(id(name), "calc", parse_version(version).unwrap(), 4);
        d.capabilities = caps.iter().map(|c| c.to_string()).collect();
        d.location = location.map(str::to_string);
        d
    }

    #[test]
    fn health_formula_values() {
        let o = Options::default();
        let good = HeartbeatLoad {
            cpu_usage: 0.45,
            error_rate: 0.01,
            response_time_ms: 234.0,
        };
        assert!((health_score(0, &good, &o) - 0.99).abs() < 1e-12);
        assert!((health_score(30_000, &good, &o) - 0.99).abs() < 1e-12);
        // Halfway between 30 s and 300 s: freshness 0.5.
        assert!((health_score(165_000, &good, &o) - 0.495).abs() < 1e-12);
        assert_eq!(health_score(300_000, &good, &o), 0.0);
        let slow = HeartbeatLoad {
            response_time_ms: 2_000.0,
            ..Default::default()
        };
        assert!((health_score(0, &slow, &o) - 0.5).abs() < 1e-12);
        let broken = HeartbeatLoad {
            error_rate: 7.0,
            ..Default::default()
        };
        assert_eq!(health_score(0, &broken, &o), 0.0);
        let nan = HeartbeatLoad {
            error_rate: f64::NAN,
            ..Default::default()
        };
        assert_eq!(health_score(0, &nan, &o), 0.0);
    }

    proptest! {
        #[test]
        fn health_is_a_score_and_never_rises_with_age(
            age in 0u64..1_000_000, later in 0u64..1_000_000,
            err in -1.0f64..2.0, rt in 0.0f64..100_000.0,
        ) {
            let o = Options::default();
            let load = HeartbeatLoad { cpu_usage: 0.5, error_rate: err, response_time_ms: rt };
            let h = health_score(age, &load, &o);
            prop_assert!((0.0..=1.0).contains(&h));
            prop_assert!(health_score(age + later, &load, &o) <= h);
        }
    }

    #[test]
    fn liveness_follows_seed_defaults_and_sweep_removes_expired() {
        let mut r = Registry::new(Options::default()).unwrap();
        r.register(desc("a", "1.0.0", &["x"], None), 0).unwrap();
        r.register(desc("b", "1.0.0", &["x"], None), 0).unwrap();
        r.heartbeat(&id("b"), HeartbeatLoad::default(), 200_000)
            .unwrap();
        let a = r.get(&id("a")).unwrap();
        assert_eq!(a.liveness(r.options(), 30_000), Liveness::Alive);
        assert_eq!(a.liveness(r.options(), 30_001), Liveness::Late);
        assert_eq!(a.liveness(r.options(), 299_999), Liveness::Late);
        assert_eq!(a.liveness(r.options(), 300_000), Liveness::Expired);
        assert!(r.sweep(299_999).is_empty());
        let gone = r.sweep(300_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].descriptor.agent_id, id("a"));
        assert_eq!(r.len(), 1);
        // The capability index forgot it too.
        let q = Query {
            capabilities: vec!["x".into()],
            ..Default::default()
        };
        let found: Vec<AgentId> = r
            .discover(&q, 200_000)
            .into_iter()
            .map(|c| c.agent_id)
            .collect();
        assert_eq!(found, vec![id("b")]);
        assert_eq!(
            r.heartbeat(&id("a"), HeartbeatLoad::default(), 1)
                .unwrap_err()
                .code,
            crate::ErrorCode::NotFound
        );
    }

    #[test]
    fn options_and_descriptors_are_validated() {
        assert!(Options {
            deregister_after_ms: 30_000,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(Registry::new(Options {
            heartbeat_interval_ms: 0,
            ..Default::default()
        })
        .is_err());
        let mut r = Registry::new(Options::default()).unwrap();
        for bad in [
            Descriptor {
                weight: -1.0,
                ..desc("a", "1.0.0", &[], None)
            },
            Descriptor {
                cost_factor: f64::NAN,
                ..desc("a", "1.0.0", &[], None)
            },
            Descriptor {
                max_concurrency: 0,
                ..desc("a", "1.0.0", &[], None)
            },
            Descriptor {
                agent_type: " ".into(),
                ..desc("a", "1.0.0", &[], None)
            },
        ] {
            let e = r.register(bad, 0).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
        }
        assert!(r.is_empty(), "a refused registration changes nothing");
        assert!(parse_version("2.1").is_err());
        let e = parse_version_req(">=1.2 <<2").unwrap_err();
        assert!(e
            .message
            .starts_with("version constraint \">=1.2 <<2\" does not parse"));
    }

    #[test]
    fn reregistering_replaces_the_descriptor_and_keeps_in_flight() {
        let mut r = Registry::new(Options::default()).unwrap();
        r.register(desc("a", "1.0.0", &["x"], None), 0).unwrap();
        r.set_in_flight(&id("a"), 3);
        r.register(desc("a", "1.1.0", &["y"], None), 10).unwrap();
        let a = r.get(&id("a")).unwrap();
        assert_eq!(a.in_flight, 3);
        assert_eq!(a.descriptor.version, parse_version("1.1.0").unwrap());
        let q = |c: &str| Query {
            capabilities: vec![c.into()],
            ..Default::default()
        };
        assert!(r.discover(&q("x"), 10).is_empty());
        assert_eq!(r.discover(&q("y"), 10).len(), 1);
    }

    #[test]
    fn discovery_filters_and_orders() {
        let mut r = Registry::new(Options::default()).unwrap();
        r.register(
            desc("a-old", "1.1.0", &["calc", "scope3"], Some("us-east-1")),
            0,
        )
        .unwrap();
        r.register(
            desc("b-east", "1.5.0", &["calc", "scope3"], Some("us-east-1")),
            0,
        )
        .unwrap();
        r.register(
            desc("c-west", "1.9.9", &["calc", "scope3"], Some("eu-west-1")),
            0,
        )
        .unwrap();
        r.register(
            desc("d-v2", "2.0.0", &["calc", "scope3"], Some("us-east-1")),
            0,
        )
        .unwrap();
        r.register(desc("e-partial", "1.5.0", &["calc"], Some("us-east-1")), 0)
            .unwrap();
        r.register(
            desc("f-sick", "1.5.0", &["calc", "scope3"], Some("us-east-1")),
            0,
        )
        .unwrap();
        r.register(
            desc("g-busy", "1.6.0", &["calc", "scope3"], Some("eu-west-1")),
            0,
        )
        .unwrap();
        r.heartbeat(
            &id("f-sick"),
            HeartbeatLoad {
                error_rate: 0.5,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        r.set_in_flight(&id("g-busy"), 2);
        let q = Query {
            capabilities: vec!["calc".into(), "scope3".into()],
            min_health: 0.8,
            version: Some(parse_version_req(">=1.2, <2").unwrap()),
            location: Some("us-east-1".into()),
            ..Default::default()
        };
        let found: Vec<String> = r
            .discover(&q, 1_000)
            .into_iter()
            .map(|c| c.agent_id.to_string())
            .collect();
        // Same location first; then equal health, so lower load, then id.
        assert_eq!(found, vec!["b-east", "c-west", "g-busy"]);
        let limited = r.discover(
            &Query {
                limit: 1,
                ..q.clone()
            },
            1_000,
        );
        assert_eq!(limited.len(), 1);
        assert!(r
            .discover(
                &Query {
                    capabilities: vec!["nothing".into()],
                    ..Default::default()
                },
                0
            )
            .is_empty());
    }

    #[test]
    fn slots_are_reused_and_the_index_follows_reregistration() {
        let mut r = Registry::new(Options::default()).unwrap();
        r.register(desc("a", "1.0.0", &["x"], None), 0).unwrap();
        r.register(desc("b", "1.0.0", &["x", "y"], None), 0)
            .unwrap();
        r.set_in_flight(&id("a"), 3);
        // Re-registering drops the old capabilities from the index, keeps in flight.
        r.register(desc("a", "1.0.0", &["y"], None), 0).unwrap();
        assert_eq!(r.get(&id("a")).unwrap().in_flight, 3);
        assert_eq!(names(&r, "x"), ["b"]);
        // a has 3 of its 4 slots in use: b first.
        assert_eq!(names(&r, "y"), ["b", "a"]);
        assert!(r.deregister(&id("b")).is_some());
        r.register(desc("c", "1.0.0", &["x"], None), 0).unwrap();
        assert_eq!(names(&r, "x"), ["c"]);
        assert_eq!(names(&r, "y"), ["a"]);
        assert_eq!(r.len(), 2);
        let ids: Vec<String> = r
            .agents()
            .map(|a| a.descriptor.agent_id.to_string())
            .collect();
        assert_eq!(ids, ["a", "c"]);
    }

    proptest! {
        /// A limit returns the first results of the unlimited answer, which is
        /// ordered by location, health, load and id, and holds every agent that
        /// matches.
        #[test]
        fn discovery_is_ordered_complete_and_limited_to_a_prefix(
            agents in proptest::collection::vec(
                (0u8..3, 0u8..4, 0.0f64..0.6, 0u32..5, any::<bool>()), 1..40),
            limit in 0usize..10,
            min_health in 0.0f64..1.0,
        ) {
            let mut r = Registry::new(Options::default()).unwrap();
            for (i, (caps, loc, err, busy, drop)) in agents.iter().enumerate() {
                let caps: &[&str] = [&["a"][..], &["a", "b"], &["b"]][*caps as usize];
                let loc = ["eu", "us", "ap", "none"][*loc as usize];
                let name = format!("ag-{i:02}");
                r.register(desc(&name, "1.0.0", caps, (loc != "none").then_some(loc)), 0).unwrap();
                r.heartbeat(&id(&name), HeartbeatLoad { error_rate: *err, ..Default::default() }, 0).unwrap();
                r.set_in_flight(&id(&name), *busy);
                if *drop {
                    r.deregister(&id(&name));
                }
            }
            let q = Query {
                capabilities: vec!["a".into()],
                min_health,
                location: Some("eu".into()),
                ..Default::default()
            };
            let all = r.discover(&q, 0);
            let expected = r.agents().filter(|a| {
                a.descriptor.capabilities.contains("a") && a.health(r.options(), 0) >= min_health
            }).count();
            prop_assert_eq!(all.len(), expected);
            for w in all.windows(2) {
                let (x, y) = (&w[0], &w[1]);
                let ordered = (y.same_location, -y.health, y.load, &y.agent_id)
                    .partial_cmp(&(x.same_location, -x.health, x.load, &x.agent_id));
                prop_assert!((x.same_location && !y.same_location)
                    || (x.same_location == y.same_location
                        && ordered == Some(std::cmp::Ordering::Greater)), "{:?} before {:?}", x, y);
            }
            let limited = r.discover(&Query { limit, ..q }, 0);
            let n = if limit == 0 { all.len() } else { limit.min(all.len()) };
            prop_assert_eq!(&limited[..], &all[..n]);
        }
    }

    #[test]
    fn ids_survive_the_compaction_of_their_copy() {
        // Churn enough ids for the compact copy to be rebuilt several times.
        let mut r = Registry::new(Options::default()).unwrap();
        r.register(desc("keeper", "1.0.0", &["x"], None), 0)
            .unwrap();
        for i in 0..3_000 {
            let name = format!("churn-{i:05}");
            r.register(desc(&name, "1.0.0", &["x"], None), 0).unwrap();
            if i % 3 != 0 {
                r.deregister(&id(&name));
            }
        }
        assert!(r.id_text.len() <= 2 * r.id_live.max(4096));
        let mut want: Vec<String> = r
            .agents()
            .map(|a| a.descriptor.agent_id.to_string())
            .collect();
        want.sort();
        let mut got = names(&r, "x");
        got.sort();
        assert_eq!(got, want);
        assert_eq!(got.len(), 1_001);
    }

    proptest! {
        /// Discovery answers from its rows and indexes exactly what a scan of the
        /// descriptors answers, after registrations, re-registrations,
        /// heartbeats, load changes and departures: every filter, the order and
        /// the values returned.
        #[test]
        fn discovery_matches_a_scan_of_the_descriptors(
            agents in proptest::collection::vec(
                (0u8..8, 0u8..4, 0u8..4, 0.0f64..0.6, 0u32..5, 0u64..200_000, 0u8..4), 1..60),
            caps in proptest::collection::vec(0u8..3, 0..3),
            version in 0usize..4,
            location in 0u8..4,
            min_health in 0.0f64..1.0,
            tagged in any::<bool>(),
            limit in 0usize..6,
        ) {
            let names = ["a", "b", "c"];
            let mut r = Registry::new(Options::default()).unwrap();
            for (i, (cap_set, loc, ver, err, busy, age, fate)) in agents.iter().enumerate() {
                let caps: Vec<&str> = names.iter().enumerate()
                    .filter(|(c, _)| cap_set & (1 << c) != 0)
                    .map(|(_, n)| *n)
                    .collect();
                let loc = ["eu", "us", "ap", "none"][*loc as usize];
                let ver = ["1.0.0", "1.4.2", "2.1.0", "3.0.0-beta.1"][*ver as usize];
                // Some ids come twice: a re-registration replaces the first.
                let name = format!("ag-{:02}", i % 45);
                let mut d = desc(&name, ver, &caps, (loc != "none").then_some(loc));
                if *fate == 1 {
                    d.tags.insert("gpu".into());
                }
                r.register(d, 0).unwrap();
                r.heartbeat(&id(&name), HeartbeatLoad { error_rate: *err, ..Default::default() }, *age).unwrap();
                r.set_in_flight(&id(&name), *busy);
                if *fate == 3 {
                    r.deregister(&id(&name));
                }
            }
            let q = Query {
                capabilities: caps.iter().map(|&c| names[c as usize].to_string()).collect(),
                min_health,
                version: [None, Some(">=1.2, <3"), Some("^1"), Some(">=3.0.0-beta")][version]
                    .map(|v| parse_version_req(v).unwrap()),
                location: (location < 3).then(|| ["eu", "us", "ap"][location as usize].to_string()),
                tags: if tagged { vec!["gpu".into()] } else { vec![] },
                limit,
                ..Default::default()
            };
            let now = 150_000;
            let mut expected: Vec<Candidate> = r.agents()
                .filter(|a| {
                    let d = &a.descriptor;
                    q.capabilities.iter().all(|c| d.capabilities.contains(c))
                        && q.tags.iter().all(|t| d.tags.contains(t))
                        && q.version.as_ref().is_none_or(|v| v.matches(&d.version))
                        && a.health(r.options(), now) >= min_health
                })
                .map(|a| Candidate {
                    agent_id: a.descriptor.agent_id.clone(),
                    health: a.health(r.options(), now),
                    same_location: q.location.is_some() && a.descriptor.location == q.location,
                    load: f64::from(a.in_flight) / f64::from(a.descriptor.max_concurrency),
                })
                .collect();
            expected.sort_by(|x, y| {
                y.same_location.cmp(&x.same_location)
                    .then(y.health.total_cmp(&x.health))
                    .then(x.load.total_cmp(&y.load))
                    .then(x.agent_id.cmp(&y.agent_id))
            });
            if limit > 0 {
                expected.truncate(limit);
            }
            prop_assert_eq!(r.discover(&q, now), expected);
        }
    }
}
