#!/bin/bash
# Hand-built copy of figure 4's topology in throwaway namespaces (prefix mlab-).
# Run under flock /work/e2e.lock; tear down with down.sh (also after a failure).
set -e
P=mlab
B=${MLAB_BENCH:?set MLAB_BENCH to a release shoal-bench}
S=${MLAB_STATE:-/tmp/mlab}; mkdir -p $S
. "$(dirname "$0")/common.sh"
ip netns add $P-u
ip -n $P-u link add br0 type bridge
ip -n $P-u link set br0 up
ip -n $P-u link set lo up
for i in 1 2 3; do
  ns=$P-n$i
  ip netns add $ns
  ip -n $ns link set lo up
  ip -n $P-u link add u$i type veth peer name eth0 netns $ns
  ip -n $P-u link set u$i master br0 up
  ip -n $ns addr add 198.19.0.$i/24 dev eth0
  ip -n $ns link set eth0 up
  ip netns exec $ns sysctl -qw net.ipv4.ip_forward=1
  ip netns exec $ns sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
  ip -n $ns link add shb-4096 type bridge
  ip -n $ns link add shv-4096 type vxlan id 4096 dstport 4789 local 198.19.0.$i nolearning proxy
  ip -n $ns link set shv-4096 mtu 1450 master shb-4096 up
  ip -n $ns link set shb-4096 up
  ip -n $ns addr add 10.255.0.$i/16 dev shb-4096
done
mac() { printf '02:42:0a:ff:%02x:%02x' 0 $1; }
# tasks: t1 on n1 (10.255.0.11), t2 on n2 (10.255.0.12)
for t in 1 2; do
  ns=$P-t$t; n=$P-n$t; ip=10.255.0.1$t
  ip netns add $ns
  ip -n $ns link set lo up
  ip -n $n link add she$t type veth peer name eth0 netns $ns
  ip -n $n link set she$t mtu 1450 master shb-4096 up
  ip -n $ns link set eth0 address $(mac 1$t) mtu 1450
  ip -n $ns addr add $ip/16 dev eth0
  ip -n $ns link set eth0 up
done
# node ingress addrs MACs
for i in 1 2 3; do ip -n $P-n$i link set shb-4096 address $(mac $i); done
# static fdb + neigh on every node for every remote endpoint
ep() { echo "$1 $2 $3"; }  # ip mac node
EPS="10.255.0.1:$(mac 1):1 10.255.0.2:$(mac 2):2 10.255.0.3:$(mac 3):3 10.255.0.11:$(mac 11):1 10.255.0.12:$(mac 12):2"
for i in 1 2 3; do
  for e in $EPS; do
    ip=${e%%:*}; rest=${e#*:}; node=${rest##*:}; m=${rest%:*}
    [ "$node" = "$i" ] && continue
    ip -n $P-n$i neigh add $ip lladdr $m dev shv-4096 nud permanent
    bridge -n $P-n$i fdb add $m dev shv-4096 dst 198.19.0.$node self permanent
  done
done
# node 3 mesh rules (as shoal_mesh) + node policy (notrack vxlan) on every node
for i in 1 2 3; do
ip netns exec $P-n$i nft -f - <<NFT
table inet shoal_node {
  chain vxlan_untracked_in {
    type filter hook prerouting priority raw; policy accept;
    udp dport 4789 notrack
  }
  chain vxlan_untracked_out {
    type filter hook output priority raw; policy accept;
    udp dport 4789 notrack
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    oifname "shb-*" ct state established,related accept
    oifname "shb-*" ct status dnat accept
    oifname "shb-*" iifname != "shb-*" drop
  }
}
table ip shoal_mesh {
  map ports {
    type inet_proto . inet_service : verdict
    elements = { tcp . 8080 : goto port_0 }
  }
  chain port_0 {
    meta l4proto tcp dnat to numgen inc mod 1 map { 0 : 10.255.0.12 } : 80
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.19.0.$i ct state new meta l4proto . th dport vmap @ports
  }
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr 198.19.0.$i ct state new meta l4proto . th dport vmap @ports
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "shb-4096" ct status dnat snat to 10.255.0.$i
  }
}
NFT
done
chrt -f 20 ip netns exec $P-t2 $B __serve 0.0.0.0:80 > $S/serve.log 2>&1 &
echo $! > $S/serve.pid
chrt -f 20 ip netns exec $P-t2 $B __sink 0.0.0.0:5201 > $S/sink.log 2>&1 &
echo $! > $S/sink.pid
chrt -f 20 ip netns exec $P-n2 $B __sink 198.19.0.2:5201 > $S/sink2.log 2>&1 &
echo $! > $S/sink2.pid
sleep 0.5
for t in 1 2; do vip_table $P-t$t; done
