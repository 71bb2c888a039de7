//! Operating a running server without restarting it: the routing policy
//! as a live, versioned object ([`policy`]: apply, roll back, follow the
//! version in force across replicas), the embedded models as a set that
//! follows it ([`models`]: load beside, switch, drain, unload), canary
//! rollouts of a new version with their gate ([`rollout`]), drift and cost
//! alerts over the telemetry records ([`alerts`]), SLA compliance per route
//! and family over the same records ([`sla`]), and faults injected on
//! purpose into routes and shared state for game days ([`faults`]).

pub mod alerts;
pub mod faults;
pub mod models;
pub mod policy;
pub mod rollout;
pub mod sla;
