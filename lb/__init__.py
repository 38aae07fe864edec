"""threeway's control side: I/O backends, event loop, ARP/ICMP, services, config, lbd, lbctl."""
