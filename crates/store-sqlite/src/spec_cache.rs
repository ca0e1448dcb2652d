//! The writer's cache of the specs of tasks it handed out running, by row.
//!
//! A task's spec is decoded when it is claimed (its agent needs it) and was
//! decoded again when its result came back (the answer carries the task's
//! record): under bulk load that second decode was a tenth of the writer's
//! time. A claim keeps a copy here; the result's update takes it back.
//!
//! Entries follow the transaction that made them: they are staged while it
//! runs, dropped with an operation rolled back to its savepoint or with a
//! transaction that does not commit, and kept only once it commits, so a row
//! id that a rollback frees can never bring back another task's spec. An entry
//! is also checked against the task id it is taken for. The cache is bounded in
//! entries and in bytes; a spec that is not in it is decoded as before.

use baton_core::TaskSpec;
use std::collections::{HashMap, VecDeque};

/// Specs larger than this (as stored JSON) are not kept: decoding them is rare
/// next to holding them.
const MAX_SPEC_BYTES: usize = 16 * 1024;
/// At most this many specs are kept...
const MAX_ENTRIES: usize = 16_384;
/// ...and at most this many bytes of them (as stored JSON).
const MAX_BYTES: usize = 32 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct SpecCache {
    kept: HashMap<i64, (TaskSpec, usize)>,
    /// Rows in the order they were kept (some may since have been taken).
    order: VecDeque<i64>,
    bytes: usize,
    /// Kept by the transaction running now.
    staged: Vec<(i64, TaskSpec, usize)>,
}

impl SpecCache {
    /// Keeps row `seq`'s spec once the running transaction commits.
    pub fn stage(&mut self, seq: i64, spec: &TaskSpec, stored_bytes: usize) {
        if stored_bytes <= MAX_SPEC_BYTES {
            self.staged.push((seq, spec.clone(), stored_bytes));
        }
    }

    /// How much is staged: an operation rolled back to its savepoint drops what
    /// it staged with [`SpecCache::unstage`].
    pub fn mark(&self) -> usize {
        self.staged.len()
    }

    pub fn unstage(&mut self, mark: usize) {
        self.staged.truncate(mark);
    }

    /// The transaction committed: what it staged is kept.
    pub fn committed(&mut self) {
        for (seq, spec, bytes) in std::mem::take(&mut self.staged) {
            if let Some((_, old)) = self.kept.insert(seq, (spec, bytes)) {
                self.bytes -= old;
            }
            self.bytes += bytes;
            self.order.push_back(seq);
        }
        while self.kept.len() > MAX_ENTRIES
            || self.bytes > MAX_BYTES
            || self.order.len() > 2 * MAX_ENTRIES
        {
            let Some(seq) = self.order.pop_front() else {
                break;
            };
            if let Some((_, bytes)) = self.kept.remove(&seq) {
                self.bytes -= bytes;
            }
        }
    }

    /// The transaction did not commit: nothing it staged is kept.
    pub fn rolled_back(&mut self) {
        self.staged.clear();
    }

    /// Takes row `seq`'s spec out of the cache, if it is there and is task
    /// `task_id`'s.
    pub fn take(&mut self, seq: i64, task_id: &str) -> Option<TaskSpec> {
        let (spec, bytes) = self.kept.remove(&seq)?;
        self.bytes -= bytes;
        (spec.task_id.as_str() == task_id).then_some(spec)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "task_id": id, "task_type": "echo", "timeout_ms": 1000
        }))
        .unwrap()
    }

    #[test]
    fn a_spec_is_kept_only_once_its_transaction_commits() {
        let mut c = SpecCache::default();
        c.stage(1, &spec("a"), 100);
        assert_eq!(c.take(1, "a"), None, "staged, not yet kept");
        c.committed();
        assert_eq!(c.take(1, "a").unwrap().task_id.as_str(), "a");
        assert_eq!(c.take(1, "a"), None, "taken once");

        c.stage(2, &spec("b"), 100);
        c.rolled_back();
        c.committed();
        assert_eq!(
            c.take(2, "b"),
            None,
            "a rolled-back transaction keeps nothing"
        );
    }

    #[test]
    fn an_operation_rolled_back_drops_only_what_it_staged() {
        let mut c = SpecCache::default();
        c.stage(1, &spec("a"), 100);
        let mark = c.mark();
        c.stage(2, &spec("b"), 100);
        c.unstage(mark);
        c.committed();
        assert!(c.take(1, "a").is_some());
        assert!(c.take(2, "b").is_none());
    }

    #[test]
    fn a_row_taken_for_another_task_gives_nothing() {
        let mut c = SpecCache::default();
        c.stage(7, &spec("old"), 100);
        c.committed();
        assert_eq!(c.take(7, "new"), None);
    }

    #[test]
    fn the_cache_is_bounded_in_entries_and_bytes() {
        let mut c = SpecCache::default();
        c.stage(1, &spec("big"), MAX_SPEC_BYTES + 1);
        c.committed();
        assert_eq!(c.len(), 0, "large specs are not kept");
        for seq in 0..(MAX_ENTRIES as i64 + 10) {
            c.stage(seq, &spec(&format!("t{seq}")), 10);
        }
        c.committed();
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.take(0, "t0").is_none(), "the oldest went first");
        let last = MAX_ENTRIES as i64 + 9;
        assert!(c.take(last, &format!("t{last}")).is_some());
        let mut c = SpecCache::default();
        for seq in 0..(MAX_BYTES / MAX_SPEC_BYTES + 5) as i64 {
            c.stage(seq, &spec("x"), MAX_SPEC_BYTES);
        }
        c.committed();
        assert!(c.bytes <= MAX_BYTES);
    }
}
