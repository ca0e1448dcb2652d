//! Workflows: flow definitions, their validation, and the run engine, all pure.
//!
//! - [`def`]: the definition format (JSON/YAML, format 1) and its validator.
//! - [`expr`]: references (`${steps.a.output.x}`), templates and conditions.
//! - [`engine`]: a run as a state machine, `apply(run, command, env) -> actions`;
//!   the server stores the run and submits/cancels the tasks the actions name.
//! - [`deps`]: seed 001's task dependencies (release or cancel a waiting task).
//! - [`refs`]: large step outputs passed to children by reference, filled in at dispatch.

pub mod def;
pub mod deps;
pub mod engine;
pub mod expr;
pub mod refs;

pub use def::FlowDef;
pub use engine::{Run, RunCommand, RunStatus, StepStatus};
