//! nftables VIP load balancing (being written).
