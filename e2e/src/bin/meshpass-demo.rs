//! meshpass demo (being written).
fn main() {}
