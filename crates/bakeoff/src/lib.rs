//! A bake-off: candidate variants of a model (quantization paths, runtimes,
//! endpoints) under one trace and one eval set, quality retention beside
//! speed, judged against stated SLAs.
//!
//! This crate is the part that needs no process: what a variant is
//! ([`variant`]), what a run directory holds ([`outcome`]), the verdict
//! ([`verdict`]) and the table and page ([`report`]). Serving each variant
//! and running the bench and the eval against it is `switchyard bakeoff`'s
//! job (the CLI), which writes the directory these read.

pub mod outcome;
pub mod report;
pub mod variant;
pub mod verdict;

pub use outcome::{Outcome, Paths, Served};
pub use variant::{Kind, Variant};
pub use verdict::{judge, Judged, Sla, Verdict};
