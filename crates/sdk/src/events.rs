//! Events a handler emits while an attempt runs: an alert as soon as it is
//! raised, each token of a streamed LLM answer. A connected agent relays them to the
//! server, which streams them to clients watching the task
//! (`GET /api/v1/tasks/{task_id}/events`); the test harness captures them.
//!
//! Events are best effort: never stored, never retried, and dropped while the agent
//! is disconnected. What must survive goes into the handler's output.

use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

/// One emitted event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// A short name: `alert`, `token`, ... (see [`baton_core::progress::validate_kind`]).
    pub kind: String,
    pub data: Value,
}

type Sink = Arc<dyn Fn(Event) + Send + Sync>;

/// Where a handler's events go; cheap to clone and to move into a blocking thread.
/// Get it from [`crate::Task::events`], or call [`crate::Task::emit`].
#[derive(Clone, Default)]
pub struct Events {
    sink: Option<Sink>,
}

impl Events {
    pub(crate) fn new(sink: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Self {
            sink: Some(Arc::new(sink)),
        }
    }

    /// Emits `data` (anything serializable to JSON) as a `kind` event. Never fails:
    /// an invalid kind, data that cannot be serialized or is larger than
    /// [`baton_core::progress::MAX_DATA_BYTES`] is logged and dropped.
    pub fn emit(&self, kind: &str, data: impl Serialize) {
        let Some(sink) = &self.sink else { return };
        if let Err(reason) = baton_core::progress::validate_kind(kind) {
            tracing::warn!(kind, reason = %reason, "event dropped");
            return;
        }
        let data = match serde_json::to_value(data) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(kind, error = %e, "event dropped: its data is not JSON");
                return;
            }
        };
        let size = serde_json::to_string(&data).map_or(usize::MAX, |s| s.len());
        if size > baton_core::progress::MAX_DATA_BYTES {
            tracing::warn!(
                kind,
                size,
                "event dropped: its data is larger than {} bytes",
                baton_core::progress::MAX_DATA_BYTES
            );
            return;
        }
        sink(Event {
            kind: kind.to_string(),
            data,
        });
    }

    /// Whether emitted events go anywhere (false for a task built in a test and run
    /// without [`crate::testing::Harness::run_with_events`]).
    pub fn is_connected(&self) -> bool {
        self.sink.is_some()
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Every sink compares equal: where events go is not part of a task's identity.
impl PartialEq for Events {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}
