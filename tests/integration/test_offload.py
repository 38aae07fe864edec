"""All three modes with offloads on: lbd's TAP or AF_PACKET socket speaks virtio-net headers,
so GSO superframes (up to 64 KiB, partial checksums) cross lbd whole, and the kernel segments
on the way out.

   c1 -- rt -- brs -+- lbtap (IFF_VNET_HDR, TSO/CSUM offload) -- lbd -- b1, b2, b3
                    +- lbdp == dp0 (PACKET_VNET_HDR, the veth's default offloads) -- lbd

A partial checksum that crosses veths stays partial up to the receiving socket, which trusts
it: a wrong pseudo-header sum from lbd would go unnoticed. So the switch ports towards the
backends and the router (b1, b2, b3, rts in P-sw) have tx checksumming off: the kernel
completes every checksum there, the receivers verify them, and the test reads their
InCsumErrors. lbd's own interfaces keep their offloads (superframes both ways).
"""
import pytest

from bench.e2e import parse_snmp

from .test_nat import BACKENDS, counters, lbctl, traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MODES = {"nat": "198.19.100.1", "dsr": "198.19.100.2", "splice": "198.19.100.3"}


@pytest.mark.parametrize("io", ["tap", "afpacket"])
@pytest.mark.parametrize("mode", list(MODES))
def test_blob_and_echo_through_each_mode_with_offloads(make_lab, mode, io):
    lab = make_lab(io=io, offload=True)
    for port in ("b1", "b2", "b3", "rts"):
        lab.exec("sw", ["ethtool", "-K", port, "tx", "off"])
    vip = MODES[mode]
    for port in (80, 9000):
        lbctl(lab, "vip", "add", "%s:%d" % (vip, port), "--mode", mode)
        for b in BACKENDS:
            lbctl(lab, "backend", "add", "%s:%d" % (vip, port), b)
    status = lbctl(lab, "status")["io"]
    assert status["backend"] == io and status["offload"] is True
    for _ in range(2):
        sha = lab.exec("c1", ["sh", "-c", "curl -sf --max-time 60 http://%s/blob | sha256sum" % vip],
                       timeout=90).stdout.split()[0]
        assert sha == lab.topology["blob"]["sha256"]
    r = traffic(lab, "c1", "echo", vip, "9000", "--bytes", str(32 << 20), "--seed", "5")
    assert r["identical"], r
    io_c = lbctl(lab, "stats")["io"]
    # superframes: far more bytes per frame than a 1514-byte MTU allows
    assert io_c["rx_bytes"] / max(1, io_c["rx_frames"]) > 1514
    if io == "afpacket":
        # the vnet headers themselves said GSO (gso_type TCPV4) and partial checksums
        assert io_c["rx_gso"] > 0 and io_c["rx_needs_csum"] > 0, io_c
    snmp = {n: parse_snmp(lab.exec(n, ["cat", "/proc/net/snmp"]).stdout)
            for n in ["c1"] + lab.topology["backends"]}
    assert {n: s["Tcp.InCsumErrors"] for n, s in snmp.items()} == dict.fromkeys(snmp, 0)
    assert snmp["c1"]["Tcp.InSegs"] > 0
    c = counters(lab)
    assert c[{"nat": "nat_fwd", "dsr": "dsr_fwd", "splice": "splice_fwd"}[mode]] > 0


@pytest.mark.parametrize("io", ["tap", "afpacket"])
def test_tunnel_uploads_with_offloads(make_lab, io):
    """The client's superframes for a tunnel VIP: on a TAP that takes the long vnet header
    they leave lbd whole, marked UDP-tunnel GSO, and the kernel cuts them (tunnel_gso_fwd);
    on AF_PACKET (the plain header) lbd cuts them itself (the Segmenter). Either way the
    32 MiB come back identical and every checksum the remote backends verify is right (the
    switch ports towards them compute checksums in software, as in the test above)."""
    lab = make_lab(io=io, offload=True, backends=1, remote_backends=2)
    remotes = lab.topology["remote_backends"]
    for port in remotes + ["rtr", "rts"]:
        lab.exec("sw", ["ethtool", "-K", port, "tx", "off"])
    vip = "198.19.100.7"
    for port in (80, 9000):
        lbctl(lab, "vip", "add", "%s:%d" % (vip, port), "--mode", "tunnel")
        for r in remotes:
            lbctl(lab, "backend", "add", "%s:%d" % (vip, port), lab.topology["nodes"][r]["address"])
    status = lbctl(lab, "status")["io"]
    assert status["offload"] is True
    assert status["vnet_hdr"] == (24 if io == "tap" else 10), status
    r = traffic(lab, "c1", "echo", vip, "9000", "--bytes", str(32 << 20), "--seed", "7")
    assert r["identical"], r
    c = counters(lab)
    snmp = {n: parse_snmp(lab.exec(n, ["cat", "/proc/net/snmp"]).stdout) for n in remotes}
    assert {n: s["Tcp.InCsumErrors"] for n, s in snmp.items()} == dict.fromkeys(remotes, 0)
    if io == "tap":
        assert c["tunnel_gso_fwd"] > 0 and c.get("punt_tunnel_gso", 0) == 0, c
    else:
        assert c.get("tunnel_gso_fwd", 0) == 0 and c["punt_tunnel_gso"] > 0, c
