//! Provider clients. Providers know nothing of jobs or runs: they send
//! requests and return typed answers and typed errors.

pub mod anthropic;
mod error;
mod results;

pub use error::ProviderError;
pub use results::{ResultLine, parse_result_line};
