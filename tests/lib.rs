//! Integration tests: the real binary on real files.

mod alerts;
mod backpressure;
mod browser;
mod budget;
mod cost;
mod daemon;
mod estimate;
mod fallback;
mod full_disk;
mod harness;
mod memory;
mod prepare;
mod render;
mod run;
mod schema;
mod serve;
mod sim;
mod support;
mod validate;
mod validate_props;
mod web;
