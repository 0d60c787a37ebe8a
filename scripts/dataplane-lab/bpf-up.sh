#!/bin/bash
# after up.sh: t3 on n1 (10.254.0.13), t4 on n2 (10.254.0.14), joined by tc BPF + external VXLAN (udp 4790)
set -e
P=mlab; B=${MLAB_BENCH:?set MLAB_BENCH to a release shoal-bench}; S=${MLAB_STATE:-/tmp/mlab}
D=$(dirname "$0")
. "$D/common.sh"
mac() { printf '02:42:0a:fe:%02x:%02x' 0 $1; }
for i in 1 2; do
  n=$P-n$i; t=$P-t$((i+2)); ip=10.254.0.1$((i+2))
  ip -n $n link add shx type vxlan external dstport 4790
  ip -n $n link set shx mtu 1450 up
  ip netns exec $n nft add rule inet shoal_node vxlan_untracked_in udp dport 4790 notrack
  ip netns exec $n nft add rule inet shoal_node vxlan_untracked_out udp dport 4790 notrack
  ip netns add $t; ip -n $t link set lo up
  ip -n $n link add shp$i type veth peer name eth0 netns $t
  ip -n $n link set shp$i mtu 1450 up
  ip -n $t link set eth0 address $(mac 1$((i+2))) mtu 1450
  ip -n $t addr add $ip/16 dev eth0; ip -n $t link set eth0 up
  vip_table $t
done
ip -n $P-t3 neigh add 10.254.0.14 lladdr $(mac 14) dev eth0 nud permanent
ip -n $P-t4 neigh add 10.254.0.13 lladdr $(mac 13) dev eth0 nud permanent
idx() { ip netns exec $1 cat /sys/class/net/$2/ifindex; }
for i in 1 2; do
  n=$P-n$i; o=$((3-i))
  vx=$(idx $n shx); pe=$(idx $n shp$i)
  clang -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -DENCAP -DREMOTE=0xc613000$o -DVXDEV=$vx -c $D/prog.c -o $S/enc$i.o
  clang -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -DPEER=$pe -c $D/prog.c -o $S/dec$i.o
  ip netns exec $n tc qdisc add dev shp$i clsact
  ip netns exec $n tc filter add dev shp$i ingress bpf da obj $S/enc$i.o sec tc
  ip netns exec $n tc qdisc add dev shx clsact
  ip netns exec $n tc filter add dev shx ingress bpf da obj $S/dec$i.o sec tc
done
chrt -f 20 ip netns exec $P-t4 $B __sink 0.0.0.0:5201 > $S/sink4.log 2>&1 &
echo $! > $S/sink4.pid
sleep 0.3
