//! orchestrator: scheduled LLM work on the provider batch APIs (half the
//! price), with a synchronous fallback that holds every deadline.
//!
//! The binary is a thin shell over [`cli::run`]; everything else lives here.

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod cost;
pub mod daemon;
pub mod diagnostics;
pub mod engine;
pub mod failpoint;
pub mod job;
pub mod lanes;
pub mod manifest;
pub mod notify;
pub mod outcome;
pub mod plan;
pub mod providers;
pub mod render;
pub mod schedule;
pub mod secrets;
pub mod sim;
pub mod sinks;
pub mod sources;
pub mod status;
pub mod store;
pub mod suggest;
pub mod templates;
pub mod validate;
pub mod web;
