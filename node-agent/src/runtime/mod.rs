//! The containerd container runtime (being written).
