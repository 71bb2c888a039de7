//! OpenAI-compatible wire types, and the vocabulary switchyard adds to them.
//!
//! These types are the contract with every client and every upstream: they
//! must deserialize what OpenAI documents and serialize what OpenAI returns.
//! Nothing here knows about engines or routing. Beside them: the
//! `x-switchyard-*` header names ([`headers`]), result labels and handoff
//! statuses ([`labels`]), and Unix time ([`time`]).

pub mod chat;
pub mod error;
pub mod headers;
pub mod labels;
pub mod models;
pub mod sse;
pub mod time;
pub mod timings;

pub use chat::*;
pub use error::{ErrorBody, ErrorDetail};
pub use labels::{HandoffStatus, ResultLabel};
pub use models::{Model, ModelList};
pub use time::{unix_ms, unix_secs};
pub use timings::Timings;
