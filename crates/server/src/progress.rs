//! The progress hub: relays the events agents emit while attempts run (an alert,
//! an LLM token, ...) to the clients watching a task
//! (`GET /api/v1/tasks/{task_id}/events`). In memory and best effort: events are
//! never stored, and a client served by another replica sees only the lifecycle.
//!
//! Events are published under topics: the task's id, and for a workflow step also
//! its run's id (a built-in flow task's id is its run id). Each topic has a
//! broadcast channel for live subscribers and a bounded replay buffer, so a client
//! that connects a moment after an event still sees it. A topic is dropped
//! [`ENDED_GRACE`] after its task or run ends, or after [`IDLE_TTL`] without events
//! or subscribers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Events kept per topic for late subscribers, and their total size at most.
pub const REPLAY_MAX_EVENTS: usize = 512;
pub const REPLAY_MAX_BYTES: usize = 256 * 1024;
/// Replay bytes across all topics at most; past it, the least recently used
/// topics nobody watches go first.
pub const TOTAL_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Live events a slow subscriber may fall behind before it is told it lagged.
const CHANNEL_CAPACITY: usize = 256;
/// How long a topic outlives its task, for clients that connect just after the end.
pub const ENDED_GRACE: Duration = Duration::from_secs(60);
/// A topic nobody published to or listened on for this long is dropped.
pub const IDLE_TTL: Duration = Duration::from_secs(600);
/// Topics kept at most; past it, the least recently used unwatched one goes.
const MAX_TOPICS: usize = 4096;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One event an agent emitted, as relayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// Position in its topic, from 1.
    pub seq: u64,
    /// When the server received it (Unix milliseconds).
    pub at_ms: u64,
    pub task_id: String,
    pub attempt: u32,
    pub kind: String,
    /// Compact JSON text.
    pub data: String,
}

impl Emitted {
    fn size(&self) -> usize {
        self.task_id.len() + self.kind.len() + self.data.len() + 32
    }
}

/// What a subscriber gets: the events already emitted, then a live receiver that
/// starts right after them (nothing missed, nothing twice).
pub struct Subscription {
    pub replay: Vec<Arc<Emitted>>,
    pub live: broadcast::Receiver<Arc<Emitted>>,
}

struct Topic {
    tx: broadcast::Sender<Arc<Emitted>>,
    replay: VecDeque<Arc<Emitted>>,
    replay_bytes: usize,
    next_seq: u64,
    touched: Instant,
    ended: Option<Instant>,
}

impl Topic {
    fn new(now: Instant) -> Self {
        Self {
            tx: broadcast::channel(CHANNEL_CAPACITY).0,
            replay: VecDeque::new(),
            replay_bytes: 0,
            next_seq: 1,
            touched: now,
            ended: None,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        match self.ended {
            Some(at) => now.saturating_duration_since(at) >= ENDED_GRACE,
            None => {
                self.tx.receiver_count() == 0
                    && now.saturating_duration_since(self.touched) >= IDLE_TTL
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    topics: HashMap<String, Topic>,
    /// The sum of the topics' `replay_bytes`.
    total_bytes: usize,
    last_sweep: Option<Instant>,
}

impl Inner {
    fn remove(&mut self, topic: &str) {
        if let Some(t) = self.topics.remove(topic) {
            self.total_bytes = self.total_bytes.saturating_sub(t.replay_bytes);
        }
    }

    /// The least recently used topic nobody watches, but `keep`.
    fn victim(&self, keep: &str) -> Option<String> {
        self.topics
            .iter()
            .filter(|(k, t)| t.tx.receiver_count() == 0 && k.as_str() != keep)
            .min_by_key(|(_, t)| t.touched)
            .map(|(k, _)| k.clone())
    }
}

#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes one event under `topic`.
    pub fn publish(&self, topic: &str, task_id: &str, attempt: u32, kind: &str, data: &str) {
        self.publish_at(topic, task_id, attempt, kind, data, Instant::now())
    }

    fn publish_at(
        &self,
        topic: &str,
        task_id: &str,
        attempt: u32,
        kind: &str,
        data: &str,
        now: Instant,
    ) {
        let mut inner = self.lock();
        sweep(&mut inner, now);
        let t = topic_entry(&mut inner, topic, now);
        let event = Arc::new(Emitted {
            seq: t.next_seq,
            at_ms: crate::clock::now_ms(),
            task_id: task_id.to_string(),
            attempt,
            kind: kind.to_string(),
            data: data.to_string(),
        });
        t.next_seq += 1;
        t.touched = now;
        t.ended = None;
        let before = t.replay_bytes;
        t.replay_bytes += event.size();
        t.replay.push_back(event.clone());
        while t.replay.len() > REPLAY_MAX_EVENTS
            || (t.replay_bytes > REPLAY_MAX_BYTES && t.replay.len() > 1)
        {
            if let Some(old) = t.replay.pop_front() {
                t.replay_bytes = t.replay_bytes.saturating_sub(old.size());
            }
        }
        // No receiver is fine: the replay buffer keeps it for a late one.
        let _ = t.tx.send(event);
        let after = t.replay_bytes;
        inner.total_bytes = (inner.total_bytes + after).saturating_sub(before);
        while inner.total_bytes > TOTAL_MAX_BYTES {
            match inner.victim(topic) {
                Some(k) => inner.remove(&k),
                None => break,
            }
        }
    }

    /// Subscribes to `topic` (creating it, so that events published from now on
    /// are kept even before the first one arrives).
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let now = Instant::now();
        let mut inner = self.lock();
        sweep(&mut inner, now);
        let t = topic_entry(&mut inner, topic, now);
        t.touched = now;
        Subscription {
            replay: t.replay.iter().cloned().collect(),
            live: t.tx.subscribe(),
        }
    }

    /// The task or run behind `topic` ended: its topic goes after [`ENDED_GRACE`].
    pub fn end(&self, topic: &str) {
        self.end_at(topic, Instant::now())
    }

    fn end_at(&self, topic: &str, now: Instant) {
        let mut inner = self.lock();
        if let Some(t) = inner.topics.get_mut(topic) {
            t.ended.get_or_insert(now);
        }
        sweep(&mut inner, now);
    }

    pub fn topic_count(&self) -> usize {
        self.lock().topics.len()
    }

    /// Replay bytes held across topics.
    pub fn total_bytes(&self) -> usize {
        self.lock().total_bytes
    }
}

fn topic_entry<'a>(inner: &'a mut Inner, topic: &str, now: Instant) -> &'a mut Topic {
    if !inner.topics.contains_key(topic) && inner.topics.len() >= MAX_TOPICS {
        if let Some(k) = inner.victim(topic) {
            inner.remove(&k);
        }
    }
    inner
        .topics
        .entry(topic.to_string())
        .or_insert_with(|| Topic::new(now))
}

fn sweep(inner: &mut Inner, now: Instant) {
    if inner
        .last_sweep
        .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
    {
        return;
    }
    inner.last_sweep = Some(now);
    let expired: Vec<String> = inner
        .topics
        .iter()
        .filter(|(_, t)| t.expired(now))
        .map(|(k, _)| k.clone())
        .collect();
    for k in expired {
        inner.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(events: &[Arc<Emitted>]) -> Vec<(u64, String)> {
        events.iter().map(|e| (e.seq, e.data.clone())).collect()
    }

    #[test]
    fn late_subscribers_get_the_replay_then_live_events_without_gaps() {
        let hub = Hub::default();
        let t0 = Instant::now();
        hub.publish_at("t", "t", 1, "token", "\"a\"", t0);
        hub.publish_at("t", "t", 1, "token", "\"b\"", t0);
        let mut sub = hub.subscribe("t");
        assert_eq!(
            kinds(&sub.replay),
            [(1, "\"a\"".to_string()), (2, "\"b\"".to_string())]
        );
        hub.publish_at("t", "t", 1, "token", "\"c\"", t0);
        let live = sub.live.try_recv().unwrap();
        assert_eq!((live.seq, live.data.as_str()), (3, "\"c\""));
        assert!(sub.live.try_recv().is_err(), "nothing twice");
        assert!(
            hub.subscribe("other").replay.is_empty(),
            "topics are separate"
        );
    }

    #[test]
    fn the_replay_buffer_is_bounded_by_count_and_bytes() {
        let hub = Hub::default();
        let now = Instant::now();
        for i in 0..REPLAY_MAX_EVENTS + 10 {
            hub.publish_at("t", "t", 1, "n", &i.to_string(), now);
        }
        let replay = hub.subscribe("t").replay;
        assert_eq!(replay.len(), REPLAY_MAX_EVENTS);
        assert_eq!(replay[0].seq, 11, "the oldest go first");
        let big = "x".repeat(REPLAY_MAX_BYTES / 4);
        for _ in 0..8 {
            hub.publish_at("b", "b", 1, "n", &big, now);
        }
        let replay = hub.subscribe("b").replay;
        assert!(replay.len() < 4, "{}", replay.len());
        assert_eq!(replay.last().unwrap().seq, 8);
        let huge = "x".repeat(2 * REPLAY_MAX_BYTES);
        hub.publish_at("h", "h", 1, "n", &huge, now);
        assert_eq!(
            hub.subscribe("h").replay.len(),
            1,
            "the newest is always kept"
        );
    }

    #[test]
    fn topics_go_a_while_after_their_task_ends_or_when_idle() {
        let hub = Hub::default();
        let t0 = Instant::now();
        hub.publish_at("done", "done", 1, "n", "1", t0);
        hub.publish_at("idle", "idle", 1, "n", "1", t0);
        hub.end_at("done", t0);
        let later = t0 + ENDED_GRACE - Duration::from_secs(1);
        hub.end_at("nothing", later);
        assert_eq!(hub.topic_count(), 2, "kept during the grace period");
        hub.end_at("nothing", t0 + ENDED_GRACE + Duration::from_secs(1));
        assert_eq!(hub.topic_count(), 1, "the ended topic is gone");
        hub.end_at("nothing", t0 + IDLE_TTL + Duration::from_secs(2));
        assert_eq!(hub.topic_count(), 0, "the idle topic is gone");
    }

    #[test]
    fn the_total_is_bounded_and_watched_topics_stay() {
        let hub = Hub::default();
        let now = Instant::now();
        let _watched = hub.subscribe("watched");
        hub.publish_at("watched", "w", 1, "n", "1", now);
        let chunk = "x".repeat(REPLAY_MAX_BYTES / 3);
        let n_topics = 2 * TOTAL_MAX_BYTES / REPLAY_MAX_BYTES;
        for i in 0..n_topics {
            hub.publish_at(&format!("t{i}"), "t", 1, "n", &chunk, now);
            hub.publish_at(&format!("t{i}"), "t", 1, "n", &chunk, now);
        }
        assert!(
            hub.total_bytes() <= TOTAL_MAX_BYTES,
            "{}",
            hub.total_bytes()
        );
        assert!(hub.topic_count() < n_topics);
        assert_eq!(hub.subscribe("watched").replay.len(), 1);
        assert_eq!(
            hub.subscribe(&format!("t{}", n_topics - 1)).replay.len(),
            2,
            "the newest topics are kept"
        );
    }

    #[test]
    fn a_watched_topic_is_not_dropped_for_idleness() {
        let hub = Hub::default();
        let t0 = Instant::now();
        let _sub = hub.subscribe("w");
        hub.end_at("x", t0 + IDLE_TTL + Duration::from_secs(5));
        assert_eq!(hub.topic_count(), 1);
    }
}
