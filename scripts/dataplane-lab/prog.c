// Lab only: a BPF overlay data path (tc), compiled per device with -D constants.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#ifdef ENCAP
SEC("tc")
int encap(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	key.remote_ipv4 = REMOTE;
	key.tunnel_id = 4096;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(VXDEV, 0);
}
#else
SEC("tc")
int decap(struct __sk_buff *skb)
{
	return bpf_redirect_peer(PEER, 0);
}
#endif

char _license[] SEC("license") = "GPL";
