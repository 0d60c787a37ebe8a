# Sourced by up.sh and bpf-up.sh: what both lab set-ups share.

# vip_table NS: the client task's VIP DNAT (10.0.9.9 → 10.0.9.10), as the agent writes it.
vip_table() {
  ip netns exec "$1" nft -f - <<NFT
table ip shoal_lb {
  chain nat {
    type nat hook output priority -100; policy accept;
    ip daddr 10.0.9.9 dnat to 10.0.9.10
  }
}
NFT
}
