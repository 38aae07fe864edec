#!/usr/bin/env bash
# threeway's two entry points (README.md): `tools/run.sh demo` and `tools/run.sh test`.
# Both install what they need (Debian packages with apt-get, Python packages with pip), build
# the compiled fast path (a failed build stops here), then run. As root.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="iproute2 nftables ethtool procps nginx-light iperf3 curl wrk haproxy tcpdump dnsmasq-base bind9-dnsutils apache2-utils ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good clang llvm libbpf-dev bpftool bird2 exabgp etcd-server etcd-client"

install() {
    if [ "$(id -u)" != 0 ]; then echo "threeway: run as root (namespaces, TAP devices)" >&2; exit 1; fi
    local missing=""
    for p in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "== apt-get install$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    # nginx-light's package starts a system nginx; the lab runs its own, so stop that one
    if command -v systemctl >/dev/null && systemctl is-active -q nginx 2>/dev/null; then
        systemctl stop nginx || true
    fi
    # so does etcd-server's (on localhost); the lab starts its own in a namespace (tools/etcd.py)
    if command -v systemctl >/dev/null && systemctl is-active -q etcd 2>/dev/null; then
        systemctl stop etcd || true
    fi
    echo "== pip install -r requirements.txt"
    python3 -m pip install -q --disable-pip-version-check -r requirements.txt
    echo "== build (setup.py build_ext --inplace; commands lbd, lbctl, lb-lab)"
    python3 setup.py -q build_ext --inplace
    python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
}

case "${1:-}" in
    demo)
        shift
        install
        exec python3 -m tools.demo "$@"
        ;;
    test)
        shift
        install
        rc=0
        echo "== the suite (compiled fast path; fast-path and unit tests run on both twins)"
        python3 -m pytest -q -p no:cacheprovider "$@" || rc=$?
        if [ "$rc" = 0 ]; then
            echo "== fast-path and unit tests again with THREEWAY_PUREPYTHON=1 (the twin loaded)"
            THREEWAY_PUREPYTHON=1 python3 -m pytest -q -p no:cacheprovider tests/fastpath tests/unit || rc=$?
        fi
        if [ "$rc" = 5 ]; then echo "threeway: pytest ran no tests" >&2; exit 1; fi
        exit "$rc"
        ;;
    install)
        install
        ;;
    *)
        echo "usage: tools/run.sh demo [--io tap|afpacket] | test [pytest args] | install" >&2
        exit 2
        ;;
esac
