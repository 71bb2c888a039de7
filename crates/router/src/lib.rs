//! Routing, as pure functions.
//!
//! [`Policy`] is a validated, versioned policy file; [`classify`] reads a
//! prompt's data class, safety categories and difficulty features;
//! [`decide`] turns a request's facts into a [`Decision`]. Nothing here does
//! I/O or reads a clock, so the same request and the same policy version
//! always give the same decision: it can be unit-tested, fuzzed, and
//! replayed offline (`switchyard route explain`).

mod classify;
mod decide;
mod features;
mod policy;

pub use classify::{classify, Classification};
pub use decide::{decide, Decision, Outcome, RequestFacts};
pub use features::{DifficultyModel, Features};
pub use policy::{Action, Backend, Breaker, DataClass, Lane, Policy, PolicyError, RetryBudget, Route, Rule, When};
