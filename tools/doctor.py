"""Checks a Linux host for what it needs to be a dsr backend, from the host itself.

    python3 -m tools.doctor --vip 198.19.100.2 [--port 80] [--iface eth0] [--json]
    lb-lab doctor [--name P] b1 --vip 198.19.100.2 --port 80     (the same inside a lab backend)

A dsr balancer hands the client's packet over unchanged, addressed to the VIP, so the backend
1. holds the VIP on a local interface, normally lo (else the kernel drops the packet);
2. does not answer ARP for it (net.ipv4.conf.{all,IFACE}.arp_ignore >= 1) nor announce it as
   an ARP source (arp_announce = 2), or it steals the VIP from the balancer;
3. accepts packets to the VIP arriving on IFACE from clients it routes elsewhere
   (rp_filter 0 or 2 on all and IFACE: the kernel uses the larger of the two);
4. listens on the VIP's port (on the VIP or a wildcard address).
Exit 0 when every check passes, 1 otherwise; one line per check (or --json).
"""
import argparse
import ipaddress
import json
import subprocess
import sys


def sysctl(name):
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def local_networks():
    """[(interface, network)] of every IPv4 address on this host (ip -j addr)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    nets = []
    for link in json.loads(out):
        for a in link.get("addr_info", []):
            nets.append((link["ifname"], ipaddress.ip_network("%s/%s" % (a["local"], a["prefixlen"]),
                                                              strict=False)))
    return nets


def listening(port):
    """Local addresses with a TCP listener on `port` (ss -ltnH)."""
    out = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True,
                         timeout=10).stdout
    addrs = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            addrs.append(fields[3].rsplit(":", 1)[0].strip("[]"))
    return addrs


def default_iface():
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True,
                         text=True, timeout=10).stdout
    routes = json.loads(out or "[]")
    return routes[0].get("dev") if routes else None


def check(vip, port, iface):
    results = []

    def add(name, ok, detail):
        results.append({"check": name, "ok": bool(ok), "detail": detail})

    vip_ip = ipaddress.ip_address(vip)
    holders = [(i, n) for i, n in local_networks() if vip_ip in n]
    add("vip_local", holders, "VIP %s on %s" % (vip, ", ".join("%s (%s)" % (i, n) for i, n in holders))
        if holders else "VIP %s is on no local interface: add it to lo (ip addr add %s/32 dev lo)"
        % (vip, vip))
    if holders and all(i != "lo" for i, _ in holders):
        add("vip_on_lo", False, "VIP is on %s, not lo: the backend would answer ARP for it"
            % holders[0][0])
    for scope in ("all", iface):
        ig = sysctl("net.ipv4.conf.%s.arp_ignore" % scope)
        add("arp_ignore.%s" % scope, ig is not None and ig >= 1,
            "arp_ignore=%s (need >= 1: answer ARP only for addresses on the asked interface)" % ig)
    anns = [sysctl("net.ipv4.conf.%s.arp_announce" % s) for s in ("all", iface)]
    ann = max([x for x in anns if x is not None], default=None)
    add("arp_announce", ann == 2, "arp_announce=%s (need 2: never use the VIP as ARP source)" % ann)
    rp = [sysctl("net.ipv4.conf.%s.rp_filter" % s) for s in ("all", iface)]
    eff = max([r for r in rp if r is not None], default=None)
    add("rp_filter", eff in (0, 2), "rp_filter all=%s %s=%s, effective %s (need 0 or 2)"
        % (rp[0], iface, rp[1], eff))
    if port:
        addrs = listening(port)
        ok = any(a in ("*", "0.0.0.0", "::", vip) for a in addrs)
        add("listening", ok, "TCP :%d listeners: %s" % (port, ", ".join(addrs) or "none"))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="doctor", description="check a host for dsr backend duty")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int)
    p.add_argument("--iface", help="the interface the balancer's frames arrive on "
                                   "(default: that of the default route)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    try:
        ipaddress.IPv4Address(a.vip)
    except ValueError:
        p.error("--vip: not an IPv4 address: %r" % a.vip)
    iface = a.iface or default_iface() or "eth0"
    results = check(a.vip, a.port, iface)
    ok = all(r["ok"] for r in results)
    if a.json:
        print(json.dumps({"ok": ok, "iface": iface, "checks": results}))
    else:
        for r in results:
            print("%-4s %-22s %s" % ("ok" if r["ok"] else "FAIL", r["check"], r["detail"]))
        print("dsr backend: %s" % ("ready" if ok else "NOT ready"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
