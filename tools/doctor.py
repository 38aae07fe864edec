"""Checks a Linux host for what it needs to be a dsr, tunnel or hop backend, from the host itself.

    python3 -m tools.doctor --vip 198.19.100.2 [--port 80] [--iface eth0] [--json]
    python3 -m tools.doctor --mode tunnel --vip 198.19.100.2 [--port 80] [--device D] [--json]
    lb-lab doctor [--name P] b1 --vip 198.19.100.2 --port 80     (the same inside a lab backend)

A dsr balancer hands the client's packet over unchanged, addressed to the VIP, so the backend
1. holds the VIP on a local interface, normally lo (else the kernel drops the packet);
2. does not answer ARP for it (net.ipv4.conf.{all,IFACE}.arp_ignore >= 1) nor announce it as
   an ARP source (arp_announce = 2), or it steals the VIP from the balancer;
3. accepts packets to the VIP arriving on IFACE from clients it routes elsewhere
   (rp_filter 0 or 2 on all and IFACE: the kernel uses the larger of the two);
4. listens on the VIP's port (on the VIP or a wildcard address).

A tunnel balancer sends the client's frame inside VXLAN (UDP to VXLAN_PORT, VNI VXLAN_VNI) to
the backend's own address, the inner frame addressed to VXLAN_INNER_MAC; so the backend
1. has a VXLAN device with that VNI and UDP port (Linux's default port, when `ip link add`
   gets no dstport, is 8472, which the balancer does not use), which is up
2. and carries the inner MAC (else the decapsulated frame is for another host and dropped);
3. accepts the inner packet, which arrives on the VXLAN device from a client it routes
   elsewhere (rp_filter 0 or 2 on all and the device; lo is shown too);
4. holds the VIP on lo and 5. listens on the VIP's port, as for dsr.
It needs no ARP settings: nobody on its layer 2 asks for the VIP.

A hop balancer delivers as dsr does, so a hop backend needs the dsr checks, and hop's shim
(modes/hop/hop_shim.o) attached on the interface both ways, tc ingress and egress (--mode hop);
or, behind an egress gateway (--shim-port NS:IFACE), on the gateway's port that faces it, the
hooks swapped (modes/hop/shim.py HOOKS["port"]).

Exit 0 when every check passes, 1 otherwise; one line per check (or --json). The dsr checks
and their output do not depend on --mode tunnel existing.
"""
import argparse
import ipaddress
import json
import subprocess
import sys

# one home for the tunnel's constants; doctor must agree with the lab and the balancer
from modes.hop import shim as hop_shim
from tools.lab import VXLAN_DEV, VXLAN_INNER_MAC, VXLAN_PORT, VXLAN_VNI


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


def iface_address(iface):
    """The first IPv4 address on `iface` (for the hints), or None."""
    if not iface:
        return None
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", iface], capture_output=True,
                         text=True, timeout=10).stdout
    return next((a["local"] for link in json.loads(out or "[]")
                 for a in link.get("addr_info", [])), None)


def default_iface():
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True,
                         text=True, timeout=10).stdout
    routes = json.loads(out or "[]")
    return routes[0].get("dev") if routes else None


def vxlan_links():
    """Every VXLAN device on this host, as `ip -d -j link show type vxlan` gives it."""
    out = subprocess.run(["ip", "-d", "-j", "link", "show", "type", "vxlan"], capture_output=True,
                         text=True, timeout=10).stdout
    return json.loads(out or "[]")


def _vip_checks(add, vip):
    vip_ip = ipaddress.ip_address(vip)
    holders = [(i, n) for i, n in local_networks() if vip_ip in n]
    add("vip_local", holders, "VIP %s on %s" % (vip, ", ".join("%s (%s)" % (i, n) for i, n in holders))
        if holders else "VIP %s is on no local interface: add it to lo (ip addr add %s/32 dev lo)"
        % (vip, vip))
    if holders and all(i != "lo" for i, _ in holders):
        add("vip_on_lo", False, "VIP is on %s, not lo: the backend would answer ARP for it"
            % holders[0][0])


def _listen_check(add, vip, port):
    addrs = listening(port)
    ok = any(a in ("*", "0.0.0.0", "::", vip) for a in addrs)
    add("listening", ok, "TCP :%d listeners: %s" % (port, ", ".join(addrs) or "none"))


def check(vip, port, iface):
    results = []

    def add(name, ok, detail):
        results.append({"check": name, "ok": bool(ok), "detail": detail})

    _vip_checks(add, vip)
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
        _listen_check(add, vip, port)
    return results


def check_hop(vip, port, iface, shim_port=None):
    """The hop backend's checks: the dsr ones (the backend holds the VIP and answers the
    client directly), and hop's shim attached on iface both ways (without it the backend's
    SYN-ACK of a hopped connection goes to the client, which never asked it for one); with
    shim_port ("NS:IFACE"), on that gateway port facing the backend instead."""
    results = check(vip, port, iface)
    ns, where, facing = None, iface, "host"
    if shim_port:
        ns, where = shim_port.split(":", 1)
        facing = "port"
    got = hop_shim.installed(ns, where, facing)
    missing = [k for k, v in got.items() if not v]
    place = "%s of %s" % (where, ns) if ns else where
    results.append({"check": "hop_shim", "ok": not missing,
                    "detail": ("hop_ingress and hop_egress attached on %s" % place)
                    if not missing else
                    "%s not attached on %s (tc filter show dev %s ingress|egress): install "
                    "the shim (modes/hop/shim.py install or attach, as lb-lab up does)"
                    % (" and ".join(missing), place, where)})
    return results


def _vxlan_info(link):
    info = (link.get("linkinfo") or {}).get("info_data") or {}
    return info.get("id"), info.get("port")


def find_vxlan(links, vni, device=None):
    """The VXLAN device to check: `device` if named, else the one with our VNI and port, else
    the one with our VNI (on a wrong port), else None."""
    if device:
        return next((link for link in links if link["ifname"] == device), None)
    for want in ((vni, VXLAN_PORT), (vni, None)):
        for link in links:
            got = _vxlan_info(link)
            if got[0] == want[0] and (want[1] is None or got[1] == want[1]):
                return link
    return None


def check_tunnel(vip, port, vni=VXLAN_VNI, inner_mac=VXLAN_INNER_MAC, device=None):
    """The tunnel backend's checks; returns (device name or None, [result])."""
    results = []

    def add(name, ok, detail):
        results.append({"check": name, "ok": bool(ok), "detail": detail})

    links = vxlan_links()
    link = find_vxlan(links, vni, device)
    dev = link["ifname"] if link else (device or VXLAN_DEV)
    local = iface_address(default_iface())
    create = ("ip link add %s type vxlan id %d dstport %d local %s nolearning; "
              "ip link set %s address %s up"
              % (dev, vni, VXLAN_PORT, local or "<this host's address>", dev, inner_mac))
    if link is None:
        found = ", ".join("%s (VNI %s, port %s)" % ((x["ifname"],) + _vxlan_info(x))
                          for x in links)
        add("vxlan_device", False, "no VXLAN device %s%s: add one: %s"
            % (device if device else "with VNI %d" % vni,
               " (found %s)" % found if found else "", create))
    else:
        got_vni, got_port = _vxlan_info(link)
        if got_vni != vni or got_port != VXLAN_PORT:
            why = []
            if got_vni != vni:
                why.append("VNI %s, not %d" % (got_vni, vni))
            if got_port != VXLAN_PORT:
                why.append("UDP port %s, not %d%s" % (got_port, VXLAN_PORT,
                                                      " (8472 is Linux's default when ip link "
                                                      "add has no dstport)" if got_port == 8472
                                                      else ""))
            add("vxlan_device", False, "%s has %s: recreate it: ip link del %s; %s"
                % (dev, " and ".join(why), dev, create))
        else:
            add("vxlan_device", True, "%s: VNI %d, UDP port %d" % (dev, vni, VXLAN_PORT))
        up = "UP" in link.get("flags", [])
        add("vxlan_up", up, "%s is up" % dev if up
            else "%s is down: ip link set %s up" % (dev, dev))
        mac = (link.get("address") or "").lower()
        add("vxlan_mac", mac == inner_mac.lower(),
            "%s carries the inner MAC %s" % (dev, mac) if mac == inner_mac.lower()
            else "%s has MAC %s, but the balancer's inner frames go to %s and would be dropped "
                 "as another host's: ip link set %s address %s" % (dev, mac, inner_mac, dev,
                                                                   inner_mac))
    scopes = ["all"] + ([dev] if link else []) + ["lo"]
    rp = {s: sysctl("net.ipv4.conf.%s.rp_filter" % s) for s in scopes}
    # the kernel uses the larger of all and the receiving interface
    eff = {s: max([r for r in (rp["all"], rp[s]) if r is not None], default=None)
           for s in scopes[1:]}
    bad = [s for s in scopes[1:] if eff[s] not in (0, 2)]
    detail = "rp_filter %s, effective %s (need 0 or 2)" % (
        " ".join("%s=%s" % kv for kv in rp.items()),
        " ".join("%s=%s" % kv for kv in eff.items()))
    if bad:
        detail += (": the inner packet comes from a client routed elsewhere: sysctl -w %s"
                   % " ".join("net.ipv4.conf.%s.rp_filter=0" % s for s in ["all"] + bad))
    add("rp_filter", not bad, detail)
    _vip_checks(add, vip)
    if port:
        _listen_check(add, vip, port)
    return (link["ifname"] if link else None), results


def main(argv=None):
    p = argparse.ArgumentParser(prog="doctor",
                                description="check a host for dsr or tunnel backend duty")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int)
    p.add_argument("--mode", choices=("dsr", "tunnel", "hop"), default="dsr")
    p.add_argument("--iface", help="dsr: the interface the balancer's frames arrive on "
                                   "(default: that of the default route)")
    p.add_argument("--device", help="tunnel: the VXLAN device (default: the one with the VNI)")
    p.add_argument("--vni", type=int, default=VXLAN_VNI,
                   help="tunnel: the VNI (default %(default)s)")
    p.add_argument("--inner-mac", default=VXLAN_INNER_MAC,
                   help="tunnel: the inner frames' destination MAC (default %(default)s)")
    p.add_argument("--shim-port", metavar="NS:IFACE",
                   help="hop: the shim is on this gateway (switch) port facing the backend, "
                   "in namespace NS, not on the backend (lb-lab up --egress-gateway)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.shim_port is not None and (a.mode != "hop" or ":" not in a.shim_port
                                    or not all(a.shim_port.split(":", 1))):
        p.error("--shim-port NS:IFACE, with --mode hop only: got %r" % a.shim_port)
    try:
        ipaddress.IPv4Address(a.vip)
    except ValueError:
        p.error("--vip: not an IPv4 address: %r" % a.vip)
    if a.mode == "tunnel":
        return main_tunnel(a)
    iface = a.iface or default_iface() or "eth0"
    results = (check_hop(a.vip, a.port, iface, a.shim_port) if a.mode == "hop"
               else check(a.vip, a.port, iface))
    ok = all(r["ok"] for r in results)
    if a.json:
        print(json.dumps(dict({"ok": ok, "iface": iface, "checks": results},
                              **({"mode": "hop"} if a.mode == "hop" else {}))))
    else:
        for r in results:
            print("%-4s %-22s %s" % ("ok" if r["ok"] else "FAIL", r["check"], r["detail"]))
        print("%s backend: %s" % (a.mode, "ready" if ok else "NOT ready"))
    return 0 if ok else 1


def main_tunnel(a):
    dev, results = check_tunnel(a.vip, a.port, vni=a.vni, inner_mac=a.inner_mac,
                                device=a.device)
    ok = all(r["ok"] for r in results)
    if a.json:
        print(json.dumps({"ok": ok, "mode": "tunnel", "device": dev, "vni": a.vni,
                          "port": VXLAN_PORT, "inner_mac": a.inner_mac, "checks": results}))
    else:
        for r in results:
            print("%-4s %-22s %s" % ("ok" if r["ok"] else "FAIL", r["check"], r["detail"]))
        print("tunnel backend: %s" % ("ready" if ok else "NOT ready"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
