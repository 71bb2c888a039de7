//! OpenAI-compatible wire types, and the vocabulary switchyard adds to them.
//!
//! These types are the contract with every client and every upstream: they
//! must deserialize what OpenAI documents and serialize what OpenAI returns.
//! Nothing here knows about engines or routing. Beside them: the
//! `x-switchyard-*` header names ([`headers`]), result labels and handoff
//! statuses ([`labels`]), a lenient reader of any server's answers
//! ([`reply`]), Unix time ([`time`]), and, with the `client` feature, the
//! tools' one HTTP client ([`client`]) and admin client ([`admin`]); with
//! `serve`, serving helpers ([`net`]).

#[cfg(feature = "client")]
pub mod admin;
pub mod chat;
#[cfg(feature = "client")]
pub mod client;
pub mod error;
pub mod headers;
pub mod labels;
pub mod models;
#[cfg(feature = "serve")]
pub mod net;
pub mod reply;
pub mod sse;
pub mod time;
pub mod timings;

pub use chat::*;
pub use error::{ErrorBody, ErrorDetail};
pub use labels::{HandoffStatus, ResultLabel};
pub use models::{Model, ModelList};
pub use reply::ChatReply;
pub use time::{unix_ms, unix_secs};
pub use timings::Timings;
