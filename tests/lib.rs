//! Integration tests: the real binary on real files.

// The support modules' `pub` items are the suite's own API, not the
// library's; and a scenario test reads from setup to the last assertion in
// one piece, so it may run longer than the library's functions.
#![allow(unreachable_pub, clippy::too_many_lines)]

mod alerts;
mod backpressure;
mod bench;
mod browser;
mod budget;
mod cost;
mod daemon;
mod docs;
mod enqueue;
mod enqueue_load;
mod estimate;
mod fallback;
mod full_disk;
mod memory;
mod multinode;
mod postgres_sink;
mod prepare;
mod providers;
mod render;
mod run;
mod schema;
mod sdk;
mod serve;
mod sharing;
mod shutdown;
mod sim;
mod stages;
mod standby;
mod support;
mod systemd;
mod validate;
mod validate_props;
mod web;
