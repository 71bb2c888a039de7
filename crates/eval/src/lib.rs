//! Evaluation: versioned eval sets ([`dataset`]), machine-checkable
//! expectations and their scorers ([`expect`], with a sandbox for code; the
//! refusal detector is the router's), the runner that asks any OpenAI-compatible target
//! ([`runner`]), and scorecards and regression gates over its records
//! ([`scorecard`]). [`pii`] measures the data-protection detectors on a
//! labelled corpus, and [`safety`] reads the safety set the classifier is
//! calibrated and judged on.
//!
//! Records follow DESIGN.md's eval-record contract, so `switchyard
//! calibrate` reads a run directly.

pub mod dataset;
pub mod expect;
pub mod pii;
pub mod record;
pub mod runner;
pub mod safety;
pub mod sandbox;
pub mod scorecard;
