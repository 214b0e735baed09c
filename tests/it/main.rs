//! The one integration test binary: model-based tests of the core, the configuration and
//! command-line behaviour of the real binary, and the layering rule.

mod cli;
mod layering;
mod lock_props;
mod model;
