/* bench/tap_floor.py's "kernel" path: the floor forwarder's rewrite done in the kernel, a tc
   ingress program that sends a frame to VIP back out of the device it came in on with the
   backend's MAC as destination and FWD_MAC as source. VIP (network order, as a u32 read
   from the packet), BACKEND_MAC and FWD_MAC (6 comma-separated bytes) come as -D defines. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

SEC("tc")
int kfwd(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->daddr != VIP)
        return TC_ACT_OK;
    const unsigned char be[ETH_ALEN] = {BACKEND_MAC}, me[ETH_ALEN] = {FWD_MAC};
    __builtin_memcpy(eth->h_dest, be, ETH_ALEN);
    __builtin_memcpy(eth->h_source, me, ETH_ALEN);
    return bpf_redirect(skb->ifindex, 0);
}

char _license[] SEC("license") = "GPL";
