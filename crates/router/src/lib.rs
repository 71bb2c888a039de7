//! Routing, as pure functions.
//!
//! [`Policy`] is a validated, versioned policy file; [`classify`] reads a
//! prompt's data class, family, safety categories and difficulty features;
//! [`decide`] turns a request's facts into a [`Decision`]. Nothing here does
//! I/O or reads a clock, so the same request and the same policy version
//! always give the same decision: it can be unit-tested, fuzzed, and
//! replayed offline (`switchyard route explain`). [`calibrate`] turns eval
//! results into thresholds, and [`Confidence`] is the cascade's signal.

// A request-path crate: a failure is a typed error, never a panic (tests
// may unwrap: see clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod budget;
pub mod calibrate;
mod classify;
mod confidence;
mod decide;
pub mod detect;
mod features;
mod policy;
mod prices;
pub mod protect;
mod refusal;
pub mod safety;

pub use budget::{Budget, ContextBudget, Fit};
pub use calibrate::Calibration;
pub use classify::{classify, classify_with, Classification, Declared};
pub use confidence::{Confidence, Signal, CONFIDENCE_WINDOW};
pub use decide::{decide, decide_forced, CascadePlan, Decision, Outcome, RequestFacts};
pub use features::{DifficultyModel, Features};
pub use policy::{
    Action, BackendKind, Breaker, DataClass, Family, Lane, Policy, PolicyError, RetryBudget, Route, Rule, Shadow,
    VerifierBusy, When,
};
pub use prices::{Cost, Price, Prices};
pub use refusal::is_refusal;
pub use safety::{SafetyVerdict, UnsafeWhen};
