//! Exact task counts kept in memory, so that `counts` and `queued_types` (polled by
//! health checks and the dispatcher) never scan an index. The store is exclusive:
//! the writer thread sees every change, collects it per operation, and applies the
//! changes of a batch right after it commits and before answering its callers, so
//! a read that starts after a write returned sees that write here as well.

use crate::codec::sql_error;
use baton_core::Status;
use baton_store::{Counts, Error, Result};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};

const STATUSES: usize = Status::ALL.len();

/// Committed counts, initialised from the database when the store opens.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    by_status: [u64; STATUSES],
    queued_by_type: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts what the database holds: one pass over the status index (running
    /// tasks from their owner index) and one over the queued index, which also
    /// gives the queued count.
    pub(crate) fn load(conn: &Connection) -> Result<Tally> {
        let mut tally = Tally::default();
        let mut stmt = conn
            .prepare(
                "SELECT status, COUNT(*) FROM tasks INDEXED BY tasks_by_status
                 WHERE status > 1 GROUP BY status
                 UNION ALL
                 SELECT 1, COUNT(*) FROM tasks INDEXED BY tasks_running_owner WHERE status = 1",
            )
            .map_err(sql_error)?;
        let mut rows = stmt.query([]).map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            let code: i64 = row.get(0).map_err(sql_error)?;
            let n: i64 = row.get(1).map_err(sql_error)?;
            let status = u8::try_from(code)
                .ok()
                .and_then(Status::from_code)
                .ok_or_else(|| {
                    Error::Corrupt(format!("unknown status code {code} in the tasks table"))
                })?;
            tally.by_status[usize::from(status.code())] = n as u64;
        }
        let mut stmt = conn
            .prepare(
                "SELECT task_type, COUNT(*) FROM tasks INDEXED BY tasks_queued
                 WHERE status = 0 GROUP BY task_type",
            )
            .map_err(sql_error)?;
        let mut rows = stmt.query([]).map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            let task_type: String = row.get(0).map_err(sql_error)?;
            let n: i64 = row.get(1).map_err(sql_error)?;
            tally.queued_by_type.insert(task_type, n as u64);
        }
        tally.by_status[usize::from(Status::Queued.code())] = tally.queued_by_type.values().sum();
        Ok(tally)
    }

    pub(crate) fn counts(&self) -> Counts {
        let by_status = Status::ALL
            .iter()
            .zip(self.by_status)
            .filter(|(_, n)| *n > 0)
            .map(|(status, n)| (status.as_str().to_string(), n))
            .collect();
        Counts {
            by_status,
            queued_by_type: self.queued_by_type.clone(),
        }
    }

    /// Types with queued tasks, in name order.
    pub(crate) fn queued_types(&self) -> Vec<String> {
        self.queued_by_type.keys().cloned().collect()
    }

    /// Applies the changes of a committed batch.
    pub(crate) fn apply(&mut self, delta: &Delta) {
        for (count, change) in self.by_status.iter_mut().zip(delta.by_status) {
            *count = count.saturating_add_signed(change);
        }
        for (task_type, change) in &delta.queued_by_type {
            if *change == 0 {
                continue;
            }
            let count = self.queued_by_type.entry(task_type.clone()).or_default();
            *count = count.saturating_add_signed(*change);
            if *count == 0 {
                self.queued_by_type.remove(task_type);
            }
        }
    }
}

/// Changes to the counts made by uncommitted work.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    by_status: [i64; STATUSES],
    queued_by_type: HashMap<String, i64>,
}

impl Delta {
    /// A task was stored with `status`.
    pub(crate) fn added(&mut self, task_type: &str, status: Status) {
        self.by_status[usize::from(status.code())] += 1;
        if status == Status::Queued {
            self.queued(task_type, 1);
        }
    }

    /// A task went from `from` to `to` (possibly the same status).
    pub(crate) fn moved(&mut self, task_type: &str, from: Status, to: Status) {
        if from == to {
            return;
        }
        self.by_status[usize::from(from.code())] -= 1;
        self.by_status[usize::from(to.code())] += 1;
        if from == Status::Queued {
            self.queued(task_type, -1);
        } else if to == Status::Queued {
            self.queued(task_type, 1);
        }
    }

    fn queued(&mut self, task_type: &str, change: i64) {
        match self.queued_by_type.get_mut(task_type) {
            Some(n) => *n += change,
            None => {
                self.queued_by_type.insert(task_type.to_string(), change);
            }
        }
    }

    /// Moves `other`'s changes into this one, leaving `other` empty.
    pub(crate) fn absorb(&mut self, other: &mut Delta) {
        for (mine, theirs) in self.by_status.iter_mut().zip(&mut other.by_status) {
            *mine += std::mem::take(theirs);
        }
        for (task_type, change) in other.queued_by_type.drain() {
            *self.queued_by_type.entry(task_type).or_default() += change;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.by_status = [0; STATUSES];
        self.queued_by_type.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_and_empty_types_disappear() {
        let mut tally = Tally::default();
        let mut op = Delta::default();
        op.added("a", Status::Queued);
        op.added("a", Status::Queued);
        op.added("b", Status::Queued);
        let mut batch = Delta::default();
        batch.absorb(&mut op);
        op.moved("b", Status::Queued, Status::Running);
        op.moved("b", Status::Running, Status::Running);
        batch.absorb(&mut op);
        // A rolled-back operation's changes are dropped.
        op.moved("a", Status::Queued, Status::Cancelled);
        op.clear();
        batch.absorb(&mut op);
        tally.apply(&batch);

        let counts = tally.counts();
        assert_eq!(
            counts.by_status,
            BTreeMap::from([("queued".to_string(), 2), ("running".to_string(), 1)])
        );
        assert_eq!(
            counts.queued_by_type,
            BTreeMap::from([("a".to_string(), 2)])
        );
        assert_eq!(tally.queued_types(), vec!["a".to_string()]);
    }
}
