//! `shoal-agent` (being written).

fn main() {}
