#!/bin/bash
# ubpf.sh on|off encap: on a running lab (up.sh), t1's overlay traffic to t2 encapsulated in tc
# BPF (uencap.c on t1's veth on node 1) and sent out of the underlay, skipping the bridge and the
# VXLAN device. Needs clang and libbpf-dev. A fast path over the kernel's, which stays. The
# receiving twin measured with it (udecap.c, commit e659822) became the node agent's
# node-agent/bpf/decap.c, which the agent loads itself.
set -e
S=${MLAB_STATE:-/tmp/mlab}; D=$(dirname "$0")
CF="-O2 -g -target bpf -I/usr/include/$(uname -m)-linux-gnu -DVNI=4096 -DTIP=0x0c00ff0a"
case $1/$2 in
 on/encap)
  uif=$(ip netns exec mlab-n1 cat /sys/class/net/eth0/ifindex)
  clang $CF -DLOCAL=0x010013c6 -DREMOTE=0x020013c6 -DUIF=$uif \
    '-DTMAC=((__u8[]){0x02,0x42,0x0a,0xff,0x00,0x0c})' -c $D/uencap.c -o $S/uencap.o
  ip netns exec mlab-n1 tc qdisc replace dev she1 clsact
  ip netns exec mlab-n1 tc filter replace dev she1 ingress pref 1 bpf da obj $S/uencap.o sec tc ;;
 off/encap) ip netns exec mlab-n1 tc qdisc del dev she1 clsact ;;
 *) echo "usage: ubpf.sh on|off encap" >&2; exit 1 ;;
esac
