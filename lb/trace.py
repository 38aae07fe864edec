"""`lbctl trace SRC:PORT DST:PORT`: what lbd does with one 5-tuple, now (Katran's simulator
and nfqlb's trace-flow in one).

The answer, for a frame SRC:PORT -> DST:PORT/proto:
- direction: client -> VIP (DST is a VIP), backend -> client (SRC is a backend of some VIP),
  the balancer's own address, or neither;
- the VIP and its mode, scheduler, backends (weight, health), and the mode's own view (e.g.
  content rules);
- the flow entry if there is one, found by a keyed lookup in the engine (Engine.flow_get: the
  forward index, then the reverse one; with workers, on the worker that holds it): backend,
  mode pinned, state, age, idle, counters both ways, the mode's translation state, flags;
- where a new flow would go and why (Engine.explain: the same table and hash as the fast
  path, nothing moved): scheduler, the table slot (hash -> slot -> backend), that backend's
  weight and health; for a mode with content rules, that the request decides.
- what the fast path does with the frame, in words.

Invariants:
- Read-only: no cursor moves, no flow is made (explain, not pick).
- Only public surfaces: LBState's vip.list view, the engine's flow_get/explain; lb/ names no
  mode (a mode's traits come through modes.get()).
"""
from fastpath import defs

import modes

from . import config
from .config import format_endpoint
from .errors import LBError

MODE_NAMES = {code: name for name, code in defs.MODES.items()}
SCHED_NAMES = {defs.SCHED_SEQ: "sequence (rr/wrr cursor)", defs.SCHED_HASH5: "5-tuple hash",
               defs.SCHED_HASHSRC: "source hash", defs.SCHED_LEASTCONN: "least connections"}
FLAG_WORDS = ((defs.F_FIN_C, "fin from client"), (defs.F_FIN_S, "fin from server"),
              (defs.F_REV, "in reverse index"), (defs.F_SEEN, "seen by python"),
              (defs.F_INLINE, "replay inline"), (defs.F_RP_FIN, "replay ends with fin"))
SOPT_WORDS = ((defs.SOPT_TS, "timestamps"), (defs.SOPT_SACK, "sack"))


def flag_words(flags, table=FLAG_WORDS):
    return [w for bit, w in table if flags & bit]


def state_name(state):
    return defs.STATE_NAMES[state] if 0 <= state < len(defs.STATE_NAMES) else str(state)


def trace(state, engine, lb_ip, args, now_ms):
    """The `trace` control command: args {src: "IP:PORT", dst: "IP:PORT", proto?}."""
    for k in args:
        if k not in ("src", "dst", "proto"):
            raise LBError(k, "unknown argument (trace takes: src, dst, proto)")
    if args.get("src") is None:
        raise LBError("src", "missing")
    if args.get("dst") is None:
        raise LBError("dst", "missing")
    src, sport = config.parse_endpoint(args["src"], "src")
    dst, dport = config.parse_endpoint(args["dst"], "dst")
    proto_name = config.check_proto(args.get("proto") or "tcp")
    proto = config.PROTOS[proto_name]
    vips = state.handle("vip.list", {})
    by_key = {(v["vip"], v["proto"]): v for v in vips}
    real_names = {b["real"]: b["backend"] for v in vips for b in v["backends"]
                  if b["real"] is not None}
    out = {"tuple": {"src": format_endpoint(src, sport), "dst": format_endpoint(dst, dport),
                     "proto": proto_name}}
    vip = by_key.get((format_endpoint(dst, dport), proto_name))
    flow = engine.flow_get(src, sport, dst, dport, proto)
    out["flow"] = flow_view(flow, real_names, now_ms) if flow else None
    if dst == lb_ip:
        out["direction"] = "to the balancer"
        out["vip"] = None
        out["verdict"] = ("the balancer's own address: handed to lbd (punt_local): ARP and "
                          "ICMP echo are answered, the rest dropped")
        return out
    if vip is not None:
        out["direction"] = "client -> vip"
        out["vip"] = vip_view(vip)
        out["new_flow"] = new_flow(engine, vip, src, sport, dst, dport, proto, real_names)
        out["verdict"] = forward_verdict(out["flow"], out["new_flow"], proto)
        return out
    out["vip"] = None
    backs = [(v, b) for v in vips for b in v["backends"]
             if b["backend"] == format_endpoint(src, sport) and v["proto"] == proto_name]
    if flow is not None and flow["key"] == "rev":
        out["direction"] = "backend -> client"
        f = out["flow"]
        out["verdict"] = ("a reply on the flow of %s via %s (%s, %s): rewritten from the VIP "
                          "to the client" % (f["client"], f["vip"], f["mode"], f["state"]))
        return out
    if backs:
        out["direction"] = "backend -> client"
        out["rebuild"] = rebuild_candidates(engine, vips, src, sport, dst, dport, proto,
                                            proto_name)
        if out["rebuild"]:
            out["verdict"] = ("no flow: a backend's packet re-creates the lost flow on %s if "
                              "its mode rebuilds flows from the backend side (counter "
                              "flow_recreated_rev), else dropped (drop_unknown_dest); a SYN "
                              "or RST never does" % out["rebuild"][0]["vip"])
        else:
            out["verdict"] = ("no flow, and no consistent-hash VIP gives this client to this "
                              "backend: dropped (drop_unknown_dest)")
        out["backend_of"] = [v["vip"] + "/" + v["proto"] for v, _ in backs]
        return out
    out["direction"] = "none"
    if flow is not None:      # (the forward key of a flow whose VIP is gone)
        out["verdict"] = ("no VIP %s/%s any more: the frame finds no service and its flow is "
                          "not looked up (drop_unknown_dest); the flow expires when idle"
                          % (format_endpoint(dst, dport), proto_name))
    else:
        out["verdict"] = ("no VIP %s/%s and no flow from a backend: dropped "
                          "(drop_unknown_dest)" % (format_endpoint(dst, dport), proto_name))
    return out


def vip_view(v):
    keep = ("vip", "proto", "mode", "scheduler", "maglev_size", "on_backend_down")
    out = {k: v.get(k) for k in keep}
    out["backends"] = [{"backend": b["backend"], "weight": b["weight"], "pool": b["pool"],
                        "health": (b["health"] or {}).get("state", "unchecked")}
                       for b in v["backends"]]
    mode = modes.get(v["mode"])
    if mode.rules:
        out["rules"] = [r.get("text", r) for r in v.get("rules", [])]
    return out


def new_flow(engine, v, cip, cport, vip, vport, proto, real_names):
    """Where a new flow would go (Engine.explain), with the chosen backend's weight/health."""
    x = engine.explain(cip, cport, vip, vport, proto)
    if x is None:
        return None
    out = {"scheduler": v["scheduler"], "kind": SCHED_NAMES.get(x["sched"], str(x["sched"])),
           "table_size": x["table_size"]}
    if "worker" in x:
        out["worker"] = x["worker"]
    if x["table_size"] == 0:
        out["backend"] = None
        out["why"] = "the table is empty (no backend with weight > 0 that is up): drop_no_backend"
        return out
    out["slot"] = x["slot"]
    name = real_names.get(x["real"], "real#%d" % x["real"])
    out["backend"] = name
    if x["sched"] == defs.SCHED_HASH5:
        out["hash"] = "%#018x" % x["hash"]
        out["why"] = "hash %#x %% %d = slot %d -> %s" % (x["hash"], x["table_size"], x["slot"],
                                                       name)
    elif x["sched"] == defs.SCHED_HASHSRC:
        out["hash"] = "%#018x" % x["hash"]
        out["why"] = "source hash %#x %% %d = slot %d -> %s" % (x["hash"], x["table_size"],
                                                              x["slot"], name)
    elif x["sched"] == defs.SCHED_SEQ:
        out["why"] = "next in turn: cursor %d %% %d = slot %d -> %s (the flow after it gets " \
                     "the next)" % (x["hash"], x["table_size"], x["slot"], name)
    else:
        out["why"] = "fewest connections per weight among %d candidates -> %s" % (
            x["table_size"], name)
    for b in v["backends"]:
        if b["backend"] == name:
            out["weight"] = b["weight"]
            out["health"] = (b["health"] or {}).get("state", "unchecked")
    mode = modes.get(v["mode"])
    if mode.rules:
        rules = [r.get("text", r) for r in v.get("rules", [])]
        out["decided_by"] = "content"
        out["why"] = ("decided by content: rules %s; which rule matches needs the request "
                      "(the first data segment), so this 5-tuple alone cannot say; without "
                      "a match the VIP's table gives %s" % ("; ".join(rules) or "none",
                                                             out["why"]))
    return out


def forward_verdict(f, nf, proto):
    if f is not None and f["key"] == "fwd":
        return ("on the flow: to %s (%s, %s); a SYN on a closing flow (FIN_WAIT, TIME_WAIT, "
                "CLOSE) is scheduled afresh" % (f["backend"], f["mode"], f["state"]))
    if nf is None or nf.get("backend") is None:
        return "no flow and no backend: dropped (drop_no_backend)"
    what = "a SYN" if proto == defs.PROTO_TCP else "a datagram"
    tail = ""
    if proto == defs.PROTO_TCP:
        tail = ("; a non-SYN with no flow is dropped (drop_no_flow_non_syn) unless the "
                "scheduler is a consistent hash, which re-creates it on the same backend")
    if nf.get("decided_by") == "content":
        return ("no flow: %s gets a SYN-cookie answer from the balancer; the request then "
                "picks the backend by the rules" % what)
    return "no flow: %s opens one to %s%s" % (what, nf["backend"], tail)


def rebuild_candidates(engine, vips, rip, rport, cip, cport, proto, proto_name):
    """Consistent-hash VIPs whose table gives client cip:cport to backend rip:rport (where
    a backend's packet with no flow may re-create it), in the order the fast path tries."""
    out = []
    want = format_endpoint(rip, rport)
    for v in vips:
        if v["proto"] != proto_name or v["scheduler"] not in ("maglev", "sh"):
            continue
        vip_ip, vip_port = config.parse_endpoint(v["vip"], "vip")
        x = engine.explain(cip, cport, vip_ip, vip_port, proto)
        if x is None or x["table_size"] == 0:
            continue
        names = {b["real"]: b["backend"] for b in v["backends"]}
        if names.get(x["real"]) == want:
            out.append({"vip": v["vip"] + "/" + v["proto"], "mode": v["mode"],
                        "slot": x["slot"]})
    return out


def flow_view(f, real_names, now_ms):
    out = {"client": format_endpoint(f["cip"], f["cport"]),
           "vip": format_endpoint(f["vip"], f["vport"]),
           "backend": (real_names.get(f["real"]) or format_endpoint(f["rip"], f["rport"]))
           if f["real"] >= 0 else None,
           "mode": MODE_NAMES.get(f["mode"], str(f["mode"])),
           "state": state_name(f["state"]),
           "found_by": "forward key (client -> vip)" if f["key"] == "fwd"
           else "reverse key (backend -> client)",
           "key": f["key"],
           "age_s": round(max(0, now_ms - f["created"]) / 1000, 3),
           "idle_s": round(max(0, now_ms - f["last"]) / 1000, 3),
           "packets_fwd": f["pkts_fwd"], "packets_rev": f["pkts_rev"],
           "bytes_fwd": f["bytes_fwd"], "bytes_rev": f["bytes_rev"],
           "flags": flag_words(f["flags"])}
    if "worker" in f:
        out["worker"] = f["worker"]
    s = f.get("xlate")
    if s is not None:
        out["translation"] = {
            "seq_delta": s["delta"], "ts_off": s["ts_off"], "client_isn": s["c_isn"],
            "our_isn": s["l_isn"], "mss": s["mss"],
            "window_shift": {"client": None if s["ws_c"] == 0xF else s["ws_c"],
                             "backend": s["ws_b"], "ours": s["ws_lb"]},
            "options": flag_words(s["sopt"], SOPT_WORDS), "replay_bytes": s["replay_len"]}
    return out


def render(r):
    """The text lbctl prints for a trace result."""
    t = r["tuple"]
    lines = ["%s %s -> %s: %s" % (t["proto"], t["src"], t["dst"], r["direction"])]
    v = r.get("vip")
    if v:
        lines.append("vip %s/%s  mode %s  scheduler %s%s  on_backend_down %s" % (
            v["vip"], v["proto"], v["mode"], v["scheduler"],
            " (%d)" % v["maglev_size"] if v.get("maglev_size") else "", v["on_backend_down"]))
        for b in v["backends"]:
            lines.append("  backend %-22s weight %-5d pool %-8s %s" % (
                b["backend"], b["weight"], b["pool"], b["health"]))
        if "rules" in v:
            lines.append("  rules: %s" % ("; ".join(v["rules"]) or "none"))
    elif r.get("backend_of"):
        lines.append("a backend of %s" % ", ".join(r["backend_of"]))
    else:
        lines.append("no VIP")
    f = r.get("flow")
    if f:
        w = " on worker %d" % f["worker"] if "worker" in f else ""
        lines.append("flow%s: %s -> %s via %s  mode %s  state %s  (%s)" % (
            w, f["client"], f["vip"], f["backend"] or "-", f["mode"], f["state"], f["found_by"]))
        lines.append("  age %.3f s  idle %.3f s  fwd %d pkts %d bytes  rev %d pkts %d bytes"
                     % (f["age_s"], f["idle_s"], f["packets_fwd"], f["bytes_fwd"],
                        f["packets_rev"], f["bytes_rev"]))
        lines.append("  flags: %s" % (", ".join(f["flags"]) or "none"))
        s = f.get("translation")
        if s:
            ws = s["window_shift"]
            lines.append("  translation: seq delta %d  ts_off %d  mss %d  window shift client %s "
                         "backend %s ours %s  options %s  replay %d bytes" % (
                             s["seq_delta"], s["ts_off"], s["mss"], ws["client"], ws["backend"],
                             ws["ours"], ", ".join(s["options"]) or "none", s["replay_bytes"]))
    else:
        lines.append("flow: none")
    nf = r.get("new_flow")
    if nf:
        w = " (worker %d)" % nf["worker"] if "worker" in nf else ""
        lines.append("a new flow%s: %s" % (w, nf["why"]))
        if nf.get("backend"):
            lines.append("  -> %s  weight %s  health %s" % (nf["backend"], nf.get("weight", "?"),
                                                            nf.get("health", "?")))
    for c in r.get("rebuild", []):
        lines.append("rebuild candidate: %s (%s) slot %d" % (c["vip"], c["mode"], c["slot"]))
    lines.append("=> " + r["verdict"])
    return "\n".join(lines)

