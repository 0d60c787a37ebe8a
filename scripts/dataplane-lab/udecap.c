// Lab only: VXLAN decap at the tc ingress of node 2's underlay interface. A packet for task
// t2 (VNI, inner address and MAC given with -D) loses its outer Ethernet/IP/UDP/VXLAN headers
// here and goes straight into the task (bpf_redirect_peer): no outer IP/UDP receive, no
// vxlan_rcv, no GRO cells, no bridge. Anything else takes the kernel's path (TC_ACT_OK).
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct vxh { __u32 flags; __u32 vni; };
// Outer IPv4 + UDP + VXLAN + the inner Ethernet header: what is stripped after the outer MAC.
#define STRIP (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct vxh) + sizeof(struct ethhdr))

SEC("tc")
int udecap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	struct vxh *vx = (void *)(udp + 1);
	struct ethhdr *ieth = (void *)(vx + 1);
	struct iphdr *iip = (void *)(ieth + 1);
	if ((void *)(iip + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)) || ip->daddr != LOCAL || udp->dest != bpf_htons(4789) ||
	    vx->flags != bpf_htonl(0x08000000) || vx->vni != bpf_htonl(VNI << 8) ||
	    ieth->h_proto != bpf_htons(ETH_P_IP) || iip->daddr != TIP)
		return TC_ACT_OK;
	__u8 dst[6], src[6];
	__builtin_memcpy(dst, ieth->h_dest, 6);
	__builtin_memcpy(src, ieth->h_source, 6);
	// FIXED_GSO: gso_size is the inner MSS and stays. NO_CSUM_RESET + LEVEL_DEC: a checksum
	// the NIC verified for the inner packet stays verified, as in the kernel's own decap.
	if (bpf_skb_adjust_room(skb, -(int)STRIP, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET))
		return TC_ACT_OK;
	bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, dst, 6);
	__builtin_memcpy(eth->h_source, src, 6);
	return bpf_redirect_peer(PEER, 0);
}

char _license[] SEC("license") = "GPL";
