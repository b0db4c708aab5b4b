//! Test support for meshpass (see README.md).
