//! Baton's pure core: the task model, its lifecycle state machine, retry math,
//! the scheduling decisions (`sched`) and the error codes shared by every API.
//! Nothing here does IO or knows about tokio.

pub mod error;
pub mod id;
pub mod input;
pub mod lifecycle;
pub mod priority;
pub mod progress;
pub mod retry;
#[warn(missing_docs)]
pub mod sched;
pub mod task;
pub mod workflow;

pub use error::{Error, ErrorCode};
pub use id::{AgentId, TaskId};
pub use input::{InputKind, InputPart};
pub use lifecycle::{Status, TaskState};
pub use priority::Priority;
pub use retry::RetryPolicy;
pub use task::{ExecutionMode, TaskSpec};

/// Milliseconds since the Unix epoch. Time is always passed in, never read here.
pub type Millis = u64;
