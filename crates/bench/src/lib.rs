//! Benchmarking any OpenAI-compatible endpoint on identical, replayable
//! traffic. [`trace`] is the traffic: a JSONL list of requests with arrival
//! offsets, generated from a named scenario and a seed, or imported from a
//! published production trace, so two systems can see exactly the same load;
//! [`replay`] sends it to any OpenAI-compatible endpoint and measures what each
//! request saw (TTFT, ITL, TPOT, E2E, failures) with HDR percentiles;
//! [`sweep`] repeats a replay at several concurrencies; [`cost`] prices a
//! run and measures or models its energy.

pub mod compare;
pub mod cost;
pub mod mock;
pub mod replay;
pub mod report;
pub mod sweep;
pub mod trace;
