//! hollow (being written).
