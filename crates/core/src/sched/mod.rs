//! The pure scheduling core: which agents exist and how healthy they are
//! ([`registry`]), which of them a task goes to ([`routing`]), which are taken out
//! of routing after repeated failures ([`breaker`]), and whether, when and in what
//! order work is admitted ([`flow`]).
//!
//! Nothing here does IO, reads a clock or draws random numbers: time arrives as
//! milliseconds and randomness as a sample in `[0, 1)`, so every decision can be
//! replayed in a test. The server owns the state values (a [`registry::Registry`],
//! a [`breaker::Breakers`], a [`routing::Router`], the flow-control structures)
//! behind its own lock and calls these functions with the current time.
//!
//! A task steers its scheduling through metadata keys, listed in [`keys`] and
//! parsed, with every problem reported at once, by [`hints::Hints::from_metadata`].

pub mod breaker;
pub mod flow;
pub mod hints;
pub mod registry;
pub mod routing;

pub use hints::{keys, Hints};
