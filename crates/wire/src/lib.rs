//! OpenAI-compatible wire types.
//!
//! These types are the contract with every client and every upstream: they
//! must deserialize what OpenAI documents and serialize what OpenAI returns.
//! Nothing here knows about engines or routing.

pub mod chat;
pub mod error;
pub mod models;
pub mod sse;
pub mod timings;

pub use chat::*;
pub use error::{ErrorBody, ErrorDetail};
pub use models::{Model, ModelList};
pub use timings::Timings;
