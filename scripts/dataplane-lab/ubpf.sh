#!/bin/bash
# ubpf.sh on|off decap|encap: on a running lab (up.sh), the overlay from t1 to t2 in tc BPF at
# the underlay: `decap` on node 2's underlay interface (udecap.c), `encap` on t1's veth on
# node 1 (uencap.c). Needs clang and libbpf-dev. Each is a fast path over the kernel's; the
# bridge and VXLAN device stay and carry everything the programs pass on.
set -e
S=${MLAB_STATE:-/tmp/mlab}; D=$(dirname "$0")
CF="-O2 -g -target bpf -I/usr/include/$(uname -m)-linux-gnu -DVNI=4096 -DTIP=0x0c00ff0a"
case $1/$2 in
 on/decap)
  pe=$(ip netns exec mlab-n2 cat /sys/class/net/she2/ifindex)
  clang $CF -DLOCAL=0x020013c6 -DPEER=$pe -c $D/udecap.c -o $S/udecap.o
  ip netns exec mlab-n2 tc qdisc replace dev eth0 clsact
  ip netns exec mlab-n2 tc filter replace dev eth0 ingress pref 1 bpf da obj $S/udecap.o sec tc ;;
 on/encap)
  uif=$(ip netns exec mlab-n1 cat /sys/class/net/eth0/ifindex)
  clang $CF -DLOCAL=0x010013c6 -DREMOTE=0x020013c6 -DUIF=$uif \
    '-DTMAC=((__u8[]){0x02,0x42,0x0a,0xff,0x00,0x0c})' -c $D/uencap.c -o $S/uencap.o
  ip netns exec mlab-n1 tc qdisc replace dev she1 clsact
  ip netns exec mlab-n1 tc filter replace dev she1 ingress pref 1 bpf da obj $S/uencap.o sec tc ;;
 off/decap) ip netns exec mlab-n2 tc qdisc del dev eth0 clsact ;;
 off/encap) ip netns exec mlab-n1 tc qdisc del dev she1 clsact ;;
 *) echo "usage: ubpf.sh on|off decap|encap" >&2; exit 1 ;;
esac
