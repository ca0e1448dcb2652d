//! Concurrency keys: at most N tasks with the same key run at once, and keys
//! take turns (round-robin) when the next task is chosen, so one busy key cannot
//! starve the others.

use crate::Error;
use std::collections::{HashMap, VecDeque};

/// Items waiting per key, and the rotation of keys that have items.
#[derive(Debug, Clone)]
pub struct KeyedQueue<T> {
    default_limit: u32,
    limits: HashMap<String, u32>,
    items: HashMap<String, VecDeque<T>>,
    /// Keys with waiting items, in turn order. Each appears once.
    turn: VecDeque<String>,
}

impl<T> KeyedQueue<T> {
    /// Every key may run `default_limit` tasks at once (at least 1).
    pub fn new(default_limit: u32) -> Result<Self, Error> {
        if default_limit == 0 {
            return Err(Error::invalid("concurrency limit must be at least 1").with_field("limit"));
        }
        Ok(Self {
            default_limit,
            limits: HashMap::new(),
            items: HashMap::new(),
            turn: VecDeque::new(),
        })
    }

    /// A different limit for one key.
    pub fn set_limit(&mut self, key: impl Into<String>, limit: u32) -> Result<(), Error> {
        if limit == 0 {
            return Err(Error::invalid("concurrency limit must be at least 1").with_field("limit"));
        }
        self.limits.insert(key.into(), limit);
        Ok(())
    }

    /// The limit of `key`.
    pub fn limit(&self, key: &str) -> u32 {
        self.limits.get(key).copied().unwrap_or(self.default_limit)
    }

    /// Waiting items in all.
    pub fn len(&self) -> usize {
        self.items.values().map(VecDeque::len).sum()
    }

    /// True if nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }

    /// Waiting items of one key.
    pub fn waiting(&self, key: &str) -> usize {
        self.items.get(key).map_or(0, VecDeque::len)
    }

    /// Queues `item` under `key`, behind that key's earlier items. A key that
    /// had nothing waiting joins the end of the rotation.
    pub fn push(&mut self, key: impl Into<String>, item: T) {
        let key = key.into();
        let queue = self.items.entry(key.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(key);
        }
        queue.push_back(item);
    }

    /// The next item to run: the oldest item of the first key in rotation whose
    /// running count (`running`, missing = 0) is under its limit. That key then
    /// goes to the end of the rotation; keys at their limit keep their place, so
    /// they are first once a slot frees. The caller counts the item as running.
    pub fn next(&mut self, running: &HashMap<String, u32>) -> Option<(String, T)> {
        let pos = self
            .turn
            .iter()
            .position(|k| running.get(k).copied().unwrap_or(0) < self.limit(k))?;
        let key = self.turn.remove(pos)?;
        let queue = self.items.get_mut(&key)?;
        let item = queue.pop_front()?;
        if queue.is_empty() {
            self.items.remove(&key);
        } else {
            self.turn.push_back(key.clone());
        }
        Some((key, item))
    }

    /// Removes and returns the items matching `pred` (a cancelled task).
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for queue in self.items.values_mut() {
            let mut kept = VecDeque::with_capacity(queue.len());
            for item in queue.drain(..) {
                if pred(&item) {
                    out.push(item);
                } else {
                    kept.push_back(item);
                }
            }
            *queue = kept;
        }
        self.items.retain(|_, q| !q.is_empty());
        let items = &self.items;
        self.turn.retain(|k| items.contains_key(k));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain_order(q: &mut KeyedQueue<u32>, running: &HashMap<String, u32>) -> Vec<String> {
        std::iter::from_fn(|| q.next(running).map(|(k, _)| k)).collect()
    }

    #[test]
    fn keys_take_turns_and_items_keep_their_order() {
        let mut q = KeyedQueue::new(10).unwrap();
        for i in 0..4 {
            q.push("a", i);
        }
        q.push("b", 100);
        q.push("c", 200);
        q.push("b", 101);
        let none = HashMap::new();
        let mut order = Vec::new();
        while let Some((k, item)) = q.next(&none) {
            order.push(format!("{k}{item}"));
        }
        assert_eq!(order, ["a0", "b100", "c200", "a1", "b101", "a2", "a3"]);
        assert!(q.is_empty());
    }

    #[test]
    fn keys_at_their_limit_are_skipped_but_keep_their_place() {
        let mut q = KeyedQueue::new(2).unwrap();
        q.set_limit("big", 5).unwrap();
        for i in 0..3 {
            q.push("a", i);
            q.push("b", i);
            q.push("big", i);
        }
        let running: HashMap<String, u32> = [("a".to_string(), 2), ("big".to_string(), 4)].into();
        assert_eq!(
            drain_order(&mut q, &running),
            ["b", "big", "b", "big", "b", "big"]
        );
        // a kept its place at the front.
        q.push("b", 9);
        assert_eq!(q.next(&HashMap::new()).unwrap().0, "a");
        assert!(KeyedQueue::<u32>::new(0).is_err());
        assert!(q.set_limit("x", 0).is_err());
    }

    #[test]
    fn remove_where_drops_items_and_empty_keys() {
        let mut q = KeyedQueue::new(1).unwrap();
        q.push("a", 1);
        q.push("b", 2);
        q.push("b", 3);
        let mut removed = q.remove_where(|x| *x != 3);
        removed.sort();
        assert_eq!(removed, [1, 2]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.waiting("a"), 0);
        assert_eq!(q.next(&HashMap::new()), Some(("b".to_string(), 3)));
        assert!(q.is_empty());
    }

    proptest! {
        /// Simulation: items arrive on random keys with random limits, random
        /// running tasks finish. No key ever exceeds its limit, and a key with
        /// waiting items and a free slot is never passed over more than
        /// (number of keys) times in a row.
        #[test]
        fn limits_hold_and_no_key_starves(
            limits in proptest::collection::vec(1u32..4, 1..6),
            steps in proptest::collection::vec((0u8..3, 0usize..6), 1..400),
        ) {
            let n_keys = limits.len();
            let key = |i: usize| format!("k{}", i % n_keys);
            let mut q = KeyedQueue::new(1).unwrap();
            for (i, l) in limits.iter().enumerate() {
                q.set_limit(key(i), *l).unwrap();
            }
            let mut running: HashMap<String, u32> = HashMap::new();
            let mut passed_over = vec![0usize; n_keys];
            for (action, k) in steps {
                match action {
                    0 => q.push(key(k), k),
                    1 => {
                        if let Some(c) = running.get_mut(&key(k)) {
                            *c = c.saturating_sub(1);
                        }
                    }
                    _ => {
                        let ready: Vec<usize> = (0..n_keys)
                            .filter(|&i| q.waiting(&key(i)) > 0
                                && running.get(&key(i)).copied().unwrap_or(0) < limits[i])
                            .collect();
                        match q.next(&running) {
                            Some((got, _)) => {
                                let c = running.entry(got.clone()).or_default();
                                *c += 1;
                                let gi: usize = got[1..].parse().unwrap();
                                prop_assert!(*c <= limits[gi], "{} over its limit", got);
                                for i in ready {
                                    if i == gi {
                                        passed_over[i] = 0;
                                    } else {
                                        passed_over[i] += 1;
                                        prop_assert!(passed_over[i] < n_keys, "{} starves", key(i));
                                    }
                                }
                            }
                            None => prop_assert!(ready.is_empty(), "an item was ready"),
                        }
                    }
                }
            }
        }
    }
}
