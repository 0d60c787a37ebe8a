// SPDX-License-Identifier: GPL-2.0
// VIP load balancing at connect() (node-agent/src/lb/socket.rs): attached to the cgroup that
// holds the node's task containers (cgroup/connect4). When a process of a task connects a
// TCP socket to a VIP that the task's namespace balances, the destination becomes one of the
// VIP's ready backends before the kernel routes anything, so the connection goes straight to
// the task and no packet of it is NATed. The namespace's nftables table (lb/mod.rs) stays
// complete and balances whatever this program leaves alone: UDP, a VIP with no ready
// backend (nftables refuses it), more backends than fit here, and sockets of processes
// outside the cgroup (the node, `ip netns exec`).
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

// The most backends one entry holds (a power of two); a VIP with more stays with nftables.
#define MAX_BACKENDS 64

// A VIP as one task namespace sees it: the namespace's cookie and the address (network
// order, as `user_ip4` has it).
struct vip_key {
	__u64 netns;
	__u32 vip;
	__u32 pad;
};

// Its ready backends, in order; `next` is the round-robin position (as nftables' `numgen
// inc`: two connections at the same instant may take the same turn, which only makes the
// spread a little less even).
struct vip_backends {
	__u32 next;
	__u32 count;
	__u32 backends[MAX_BACKENDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vip_key);
	__type(value, struct vip_backends);
} shoal_vips SEC(".maps");

SEC("cgroup/connect4")
int shoal_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	struct vip_key key = {
		.netns = bpf_get_netns_cookie(ctx),
		.vip = ctx->user_ip4,
	};
	struct vip_backends *v = bpf_map_lookup_elem(&shoal_vips, &key);
	if (!v)
		return 1;
	__u32 count = v->count;
	if (count == 0 || count > MAX_BACKENDS)
		return 1;
	__u32 turn = v->next;
	v->next = turn + 1;
	__u32 i = turn % count;
	// i < count <= MAX_BACKENDS, which the compiler knows and the verifier cannot follow
	// through a division: hide i from the compiler so that the mask stays, and bounds the
	// index for the verifier (it changes nothing).
	asm volatile("" : "+r"(i));
	i &= MAX_BACKENDS - 1;
	ctx->user_ip4 = v->backends[i];
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
