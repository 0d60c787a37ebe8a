// Lab only: VXLAN encap at the tc ingress of task t1's veth (node 1's end). A packet for t2
// (address and MAC given with -D) gets outer VXLAN/UDP/IPv4 headers here and leaves by the
// underlay interface (bpf_redirect after a FIB lookup for the outer MACs): no bridge, no
// VXLAN device, no outer UDP/IP output. A next hop not yet resolved, or anything else,
// takes the kernel's path (TC_ACT_OK).
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
struct vxh { __u32 flags; __u32 vni; };
// What goes between the outer MAC header and the inner IP header.
#define ROOM (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct vxh) + sizeof(struct ethhdr))

SEC("tc")
int uencap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iip = (void *)(eth + 1);
	if ((void *)(iip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || iip->daddr != TIP ||
	    skb->len > 0xffff - ROOM)
		return TC_ACT_OK;
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.ipv4_src = LOCAL,
		.ipv4_dst = REMOTE,
		.ifindex = UIF,
	};
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_OUTPUT) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	__u8 tsrc[6];
	__builtin_memcpy(tsrc, eth->h_source, 6);
	__u32 hash = bpf_get_hash_recalc(skb);
	if (bpf_skb_adjust_room(skb, ROOM, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
				BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr)) |
				BPF_F_ADJ_ROOM_FIXED_GSO))
		return TC_ACT_OK;
	struct {
		struct ethhdr eth;
		struct iphdr ip;
		struct udphdr udp;
		struct vxh vx;
		struct ethhdr ieth;
	} __attribute__((packed)) h = {};
	__u32 len = skb->len - sizeof(struct ethhdr);
	__builtin_memcpy(h.eth.h_dest, fib.dmac, 6);
	__builtin_memcpy(h.eth.h_source, fib.smac, 6);
	h.eth.h_proto = bpf_htons(ETH_P_IP);
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.tot_len = bpf_htons(len);
	h.ip.saddr = LOCAL;
	h.ip.daddr = REMOTE;
	__s64 cs = bpf_csum_diff(0, 0, (void *)&h.ip, sizeof(h.ip), 0);
	cs = (cs & 0xffff) + (cs >> 16);
	cs = (cs & 0xffff) + (cs >> 16);
	h.ip.check = ~cs;
	// The source port spreads flows as the kernel's VXLAN does (udp_flow_src_port's range).
	h.udp.source = bpf_htons(49152 + (hash % 16384));
	h.udp.dest = bpf_htons(4789);
	h.udp.len = bpf_htons(len - sizeof(struct iphdr));
	h.vx.flags = bpf_htonl(0x08000000);
	h.vx.vni = bpf_htonl(VNI << 8);
	__builtin_memcpy(h.ieth.h_dest, TMAC, 6);
	__builtin_memcpy(h.ieth.h_source, tsrc, 6);
	h.ieth.h_proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, 0);
}

char _license[] SEC("license") = "GPL";
