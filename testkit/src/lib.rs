//! Test support for meshpass (see README.md).

pub mod envoy;
