//! Integration tests: the real binary on real files.

mod fallback;
mod render;
mod run;
mod schema;
mod sim;
mod support;
mod validate;
mod validate_props;
