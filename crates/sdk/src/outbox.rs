//! Bookkeeping of finished attempts until the server says their results are durable.
//! No IO: the agent loop feeds it results and acks and sends what it hands back.
//!
//! A result is *unsent* until it goes out in a `Results` frame, then *unacked* until
//! a `ResultAck` names it. When a connection is lost, every unacked result becomes
//! unsent again and goes out right after the next registration; the server fences
//! by attempt, so sending one twice is harmless.

use baton_proto::v1;
use prost::Message;
use std::collections::{BTreeMap, HashMap};

/// Identifies one attempt of one task.
pub(crate) type AttemptKey = v1::AttemptRef;

pub(crate) fn key_of(result: &v1::Result) -> AttemptKey {
    v1::AttemptRef {
        task_id: result.task_id.clone(),
        attempt: result.attempt,
    }
}

/// What an ack meant for the result it names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// The server stored the result.
    Accepted,
    /// The server will never take this result (a stale attempt, say); it is dropped.
    Refused { code: String, message: String },
    /// No result is kept for that attempt (already acked, or cancelled meanwhile).
    Unknown,
}

#[derive(Debug)]
struct Entry {
    result: v1::Result,
    sent: bool,
}

/// Results kept until acked, in the order they were produced.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    by_seq: BTreeMap<u64, Entry>,
    seq_of: HashMap<AttemptKey, u64>,
    next_seq: u64,
}

impl Outbox {
    /// Keeps a finished attempt's result. A second result for the same attempt
    /// replaces the first and is sent again.
    pub fn push(&mut self, result: v1::Result) {
        let key = key_of(&result);
        if let Some(old) = self.seq_of.remove(&key) {
            self.by_seq.remove(&old);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(key, seq);
        self.by_seq.insert(
            seq,
            Entry {
                result,
                sent: false,
            },
        );
    }

    /// Takes the oldest unsent results for one frame, marking them unacked. Stops
    /// before the frame would pass `max_bytes` encoded, but always takes at least
    /// one result so an oversized one still goes out (and the server can refuse it).
    pub fn take_batch(&mut self, max_bytes: usize) -> Vec<v1::Result> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for entry in self.by_seq.values_mut().filter(|e| !e.sent) {
            let len = entry.result.encoded_len();
            if !batch.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            entry.sent = true;
            batch.push(entry.result.clone());
        }
        batch
    }

    /// Applies the server's ack; accepted and refused results are both forgotten.
    pub fn ack(&mut self, ack: &v1::ResultAck) -> AckOutcome {
        let key = v1::AttemptRef {
            task_id: ack.task_id.clone(),
            attempt: ack.attempt,
        };
        if self.forget(&key).is_none() {
            return AckOutcome::Unknown;
        }
        if ack.accepted {
            AckOutcome::Accepted
        } else {
            AckOutcome::Refused {
                code: ack.error_code.clone(),
                message: ack.message.clone(),
            }
        }
    }

    /// The connection was lost: every result not yet acked must be sent again.
    pub fn requeue_unacked(&mut self) {
        for entry in self.by_seq.values_mut() {
            entry.sent = false;
        }
    }

    /// Drops the result of an attempt the server cancelled.
    pub fn forget(&mut self, key: &AttemptKey) -> Option<v1::Result> {
        let seq = self.seq_of.remove(key)?;
        self.by_seq.remove(&seq).map(|e| e.result)
    }

    pub fn contains(&self, key: &AttemptKey) -> bool {
        self.seq_of.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &AttemptKey> {
        self.seq_of.keys()
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    #[cfg(test)]
    pub fn n_unsent(&self) -> usize {
        self.by_seq.values().filter(|e| !e.sent).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(task_id: &str, attempt: u32) -> v1::Result {
        v1::Result {
            task_id: task_id.into(),
            attempt,
            outcome: Some(v1::result::Outcome::Success(v1::Success {
                output_json: "{}".into(),
            })),
            ..Default::default()
        }
    }

    fn ack(task_id: &str, attempt: u32, accepted: bool) -> v1::ResultAck {
        v1::ResultAck {
            task_id: task_id.into(),
            attempt,
            accepted,
            error_code: if accepted {
                String::new()
            } else {
                "stale_attempt".into()
            },
            message: String::new(),
        }
    }

    fn ids(batch: &[v1::Result]) -> Vec<(String, u32)> {
        batch
            .iter()
            .map(|r| (r.task_id.clone(), r.attempt))
            .collect()
    }

    #[test]
    fn everything_ready_goes_out_in_one_frame_in_order() {
        let mut outbox = Outbox::default();
        for id in ["a", "b", "c"] {
            outbox.push(ok(id, 1));
        }
        let batch = outbox.take_batch(usize::MAX);
        assert_eq!(
            ids(&batch),
            [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
        );
        assert!(
            outbox.take_batch(usize::MAX).is_empty(),
            "sent results are not sent twice on one connection"
        );
        assert_eq!(outbox.len(), 3, "kept until acked");
        assert_eq!(outbox.n_unsent(), 0);
    }

    #[test]
    fn acks_forget_results_and_reconnects_resend_the_rest() {
        let mut outbox = Outbox::default();
        for id in ["a", "b", "c"] {
            outbox.push(ok(id, 1));
        }
        outbox.take_batch(usize::MAX);
        assert_eq!(outbox.ack(&ack("a", 1, true)), AckOutcome::Accepted);
        assert_eq!(
            outbox.ack(&ack("b", 1, false)),
            AckOutcome::Refused {
                code: "stale_attempt".into(),
                message: String::new()
            }
        );
        assert_eq!(
            outbox.ack(&ack("a", 1, true)),
            AckOutcome::Unknown,
            "a second ack is ignored"
        );
        assert_eq!(
            outbox.ack(&ack("c", 2, true)),
            AckOutcome::Unknown,
            "acks are per attempt"
        );
        outbox.push(ok("d", 1));
        outbox.requeue_unacked();
        assert_eq!(
            ids(&outbox.take_batch(usize::MAX)),
            [("c".into(), 1), ("d".into(), 1)]
        );
        outbox.ack(&ack("c", 1, true));
        outbox.ack(&ack("d", 1, true));
        assert!(outbox.is_empty());
    }

    #[test]
    fn frames_are_capped_by_size_but_never_empty() {
        let mut outbox = Outbox::default();
        for id in ["a", "b", "c"] {
            outbox.push(ok(id, 1));
        }
        let one = ok("a", 1).encoded_len();
        assert_eq!(
            ids(&outbox.take_batch(2 * one)),
            [("a".into(), 1), ("b".into(), 1)]
        );
        assert_eq!(
            ids(&outbox.take_batch(1)),
            [("c".into(), 1)],
            "an oversized result still goes out alone"
        );
    }

    #[test]
    fn cancelled_and_replaced_results() {
        let mut outbox = Outbox::default();
        outbox.push(ok("a", 1));
        outbox.push(ok("b", 1));
        let key = v1::AttemptRef {
            task_id: "a".into(),
            attempt: 1,
        };
        assert!(outbox.contains(&key));
        assert!(outbox.forget(&key).is_some());
        assert!(!outbox.contains(&key));
        outbox.take_batch(usize::MAX);
        outbox.push(ok("b", 1));
        assert_eq!(outbox.len(), 1);
        assert_eq!(
            ids(&outbox.take_batch(usize::MAX)),
            [("b".into(), 1)],
            "a replaced result is sent again"
        );
        let mut keys: Vec<_> = outbox.keys().cloned().collect();
        keys.sort_by(|x, y| x.task_id.cmp(&y.task_id));
        assert_eq!(
            keys,
            [v1::AttemptRef {
                task_id: "b".into(),
                attempt: 1
            }]
        );
    }
}
