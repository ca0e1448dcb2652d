//! What an agent author uses: connect to a Baton server, receive tasks, heartbeat,
//! report results, drain on shutdown, and a harness to test handlers without a server.
//!
//! ```no_run
//! use baton_sdk::{Agent, Task};
//!
//! # async fn example() -> Result<(), baton_sdk::Error> {
//! Agent::builder(["http://127.0.0.1:50051"])
//!     .agent_id("echo-1")
//!     .task_type("echo")
//!     .max_concurrent(16)
//!     .run(|task: Task| async move { Ok(serde_json::json!({ "echo": task.metadata })) })
//!     .await
//! # }
//! ```
//!
//! While it runs, a handler can emit events (`task.emit("alert", &alert)`) that
//! clients watching the task receive at once ([`events`]).
//!
//! A handler's `Err` says whether the server should retry ([`HandlerError::retryable`],
//! [`HandlerError::retry_after`]) or give up ([`HandlerError::permanent`]); a handler
//! that panics or runs past the task's timeout is reported as a failure rather than
//! taking the agent down.
//!
//! Besides its task types and concurrency, an agent declares seed 004's descriptor
//! ([`AgentBuilder::agent_type`], [`AgentBuilder::version`] as a semantic version,
//! capabilities, tags, location, cost factor, weight), which discovery and routing
//! read; its heartbeats carry its load: error rate and mean response time over its
//! last 100 results of the last five heartbeat intervals (a permanent failure is
//! the input's fault and not an error),
//! and the CPU share of its process on Linux.
//!
//! Each attempt runs inside a `tracing` span named `agent.attempt` for
//! OpenTelemetry; when the assignment carries the orchestrator's trace context
//! (W3C `traceparent`), that span is its child ([`trace_context`]). Export is the
//! binary's choice: install a `tracing-opentelemetry` layer to send spans anywhere.

mod agent;
mod backoff;
mod error;
pub mod events;
mod handler;
mod load;
mod outbox;
mod task;
pub mod testing;
pub mod trace_context;

pub use agent::{Agent, AgentBuilder};
pub use error::{Error, FailureKind, HandlerError};
pub use events::{Event, Events};
pub use handler::{BoxHandler, Handler, Outcome};
pub use task::Task;

/// Re-exported so a handler crate needs no direct dependency on `baton-core`.
pub use baton_core::{InputKind, InputPart, Priority, TaskId};
