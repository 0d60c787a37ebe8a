#!/bin/bash
# variant.sh NAME [ARG]: one data-path change on a running lab (up.sh). Each was measured against
# the unchanged lab; none helped (docs/architecture.md, "Data-path options measured").
napi() { # NS DEV: veth GRO, so that the veth may use NAPI, and NAPI in a kernel thread
  ip netns exec "$1" ethtool -K "$2" gro on rx-udp-gro-forwarding on
  ip netns exec "$1" sh -c "echo 1 > /sys/class/net/$2/threaded"
}
mac() { printf '02:42:0a:ff:%02x:%02x' 0 "$1"; }
case $1 in
 napi-she1) napi mlab-n1 she1 ;;     # the sending task's veth, node side
 napi-t2) napi mlab-t2 eth0 ;;       # the receiving task's veth, task side
 notcpdemux-n3) ip netns exec mlab-n3 sysctl -qw net.ipv4.tcp_early_demux=0 ;;
 nofw-n3) ip netns exec mlab-n3 nft flush chain inet shoal_node forward ;;  # cost of the rules
 nocsum)  # VXLAN without outer UDP checksums (the device is made again)
  for i in 1 2 3; do
   n=mlab-n$i
   ip -n $n link del shv-4096
   ip -n $n link add shv-4096 type vxlan id 4096 dstport 4789 local 198.19.0.$i nolearning proxy noudpcsum
   ip -n $n link set shv-4096 mtu 1450 master shb-4096 up
  done
  EPS="10.255.0.1:$(mac 1):1 10.255.0.2:$(mac 2):2 10.255.0.3:$(mac 3):3 10.255.0.11:$(mac 11):1 10.255.0.12:$(mac 12):2"
  for i in 1 2 3; do
   for e in $EPS; do
    ip=${e%%:*}; rest=${e#*:}; node=${rest##*:}; m=${rest%:*}
    [ "$node" = "$i" ] && continue
    ip -n mlab-n$i neigh replace $ip lladdr $m dev shv-4096 nud permanent
    bridge -n mlab-n$i fdb add $m dev shv-4096 dst 198.19.0.$node self permanent
   done
  done ;;
 rps-she)  # RPS on the tasks' veths, node end: variant.sh rps-she MASK (1, 2: one CPU; 3: both)
  ip netns exec mlab-n1 sh -c "echo ${2:?mask} > /sys/class/net/she1/queues/rx-0/rps_cpus"
  ip netns exec mlab-n2 sh -c "echo $2 > /sys/class/net/she2/queues/rx-0/rps_cpus" ;;
 napi-vxlan)  # the VXLAN devices' GRO cells in NAPI threads (nodes 1 and 2): stalls the overlay
  for i in 1 2; do ip netns exec mlab-n$i sh -c "echo 1 > /sys/class/net/shv-4096/threaded"; done ;;
 nogro-vxlan) for i in 1 2 3; do ip netns exec mlab-n$i ethtool -K shv-4096 gro off; done ;;
 tso-napi)  # the sending task's veth without TSO, so that its packets qualify for veth NAPI
  ip netns exec mlab-t1 ethtool -K eth0 tso off
  napi mlab-n1 she1 ;;
 *) echo "variant.sh: unknown variant $1" >&2; exit 1 ;;
esac
