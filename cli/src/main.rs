//! `shoal` (being written).

fn main() {}
