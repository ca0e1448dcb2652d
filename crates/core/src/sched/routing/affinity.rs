//! The affinity map: which agent last served each routing key, bounded in size
//! (least recently used keys are forgotten first) and in age (entries idle
//! longer than the TTL no longer count).

use crate::{AgentId, Millis};
use std::collections::{BTreeMap, HashMap};

/// Keys remembered unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// An affinity idle this long is forgotten: one hour.
pub const DEFAULT_TTL_MS: u64 = 3_600_000;

#[derive(Debug, Clone)]
struct Entry {
    agent: AgentId,
    last_used_ms: Millis,
    seq: u64,
}

/// Key → agent, least recently used first out.
#[derive(Debug, Clone)]
pub struct AffinityMap {
    capacity: usize,
    ttl_ms: u64,
    entries: HashMap<String, Entry>,
    /// Recency order: touch sequence → key.
    order: BTreeMap<u64, String>,
    next_seq: u64,
}

impl Default for AffinityMap {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL_MS)
    }
}

impl AffinityMap {
    /// A map of at most `capacity` keys (at least 1).
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl_ms,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Keys remembered (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The agent that last served `key`, if that was within the TTL.
    pub fn get(&self, key: &str, now: Millis) -> Option<&AgentId> {
        self.entries
            .get(key)
            .filter(|e| now.saturating_sub(e.last_used_ms) < self.ttl_ms)
            .map(|e| &e.agent)
    }

    /// Remembers that `agent` served `key` at `now`, forgetting the least
    /// recently used key when full.
    pub fn record(&mut self, key: &str, agent: &AgentId, now: Millis) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.entries.get_mut(key) {
            self.order.remove(&old.seq);
            old.agent = agent.clone();
            old.last_used_ms = now;
            old.seq = seq;
        } else {
            if self.entries.len() >= self.capacity {
                if let Some((_, oldest)) = self.order.pop_first() {
                    self.entries.remove(&oldest);
                }
            }
            self.entries.insert(
                key.to_string(),
                Entry {
                    agent: agent.clone(),
                    last_used_ms: now,
                    seq,
                },
            );
        }
        self.order.insert(seq, key.to_string());
    }

    /// Forgets every key held by `agent` (it deregistered).
    pub fn forget_agent(&mut self, agent: &AgentId) {
        let order = &mut self.order;
        self.entries.retain(|_, e| {
            let keep = &e.agent != agent;
            if !keep {
                order.remove(&e.seq);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn remembers_expires_and_evicts_least_recent() {
        let mut m = AffinityMap::new(2, 1_000);
        m.record("k1", &id("a"), 0);
        m.record("k2", &id("b"), 10);
        assert_eq!(m.get("k1", 999), Some(&id("a")));
        assert_eq!(m.get("k1", 1_000), None, "idle for the whole ttl");
        // Touch k1 so k2 is the least recent, then overflow.
        m.record("k1", &id("c"), 20);
        m.record("k3", &id("d"), 30);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("k2", 30), None);
        assert_eq!(m.get("k1", 30), Some(&id("c")));
        assert_eq!(m.get("k3", 30), Some(&id("d")));
        m.forget_agent(&id("c"));
        assert_eq!(m.get("k1", 30), None);
        assert_eq!(m.len(), 1);
        // The recency index stays in step: filling up again evicts k3, not a ghost.
        m.record("k4", &id("e"), 40);
        m.record("k5", &id("f"), 50);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("k3", 50), None);
        assert_eq!(m.get("k4", 50), Some(&id("e")));
    }
}
