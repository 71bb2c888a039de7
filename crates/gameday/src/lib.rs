//! Game days: break a route of a running switchyard on purpose and prove
//! the fallback, end to end.
//!
//! A [`scenario::Scenario`] names the traffic (a bench trace, or Poisson
//! arrivals), the faults (`die`, `error`, `timeout`, `stall_first_token`,
//! `cut_stream`, `slow` on a named route, each with a start and a length)
//! and what must hold. [`run::run`] drives the traffic with the bench's
//! replay while it sets and clears the faults through the server's
//! `/admin/faults` (an operator's key) and reads the breakers from
//! `/metrics`; [`report::report`] turns what it saw into failures by kind,
//! fallbacks fired, breaker changes, recovery times and a verdict.
//!
//! Like the bench and the eval runner, this crate never reaches into the
//! gateway: it breaks and measures a server over HTTP, as an operator would.

pub mod report;
pub mod run;
pub mod scenario;
