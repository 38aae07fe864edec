"""All three modes with offloads on: lbd's TAP speaks virtio-net headers, so GSO superframes
(up to 64 KiB, partial checksums) cross lbd whole, and the kernel segments on the way out.

   c1 -- rt -- brs -+- lbtap (IFF_VNET_HDR, TSO/CSUM offload) -- lbd -- b1, b2, b3
"""
import pytest

from .test_nat import BACKENDS, counters, lbctl, traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MODES = {"nat": "198.19.100.1", "dsr": "198.19.100.2", "splice": "198.19.100.3"}


@pytest.mark.parametrize("mode", list(MODES))
def test_blob_and_echo_through_each_mode_with_offloads(make_lab, mode):
    lab = make_lab(offload=True)
    vip = MODES[mode]
    for port in (80, 9000):
        lbctl(lab, "vip", "add", "%s:%d" % (vip, port), "--mode", mode)
        for b in BACKENDS:
            lbctl(lab, "backend", "add", "%s:%d" % (vip, port), b)
    assert lbctl(lab, "status")["io"]["offload"] is True
    for _ in range(2):
        sha = lab.exec("c1", ["sh", "-c", "curl -sf --max-time 60 http://%s/blob | sha256sum" % vip],
                       timeout=90).stdout.split()[0]
        assert sha == lab.topology["blob"]["sha256"]
    r = traffic(lab, "c1", "echo", vip, "9000", "--bytes", str(32 << 20), "--seed", "5")
    assert r["identical"], r
    io = lbctl(lab, "stats")["io"]
    # superframes: far more bytes per frame than a 1514-byte MTU allows
    assert io["rx_bytes"] / max(1, io["rx_frames"]) > 1514
    c = counters(lab)
    assert c[{"nat": "nat_fwd", "dsr": "dsr_fwd", "splice": "splice_fwd"}[mode]] > 0
