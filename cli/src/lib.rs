//! The shoal CLI library (being written).
