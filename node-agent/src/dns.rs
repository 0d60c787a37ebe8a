//! Embedded DNS for service discovery (being written).
