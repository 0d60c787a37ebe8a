// SPDX-License-Identifier: GPL-2.0
// The overlay's receive fast path (node-agent/src/net/fastpath.rs): attached at the tc
// ingress of the node's underlay interface. A VXLAN packet from a known node for a task on
// this node loses its outer Ethernet/IPv4/UDP/VXLAN headers here and goes straight into the
// task's namespace (bpf_redirect_peer on the task veth's node end), skipping the outer
// IP/UDP receive, the VXLAN device and the overlay bridge. Everything else goes on
// unchanged (PASS: TC_ACT_UNSPEC, so that tc programs and filters after this one still see
// it) to the kernel's path, which stays complete: a packet this program passes on is
// handled exactly as without it (VXLAN from a sender that is not a node, to `shoal_node`'s
// drop and its counter). So is anything the kernel's VXLAN receive would treat specially:
// a nonzero reserved VNI byte, a bad outer IPv4 header checksum, and a congestion mark (CE)
// on the outer header of a packet that is not ECN-capable inside (the kernel drops it). A
// CE mark over an ECN-capable packet is copied to the inner header here, as the kernel's
// decap does (RFC 6040), so that every packet of a flow takes this path: one left to the
// kernel's would queue behind the VXLAN device's GRO cell and could be overtaken. The outer
// UDP checksum is not verified here (a GSO aggregate's cannot be): the inner packet's own
// checksums still are, by the task's stack, unless the NIC verified them.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define VXLAN_PORT 4789
#define VXLAN_FLAG_VNI 0x08000000
#define PASS TC_ACT_UNSPEC
#define ECN_MASK 3
#define ECN_CE 3

struct vxlanhdr {
	__be32 flags;
	__be32 vni;
};

// A local task on an overlay: its VNI and its address (network order, as in the packet).
struct task_key {
	__u32 vni;
	__be32 addr;
};

// Local tasks -> the ifindex of their veth's node end.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct task_key);
	__type(value, __u32);
} shoal_tasks SEC(".maps");

// The nodes' underlay addresses (the `vxlan_peers` set of `shoal_node`).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __be32);
	__type(value, __u8);
} shoal_peers SEC(".maps");

// [0]: this node's underlay address.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __be32);
} shoal_local SEC(".maps");

// Outer IPv4 + UDP + VXLAN + the inner Ethernet header: what goes, after the outer MAC header.
#define STRIP (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct vxlanhdr) + sizeof(struct ethhdr))

SEC("classifier")
int shoal_decap(struct __sk_buff *skb)
{
	// The headers this looks at, in the linear part (a driver may leave them outside it).
	const __u32 need = sizeof(struct ethhdr) + STRIP + sizeof(struct iphdr);
	if ((void *)(long)skb->data + need > (void *)(long)skb->data_end &&
	    bpf_skb_pull_data(skb, need))
		return PASS;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	struct vxlanhdr *vx = (void *)(udp + 1);
	struct ethhdr *ieth = (void *)(vx + 1);
	struct iphdr *iip = (void *)(ieth + 1);
	if ((void *)(iip + 1) > end)
		return PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)) ||
	    udp->dest != bpf_htons(VXLAN_PORT) ||
	    vx->flags != bpf_htonl(VXLAN_FLAG_VNI) || (vx->vni & bpf_htonl(0xff)) ||
	    ieth->h_proto != bpf_htons(ETH_P_IP))
		return PASS;
	__u32 zero = 0;
	__be32 *local = bpf_map_lookup_elem(&shoal_local, &zero);
	if (!local || ip->daddr != *local || !bpf_map_lookup_elem(&shoal_peers, &ip->saddr))
		return PASS;
	struct task_key key = { .vni = bpf_ntohl(vx->vni) >> 8, .addr = iip->daddr };
	__u32 *ifindex = bpf_map_lookup_elem(&shoal_tasks, &key);
	if (!ifindex)
		return PASS;
	// The task's MAC is derived from its address (names::mac_for_ip): 02:42 and the address.
	__u8 *d = ieth->h_dest, *a = (__u8 *)&iip->daddr;
	if (d[0] != 0x02 || d[1] != 0x42 || d[2] != a[0] || d[3] != a[1] || d[4] != a[2] || d[5] != a[3])
		return PASS;
	// The outer IPv4 header's checksum, as ip_rcv checks it: the sum folds to 0xffff.
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0);
	if (sum < 0)
		return PASS;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	if (sum != 0xffff)
		return PASS;
	// Congestion experienced on the way: an ECN-capable inner packet carries the mark on.
	__u8 ce = (ip->tos & ECN_MASK) == ECN_CE && (iip->tos & ECN_MASK) != ECN_CE;
	if (ce && !(iip->tos & ECN_MASK))
		return PASS;
	__u16 first = *(__u16 *)iip; // version, IHL and TOS, as they are in the packet
	__u8 dst[ETH_ALEN], src[ETH_ALEN];
	__builtin_memcpy(dst, ieth->h_dest, ETH_ALEN);
	__builtin_memcpy(src, ieth->h_source, ETH_ALEN);
	__u32 target = *ifindex;
	if (ce) {
		// TOS and the header checksum by offset (the helpers invalidate the pointers). The
		// packet's own sum is unchanged (the two changes cancel), so skb->csum stays.
		const __u32 at = sizeof(struct ethhdr) + STRIP;
		__u8 tos = ((__u8 *)&first)[1] | ECN_CE;
		__u16 marked = first;
		((__u8 *)&marked)[1] = tos;
		if (bpf_skb_store_bytes(skb, at + offsetof(struct iphdr, tos), &tos, 1, 0))
			return PASS;
		// The TOS changed and its checksum could not: a packet the task would drop anyway.
		if (bpf_l3_csum_replace(skb, at + offsetof(struct iphdr, check), first, marked, 2))
			return TC_ACT_SHOT;
	}
	// FIXED_GSO: an aggregate's gso_size is the inner MSS and stays. NO_CSUM_RESET and the
	// level decrement: a checksum the NIC verified for the inner packet stays verified, as
	// in the kernel's own decap.
	if (bpf_skb_adjust_room(skb, -(int)STRIP, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET))
		return PASS;
	bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return bpf_redirect_peer(target, 0);
}

char _license[] SEC("license") = "GPL";
