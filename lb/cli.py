"""lbctl: the command line of a running lbd, over its Unix control socket.

    lbctl [--socket PATH] [--json] vip add VIP:PORT [--proto tcp|udp] [--mode nat]
                                          [--scheduler S] [--maglev-size N]
                                          [--on-backend-down keep|expire]
    lbctl vip set VIP:PORT [--proto P] [--mode M] [--scheduler S] [--maglev-size N]
                           [--on-backend-down keep|expire|default]
    lbctl vip health VIP:PORT [--proto P] --check http|tcp|none [--path /P] [--expect N]
                     [--interval S] [--timeout S] [--rise N] [--fall N]
    lbctl vip mode VIP:PORT MODE [--proto P]    (switch the mode of new connections)
    lbctl rule add VIP:PORT --kind K [--value V] --pool P [--action forward|redirect] [--index N]
                  [--agent UA] [--no-probe | --probe-method M --probe-path P --probe-expect 2xx
                  --probe-timeout S --probe-tries N --probe-cache S]       (redirect: L7 DSR)
    lbctl rule del VIP:PORT INDEX               lbctl rule list VIP:PORT
    lbctl backend add VIP:PORT IP[:PORT] --pool NAME   (splice pools)
    lbctl vip del VIP:PORT [--proto P]          lbctl vip list
    lbctl backend add VIP:PORT IP[:PORT] [--weight W] [--proto P]
    lbctl backend del VIP:PORT IP[:PORT] [--proto P]
    lbctl backend weight VIP:PORT IP[:PORT] W [--proto P]
    lbctl conns [--vip VIP:PORT] [--proto P] [--limit N]
    lbctl stats [--all]                         lbctl status
    lbctl health show                           lbctl health interface NAME | --none
    lbctl save [-o FILE]                        (the running config as TOML for lbd -c)
    lbctl restore FILE [--dry-run]              (FILE becomes the running config, atomically)
    lbctl reload [--file F] [--dry-run]         (lbd re-reads its -c file, as on SIGHUP)
    lbctl trace [--proto P] SRC:PORT DST:PORT   lbctl trace --follow FILTER [--count N]
    lbctl capture [--vip V] [--client C] [--count N] [--seconds S] [--snap B] -w FILE
    lbctl cluster                               (this lbd's [cluster]: etcd, revision, members)
    lbctl --cluster URL [--name N] [--expect-revision R] vip|backend|rule ...
                                                (the cluster's VIP table in etcd: lb/cluster.py)
    lbctl --cluster URL [--name N] show         lbctl --cluster URL --name N init -c FILE
    (FILTER: lb/watch.py; --follow and capture run until Ctrl-C, --count or --seconds;
    capture's --count counts frames written, received and sent one each)

Invariants:
- Arguments are checked here with the validators of lb/config.py before anything is sent,
  so a typo never reaches the daemon: `error: FIELD: message` on stderr, exit 2.
- The daemon's own refusal: `error: FIELD: message` on stderr, exit 1. Cannot connect (or no
  sensible reply): exit 3. Success: exit 0.
- `--json` is accepted by the group and by every subcommand; it prints the result as JSON on
  stdout (an error as {"ok": false, "error": {...}} on stdout, besides the stderr line).
- Socket: --socket, else $THREEWAY_SOCKET, else /run/threeway/lbd.sock.
Protocol (lb/control.py serves it): one JSON line {"cmd": ..., "args": {...}} each way.
"""
import json
import os
import socket
import sys
import time

import click

import modes

from . import cluster as lbcluster
from . import config, stream, trace as lbtrace, watch
from .errors import LBError
from .health import health_text

EXIT_DAEMON, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
MAX_REPLY = 64 << 20


class ControlUnavailable(Exception):
    """The control socket cannot be reached, or did not answer with one JSON line."""


def request(path, cmd, args=None, timeout=5):
    """Send one request to lbd's control socket; return its reply dict ({"ok": ...}).

    Raises ControlUnavailable when it cannot connect, times out, or the reply is not JSON."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except OSError as e:
            raise ControlUnavailable("cannot connect to %s: %s (is lbd running? --socket or "
                                     "$THREEWAY_SOCKET)" % (path, e.strerror or e)) from None
        try:
            s.sendall((json.dumps({"cmd": cmd, "args": args or {}}) + "\n").encode())
            chunks, size = [], 0
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if b"\n" in chunk or size > MAX_REPLY:
                    break
        except socket.timeout:
            raise ControlUnavailable("no reply from %s within %g s" % (path, timeout)) from None
        except OSError as e:
            raise ControlUnavailable("talking to %s: %s" % (path, e.strerror or e)) from None
    finally:
        s.close()
    line = b"".join(chunks).split(b"\n", 1)[0]
    if not line:
        raise ControlUnavailable("%s closed the connection without a reply" % path)
    return stream.decode_reply(line, path, ControlUnavailable)


def call(path, cmd, args=None, timeout=5):
    """request(), returning the result or raising LBError with the daemon's field/message."""
    reply = request(path, cmd, args, timeout)
    if not reply["ok"]:
        err = reply.get("error") or {}
        raise LBError(err.get("field", "?"), err.get("message", "failed"))
    return reply.get("result")


# --- click plumbing -------------------------------------------------------------------------

def _set_json(ctx, _param, value):
    if value:
        ctx.ensure_object(dict)["json"] = True
        ctx.find_root().ensure_object(dict)["json"] = True


def json_option(f):
    return click.option("--json", "json_", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_json, help="Print the result as JSON.")(f)


def proto_option(f):
    return click.option("--proto", default="tcp", show_default=True, help="tcp or udp")(f)


def _opts(ctx):
    root = ctx.find_root().ensure_object(dict)
    return root


def _fail(ctx, field, message, code):
    if _opts(ctx).get("json"):
        click.echo(json.dumps({"ok": False, "error": {"field": field, "message": message}}))
    click.echo("error: %s: %s" % (field, message), err=True)
    ctx.exit(code)


def _check(ctx, fn, *a):
    """Run a local validator; a failure is a usage error (exit 2) naming the field."""
    try:
        return fn(*a)
    except LBError as e:
        _fail(ctx, e.field, e.message, EXIT_USAGE)


def _num_text(text, kind):
    """The number a --probe-* word spells, else the word (for the mode to reject by name)."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        return text


def _int_text(text):
    """The int a command-line word spells, else the word itself (for the validator to reject)."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return text


def _float_text(text):
    """The number a command-line word spells, else the word itself (for the validator)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _run(ctx, cmd, args, render):
    o = _opts(ctx)
    args = {k: v for k, v in args.items() if v is not None or cmd == "health.interface"}
    if o.get("cluster"):
        return _run_cluster(ctx, cmd, args, render)
    try:
        reply = request(o["socket"], cmd, args)
    except ControlUnavailable as e:
        if o.get("json"):
            click.echo(json.dumps({"ok": False, "error": {"field": "socket", "message": str(e)}}))
        click.echo("error: %s" % e, err=True)
        ctx.exit(EXIT_UNREACHABLE)
    if not reply["ok"]:
        err = reply.get("error") or {}
        _fail(ctx, err.get("field", "?"), err.get("message", "failed"), EXIT_DAEMON)
    result = reply.get("result")
    if o.get("json"):
        click.echo(json.dumps(result, indent=2))
    else:
        render(result)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="THREEWAY_SOCKET", default=config.DEFAULT_SOCKET,
              show_default=True, help="lbd's control socket (env THREEWAY_SOCKET).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--cluster", "cluster_urls", metavar="URL", multiple=True,
              envvar="THREEWAY_CLUSTER",
              help="Change the cluster's VIP table in etcd (http://IP:PORT; repeat for more "
                   "members) instead of one lbd: vip, backend and rule commands, show, init.")
@click.option("--name", "cluster_name", envvar="THREEWAY_CLUSTER_NAME",
              help="--cluster: the cluster's name (default: the only one in etcd).")
@click.option("--expect-revision", metavar="R",
              help="--cluster: write only if the document is still at revision R (else fail, "
                   "exit 1); default: on a conflict read again and re-run the command.")
@click.pass_context
def main(ctx, socket_path, as_json, cluster_urls, cluster_name, expect_revision):
    """Control a running threeway balancer (lbd), or with --cluster the VIP table that the
    lbds of a cluster take from etcd."""
    o = ctx.ensure_object(dict)
    o["socket"] = socket_path
    o["json"] = o.get("json", False) or as_json
    if isinstance(cluster_urls, str):          # from the environment
        cluster_urls = cluster_urls.split()
    if cluster_urls:
        o["cluster"] = tuple(_check(ctx, lbcluster.parse_url, u, "--cluster")
                             for u in cluster_urls)
        if cluster_name is not None:
            _check(ctx, lbcluster.check_name, cluster_name, "--name")
        o["cluster_name"] = cluster_name
        if expect_revision is not None:
            o["expect_revision"] = _check(ctx, config.parse_int, _int_text(expect_revision),
                                          "--expect-revision", 0, 1 << 62)
    elif cluster_name is not None or expect_revision is not None:
        _fail(ctx, "--name" if cluster_name is not None else "--expect-revision",
              "only with --cluster URL", EXIT_USAGE)


# --- --cluster (lb/cluster.py): the VIP table in etcd -------------------------------------------

def _cluster_etcd(ctx):
    """(Etcd, cluster name) of --cluster/--name; a missing name is the only cluster there."""
    o = _opts(ctx)
    e = lbcluster.Etcd(o["cluster"])
    name = o.get("cluster_name")
    if name is None:
        try:
            kvs, _ = e.get_prefix(lbcluster.PREFIX)
        except lbcluster.EtcdError as err:
            _cluster_unreachable(ctx, err)
        names = sorted({k[len(lbcluster.PREFIX):].split("/", 1)[0] for k, _, _ in kvs})
        if len(names) != 1:
            _fail(ctx, "--name", "give the cluster's name (%s)" % (
                "clusters in etcd: " + ", ".join(names) if names
                else "etcd holds no cluster yet; lbctl --cluster URL --name NAME init -c F"),
                EXIT_USAGE)
        name = names[0]
    return e, name


def _cluster_unreachable(ctx, err):
    if _opts(ctx).get("json"):
        click.echo(json.dumps({"ok": False, "error": {"field": "cluster", "message": str(err)}}))
    click.echo("error: cluster: %s" % err, err=True)
    ctx.exit(EXIT_UNREACHABLE)


def _run_cluster(ctx, cmd, args, render):
    """A VIP-table command on the cluster's document: read, the daemon's own command code
    (lb/cluster.py Editor), compare-and-swap write. The result is rendered as lbd's would be,
    then the revision written (on stderr, so stdout is the command's own output)."""
    o = _opts(ctx)
    if cmd not in lbcluster.WRITE_CMDS + lbcluster.READ_CMDS:
        _fail(ctx, "--cluster", "%s is a command of one lbd, not of the cluster's VIP table "
              "(leave out --cluster and give --socket)" % cmd, EXIT_USAGE)
    e, name = _cluster_etcd(ctx)
    try:
        r = lbcluster.run_command(o["cluster"], name, cmd, args, o.get("expect_revision"),
                                  etcd=e)
    except lbcluster.EtcdError as err:
        _cluster_unreachable(ctx, err)
    except LBError as err:
        _fail(ctx, err.field, err.message, EXIT_DAEMON)
    if o.get("json"):
        click.echo(json.dumps(r, indent=2))
        return
    render(r["result"])
    if r["written"]:
        click.echo("cluster %s: revision %d written%s" % (
            name, r["revision"], " (after %d conflicts)" % (r["tries"] - 1)
            if r["tries"] > 1 else ""), err=True)
    elif cmd in lbcluster.WRITE_CMDS:
        click.echo("cluster %s: nothing changed (revision %d)" % (name, r["revision"]),
                   err=True)


# --- vip ------------------------------------------------------------------------------------

@main.group()
@json_option
def vip():
    """Virtual services: add, set, del, list."""


def _vip_args(ctx, endpoint, proto):
    _check(ctx, config.parse_endpoint, endpoint, "vip")
    _check(ctx, config.check_proto, proto)
    return {"vip": endpoint, "proto": proto}


def _mode_args(ctx, mode, scheduler, maglev_size):
    if mode is not None:
        _check(ctx, config.check_mode, mode)
    if scheduler is not None:
        _check(ctx, config.check_scheduler, scheduler)
    size = None
    if maglev_size is not None:
        size = _int_text(maglev_size)
        if scheduler is not None and scheduler != "maglev":
            _fail(ctx, "maglev_size", "only applies to scheduler maglev, not %s" % scheduler,
                  EXIT_USAGE)
        _check(ctx, config.check_maglev_size, size)
    return {"mode": mode, "scheduler": scheduler, "maglev_size": size}


def _obd_arg(ctx, value, allow_default):
    if value is None:
        return {}
    if not (allow_default and value == "default"):
        _check(ctx, config.check_on_backend_down, value)
    return {"on_backend_down": value}


def obd_option(help_text):
    return click.option("--on-backend-down", "on_backend_down", metavar="POLICY", help=help_text)


# the vip.set arguments the modes own (modes/base.py SetArg), as --flag options
# (an argument that several modes take is one option)
_SET_ARGS = list({a.name: a for m in modes.REGISTRY.values() for a in m.set_args}.values())


def _mode_set_options(fn):
    owner = {}
    for m in modes.REGISTRY.values():
        for a in m.set_args:
            owner.setdefault(a.name, []).append(m.name)
    for a in reversed(_SET_ARGS):
        fn = click.option("--" + a.name.replace("_", "-"), a.name,
                          help="%s: %s." % (", ".join(owner[a.name]), a.help))(fn)
    return fn


@vip.command("add")
@click.argument("endpoint", metavar="VIP:PORT")
@proto_option
@click.option("--mode", default=modes.DEFAULT, show_default=True,
              help="Forwarding mode: %s." % ", ".join(modes.REGISTRY))
@click.option("--scheduler", help="rr, wrr, lc, sh or maglev (default: the mode's).")
@click.option("--maglev-size", help="Maglev table size, a prime (default 65537).")
@obd_option("Flows of a backend that health checks take down: keep (until idle) or expire "
            "(the next packet goes to a live backend). Default: the mode's (%s)."
            % ", ".join("%s %s" % (m.name, m.default_on_backend_down)
                        for m in modes.REGISTRY.values()))
@json_option
@click.pass_context
def vip_add(ctx, endpoint, proto, mode, scheduler, maglev_size, on_backend_down):
    """Add a virtual service."""
    args = _vip_args(ctx, endpoint, proto)
    args.update(_mode_args(ctx, mode, scheduler, maglev_size))
    args.update(_obd_arg(ctx, on_backend_down, False))
    _run(ctx, "vip.add", args, _render_vip_one)


@vip.command("set")
@click.argument("endpoint", metavar="VIP:PORT")
@proto_option
@click.option("--mode", help="New forwarding mode (new connections only).")
@click.option("--scheduler", help="New scheduler.")
@click.option("--maglev-size", help="New Maglev table size, a prime.")
@obd_option("keep, expire, or default (the mode's): what becomes of the flows of a backend "
            "that health checks take down.")
@_mode_set_options
@json_option
@click.pass_context
def vip_set(ctx, endpoint, proto, mode, scheduler, maglev_size, on_backend_down, **mode_args):
    """Change a service's mode, scheduler or down-backend policy; existing connections keep
    their mode."""
    args = _vip_args(ctx, endpoint, proto)
    args.update(_mode_args(ctx, mode, scheduler, maglev_size))
    args.update(_obd_arg(ctx, on_backend_down, True))
    for a in _SET_ARGS:
        if mode_args.get(a.name) is not None:
            args[a.name] = _check(ctx, a.parse, mode_args[a.name])
    _run(ctx, "vip.set", args, _render_vip_one)


@vip.command("health")
@click.argument("endpoint", metavar="VIP:PORT")
@proto_option
@click.option("--check", metavar="KIND", help="http, tcp or none (required).")
@click.option("--path", help="http: the path to GET (default /).")
@click.option("--expect", help="http: the status that means up (default 200).")
@click.option("--interval", help="Seconds between probes of a backend (default 1).")
@click.option("--timeout", help="Seconds for one probe (default 1).")
@click.option("--rise", help="Successes in a row that bring a backend up (default 2).")
@click.option("--fall", help="Failures in a row that take a backend down (default 2).")
@json_option
@click.pass_context
def vip_health(ctx, endpoint, proto, check, path, expect, interval, timeout, rise, fall):
    """Set the health check of a service's backends. dsr services are probed along the VIP
    path (needs `lbctl health interface`); others at each backend's address. Options not
    given keep their current value."""
    args = _vip_args(ctx, endpoint, proto)
    if check is None:
        _fail(ctx, "check", "missing: --check http, tcp or none", EXIT_USAGE)
    h = {"check": check, "path": path, "expect": _int_text(expect),
         "interval": _float_text(interval), "timeout": _float_text(timeout),
         "rise": _int_text(rise), "fall": _int_text(fall)}
    h = {k: v for k, v in h.items() if v is not None}
    _check(ctx, config.parse_health_check, h)
    args.update(h)
    _run(ctx, "vip.health", args, _render_vip_one)


@vip.command("mode")
@click.argument("endpoint", metavar="VIP:PORT")
@click.argument("mode", metavar="MODE")
@proto_option
@json_option
@click.pass_context
def vip_mode(ctx, endpoint, mode, proto):
    """Switch a running service to MODE (nat, dsr, ...). New connections take the new mode;
    existing ones finish in the mode they began in."""
    args = _vip_args(ctx, endpoint, proto)
    args.update(_mode_args(ctx, mode, None, None))
    _run(ctx, "vip.set", args, _render_vip_one)


@vip.command("del")
@click.argument("endpoint", metavar="VIP:PORT")
@proto_option
@json_option
@click.pass_context
def vip_del(ctx, endpoint, proto):
    """Remove a virtual service: its traffic is no longer forwarded."""
    _run(ctx, "vip.del", _vip_args(ctx, endpoint, proto),
         lambda r: click.echo("deleted %s/%s" % (r["vip"], r["proto"])))


@vip.command("list")
@json_option
@click.pass_context
def vip_list(ctx):
    """List virtual services and their backends (on an lbd in cluster mode, after a line
    saying which revision of the cluster's table it runs)."""
    o = _opts(ctx)

    def render(vips):
        if not o.get("cluster"):
            try:
                c = call(o["socket"], "cluster")
            except (ControlUnavailable, LBError):
                c = None
            if c:
                click.echo("# cluster %s: revision %d of %s, etcd %s" % (
                    c["name"], c["revision"], c["key"],
                    "connected" if c["connected"] else "DISCONNECTED"))
        _render_vips(vips)
    _run(ctx, "vip.list", {}, render)


# --- backend --------------------------------------------------------------------------------

@main.group()
@json_option
def backend():
    """Backends of a service: add, del, weight."""


def _backend_args(ctx, endpoint, real, proto):
    args = _vip_args(ctx, endpoint, proto)
    _check(ctx, config.parse_backend, real, "backend")
    args["backend"] = real
    return args


@backend.command("add")
@click.argument("endpoint", metavar="VIP:PORT")
@click.argument("real", metavar="IP[:PORT]")
@click.option("--weight", default="1", show_default=True, help="0..65535; 0 = no new flows.")
@click.option("--pool", help="The named pool, for a mode with pools (default: \"default\").")
@click.option("--name", help="Its host name in answers the LB makes (splice redirect's Location).")
@proto_option
@json_option
@click.pass_context
def backend_add(ctx, endpoint, real, weight, pool, name, proto):
    """Add a backend (port defaults to the VIP's)."""
    args = _backend_args(ctx, endpoint, real, proto)
    args["weight"] = _check(ctx, config.check_weight, _int_text(weight))
    if pool is not None:
        args["pool"] = pool          # the VIP's mode checks it (a mode without pools refuses one)
    if name is not None:
        args["name"] = _check(ctx, config.check_backend_name, name, "name")
    _run(ctx, "backend.add", args, _render_vip_one)


@backend.command("del")
@click.argument("endpoint", metavar="VIP:PORT")
@click.argument("real", metavar="IP[:PORT]")
@proto_option
@json_option
@click.pass_context
def backend_del(ctx, endpoint, real, proto):
    """Remove a backend: new connections avoid it, existing ones finish on it."""
    _run(ctx, "backend.del", _backend_args(ctx, endpoint, real, proto), _render_vip_one)


@backend.command("weight")
@click.argument("endpoint", metavar="VIP:PORT")
@click.argument("real", metavar="IP[:PORT]")
@click.argument("weight", metavar="W")
@proto_option
@json_option
@click.pass_context
def backend_weight(ctx, endpoint, real, weight, proto):
    """Set a backend's weight (0 drains it: new connections only)."""
    args = _backend_args(ctx, endpoint, real, proto)
    args["weight"] = _check(ctx, config.check_weight, _int_text(weight))
    _run(ctx, "backend.weight", args, _render_vip_one)


# --- health ---------------------------------------------------------------------------------

@main.group("health")
@json_option
def health_group():
    """Health checks: show, interface."""


@health_group.command("show")
@json_option
@click.pass_context
def health_show(ctx):
    """Every checked backend: what is probed, its state and why."""
    _run(ctx, "health.show", {}, _render_health)


@health_group.command("interface")
@click.argument("name", required=False)
@click.option("--none", "clear", is_flag=True, help="Clear it (no dsr checks then).")
@json_option
@click.pass_context
def health_interface(ctx, name, clear):
    """Set lbd's management interface, through which dsr services are probed along the VIP
    path ([health] interface in the config)."""
    if (name is None) == (not clear):
        _fail(ctx, "interface", "give an interface name or --none", EXIT_USAGE)
    if name is not None:
        _check(ctx, config.check_interface_name, name, "interface")
    _run(ctx, "health.interface", {"interface": name} if name else {"interface": None},
         _render_health)


# --- content rules (modes with rules) -------------------------------------------------------

@main.group(help="Content rules of a VIP whose mode has them (%s); first match wins."
            % ", ".join(m.name for m in modes.REGISTRY.values() if m.rules))
@json_option
def rule():
    pass


@rule.command("add")
@click.argument("endpoint", metavar="VIP:PORT")
@click.option("--kind", required=True,
              help="method, path_prefix, host, sni, prefix, default or rtsp.")
@click.option("--value", help="What to match (none for default; rtsp: a stream path prefix).")
@click.option("--pool", required=True, help="The pool that gets matching connections.")
@click.option("--action", help="forward (default), or redirect: answer with a 302 to the "
              "chosen backend once it passed its probe (rtsp: the default).")
@click.option("--agent", help="rtsp: a User-Agent substring the request must carry.")
@click.option("--probe/--no-probe", default=None,
              help="redirect: probe the backend before the 302 (default: probe).")
@click.option("--probe-method", help="HEAD (default), GET, ...; rtsp: DESCRIBE (default) or OPTIONS.")
@click.option("--probe-path", help="A fixed path to probe, e.g. / (default: the request's own).")
@click.option("--probe-expect", help="Statuses that pass, e.g. 2xx,3xx (default) or 200.")
@click.option("--probe-timeout", help="Seconds per probe (default 1).")
@click.option("--probe-tries", help="Backends tried before a 503 (default 3).")
@click.option("--probe-cache", help="Seconds a result is reused per backend (default 0: off).")
@click.option("--index", help="Insert at this position (default: the end).")
@proto_option
@json_option
@click.pass_context
def rule_add(ctx, endpoint, kind, value, pool, action, agent, probe, probe_method, probe_path,
             probe_expect, probe_timeout, probe_tries, probe_cache, index, proto):
    """Add a content rule to a VIP (its mode checks it and names a bad field)."""
    args = _vip_args(ctx, endpoint, proto)
    spec = {"kind": kind, "pool": pool}
    if action is not None:
        spec["action"] = action
    if value is not None:
        spec["value"] = value
    if agent is not None:
        spec["agent"] = agent
    table = {k: v for k, v in (("method", probe_method), ("path", probe_path),
                               ("expect", probe_expect),
                               ("timeout", _num_text(probe_timeout, float)),
                               ("tries", _num_text(probe_tries, int)),
                               ("cache", _num_text(probe_cache, float))) if v is not None}
    if table and probe is False:
        _fail(ctx, "probe", "--no-probe with --probe-* options", EXIT_USAGE)
    if table:
        spec["probe"] = table
    elif probe is not None:
        spec["probe"] = probe
    args.update(spec)
    if index is not None:
        args["index"] = _int_text(index)
    _run(ctx, "rule.add", args, _render_rules)


@rule.command("del")
@click.argument("endpoint", metavar="VIP:PORT")
@click.argument("index")
@proto_option
@json_option
@click.pass_context
def rule_del(ctx, endpoint, index, proto):
    """Delete rule INDEX (as `rule list` numbers them)."""
    args = _vip_args(ctx, endpoint, proto)
    args["index"] = _int_text(index)
    _run(ctx, "rule.del", args, _render_rules)


@rule.command("list")
@click.argument("endpoint", metavar="VIP:PORT")
@proto_option
@json_option
@click.pass_context
def rule_list(ctx, endpoint, proto):
    """A VIP's rules and pools."""
    _run(ctx, "rule.list", _vip_args(ctx, endpoint, proto), _render_rules)


def _render_rules(v):
    click.echo("%s/%s %s: %s" % (v["vip"], v["proto"], v["mode"], v.get("summary", "")))
    for r in v.get("rules", []):
        click.echo("  %d. %s" % (r["index"], r["text"]))
    pools = {}
    for b in v["backends"]:
        pools.setdefault(b.get("pool", "default"), []).append(b["backend"])
    for name, members in sorted(pools.items()):
        click.echo("  pool %s: %s" % (name, ", ".join(members)))
    if "default" in pools and not any(r.get("kind") == "default" for r in v.get("rules", [])):
        click.echo("  (no rule matched -> pool default)")


# --- conns, stats, status -------------------------------------------------------------------

@main.command()
@click.option("--vip", "endpoint", metavar="VIP:PORT", help="Only this service.")
@click.option("--proto", help="Only tcp or udp.")
@click.option("--limit", help="Show at most N (default 100).")
@json_option
@click.pass_context
def conns(ctx, endpoint, proto, limit):
    """List connections in the flow table."""
    args = {}
    if endpoint is not None:
        _check(ctx, config.parse_endpoint, endpoint, "vip")
        args["vip"] = endpoint
    if proto is not None:
        args["proto"] = _check(ctx, config.check_proto, proto)
    if limit is not None:
        args["limit"] = _check(ctx, config.parse_int, _int_text(limit), "limit", 1, 1_000_000)
    _run(ctx, "conns", args, _render_conns)


@main.command()
@click.option("--all", "all_", is_flag=True, help="Show zero counters too.")
@json_option
@click.pass_context
def stats(ctx, all_):
    """Counters, flows and per-backend connections."""
    _run(ctx, "stats", {"all": True} if all_ else {}, _render_stats)


@main.command()
@json_option
@click.pass_context
def status(ctx):
    """The daemon's status."""
    _run(ctx, "status", {}, _render_mapping)


@main.command("cluster")
@json_option
@click.pass_context
def cluster_cmd(ctx):
    """This lbd's cluster: etcd, connected or not since when, the revision it runs, the last
    error and refused document, the members."""
    _run(ctx, "cluster", {}, _render_cluster)


def _render_cluster(r):
    if r is None:
        click.echo("not in cluster mode (no [cluster] in lbd's config)")
        return
    click.echo("cluster %s, instance %s: etcd %s %s since %s" % (
        r["name"], r["instance"], r["etcd"], "connected" if r["connected"] else "DISCONNECTED",
        time.strftime("%H:%M:%S", time.localtime(r["since"]))))
    at = (" (applied %s, %.1f ms)" % (time.strftime("%H:%M:%S", time.localtime(
        r["applied_at"])), r["apply_ms"]) if r.get("applied_at") else "")
    click.echo("  running revision %d%s of %s; %d applied, %d refused"
               % (r["revision"], at, r["key"], r["applied"], r["refused"]))
    if r.get("last_refused"):
        x = r["last_refused"]
        click.echo("  last refused: revision %d: %s: %s" % (x["revision"], x["field"],
                                                          x["message"]))
    if r.get("last_error"):
        click.echo("  last etcd error (%s): %s" % (time.strftime(
            "%H:%M:%S", time.localtime(r["last_error_at"])), r["last_error"]))
    click.echo("  lease: %s" % ("ok" if r["lease"]["ok"] else "not held"))
    for n, m in sorted((r.get("members") or {}).items()):
        click.echo("  member %s: data %s mgmt %s sync %s" % (
            n, m.get("data") or "-", m.get("mgmt") or "-", m.get("sync") or "-"))


@main.command("show")
@json_option
@click.pass_context
def cluster_show(ctx):
    """--cluster: print the VIP-table document, its revision and the members."""
    if not _opts(ctx).get("cluster"):
        _fail(ctx, "show", "needs --cluster URL (one lbd: lbctl save)", EXIT_USAGE)
    e, name = _cluster_etcd(ctx)
    try:
        r = lbcluster.show(None, name, etcd=e)
    except lbcluster.EtcdError as err:
        _cluster_unreachable(ctx, err)
    r["name"] = name
    if _opts(ctx).get("json"):
        click.echo(json.dumps(r, indent=2))
        return
    click.echo("# cluster %s, %s, revision %d%s" % (name, r["key"], r["revision"],
                                                    "" if r["exists"] else " (no document)"))
    for n, m in sorted(r["members"].items()):
        click.echo("# member %s: %s" % (n, json.dumps(m, sort_keys=True)))
    click.echo(r["document"], nl=False)


@main.command("init")
@click.option("-c", "--config", "file", required=True, type=click.Path(dir_okay=False),
              help="A config file (lbd -c); its [[vip]] become the document.")
@click.option("--force", is_flag=True, help="Replace a document that exists.")
@json_option
@click.pass_context
def cluster_init(ctx, file, force):
    """--cluster --name NAME: seed the cluster's VIP-table document from FILE's VIPs."""
    o = _opts(ctx)
    if not o.get("cluster"):
        _fail(ctx, "init", "needs --cluster URL", EXIT_USAGE)
    if not o.get("cluster_name"):
        _fail(ctx, "--name", "init needs the cluster's name", EXIT_USAGE)
    cfg = _check(ctx, config.load, file)
    try:
        rev = lbcluster.init(o["cluster"], o["cluster_name"], cfg, force)
    except lbcluster.EtcdError as err:
        _cluster_unreachable(ctx, err)
    except LBError as err:
        _fail(ctx, err.field, err.message, EXIT_DAEMON)
    if o.get("json"):
        click.echo(json.dumps({"revision": rev, "vips": len(cfg.vips)}))
    else:
        click.echo("cluster %s: %d VIP%s from %s, revision %d" % (
            o["cluster_name"], len(cfg.vips), _s(len(cfg.vips)), file, rev))


# --- save, restore, reload (lb/running.py) ---------------------------------------------------

@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write it to this file "
              "(default: stdout).")
@json_option
@click.pass_context
def save(ctx, output):
    """Print the running configuration as TOML that `lbd -c` and `lbctl restore` accept:
    [lb], [io], [flows], [health] and every VIP as it is now (lbctl's changes included)."""
    def render(r):
        text = "# lbctl save, %s\n%s" % (time.strftime("%Y-%m-%d %H:%M:%S"), r["toml"])
        if output:
            with open(output, "w") as f:
                f.write(text)
        else:
            click.echo(text, nl=False)
    _run(ctx, "config.save", {}, render)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the difference only; change nothing.")
@json_option
@click.pass_context
def restore(ctx, file, dry_run):
    """Apply a saved configuration in one atomic change (ipvsadm -R): FILE's VIPs become the
    VIP table (VIPs not in FILE are removed), its timeouts and health interface are applied;
    existing flows of VIPs that stay keep going. What lbd cannot change at run time (lb.*,
    io.*, flows.capacity) must equal the running values."""
    _check(ctx, config.load, file)            # a bad file is refused here, naming the field
    with open(file, encoding="utf-8") as f:
        text = f.read()
    _run(ctx, "config.restore", {"toml": text, "source": file, "dry_run": dry_run or None},
         _render_applied)


@main.command()
@click.option("--file", "file", type=click.Path(dir_okay=False),
              help="Read this file instead of lbd's own (-c); lbd reads it, by this path.")
@click.option("--dry-run", is_flag=True, help="Print the difference only; change nothing.")
@json_option
@click.pass_context
def reload(ctx, file, dry_run):
    """Re-read lbd's config file (as SIGHUP does) and apply the difference in one atomic
    change; existing flows are untouched. The file becomes the VIP table: VIPs added with
    lbctl and not in the file are removed (--dry-run shows them)."""
    args = {"dry_run": dry_run or None}
    if file is not None:
        _check(ctx, config.load, file)
        args["file"] = os.path.abspath(file)
    _run(ctx, "config.reload", args, _render_applied)


def _render_applied(r):
    d = r["diff"]
    head = "%s: %s" % (r["source"], r["summary"])
    if r.get("dry_run"):
        head += " (dry run: nothing applied)" if d["changes"] else " (dry run)"
    elif d["changes"]:
        head += " (applied)"
    click.echo(head)
    for v in d["vips"]["added"]:
        click.echo("  + vip %s: %s, %s, %d backend%s" % (v["vip"], v["mode"], v["scheduler"],
                                                       v["backends"], _s(v["backends"])))
    for v in d["vips"]["removed"]:
        click.echo("  - vip %s: %s, %d backend%s (not in the file: removed)"
                   % (v["vip"], v["mode"], v["backends"], _s(v["backends"])))
    for v in d["vips"]["changed"]:
        click.echo("  ~ vip %s" % v["vip"])
        for k, (a, b) in v["fields"].items():
            click.echo("      %s: %s -> %s" % (k, _val(a), _val(b)))
        b = v["backends"]
        for x in b["added"]:
            pool = "" if x["pool"] == "default" else ", pool %s" % x["pool"]
            click.echo("      + backend %s weight %d%s" % (x["backend"], x["weight"], pool))
        for x in b["removed"]:
            click.echo("      - backend %s" % x)
        for x in b["reweighted"]:
            click.echo("      backend %s weight %d -> %d" % (x["backend"], x["old"], x["new"]))
        for x in b["repooled"]:
            click.echo("      backend %s pool %s -> %s" % (x["backend"], x["old"], x["new"]))
        for x in b.get("renamed", ()):
            click.echo("      backend %s name %s -> %s" % (x["backend"], _val(x["old"] or None),
                                                        _val(x["new"] or None)))
        if "rules" in v:
            click.echo("      rules: %s" % ("; ".join(v["rules"]["old"]) or "none"))
            click.echo("          -> %s" % ("; ".join(v["rules"]["new"]) or "none"))
    for k, (a, b) in d["timeouts"].items():
        click.echo("  timeouts.%s: %s -> %s" % (k, a, b))
    for k, (a, b) in d["health"].items():
        click.echo("  health.%s: %s -> %s" % (k, _val(a), _val(b)))


def _s(n):
    return "" if n == 1 else "s"


def _val(v):
    return "(not set)" if v is None else json.dumps(v)


# --- trace, trace --follow, capture (lb/trace.py, lb/watch.py, lb/stream.py) -------------------

def _watch_args(ctx, words, client, vip, count, seconds):
    """The watch request's args, every one checked here first."""
    args = {}
    terms = _check(ctx, watch.parse_filter, list(words), "filter")
    if words:
        args["filter"] = " ".join(words)
    terms += _check(ctx, watch.endpoint_terms, client, vip)
    if client is not None:
        args["client"] = client
    if vip is not None:
        args["vip"] = vip
    if len(terms) > watch.defs.WATCH_MAX_TERMS:
        _fail(ctx, "filter", "at most %d terms, got %d" % (watch.defs.WATCH_MAX_TERMS,
                                                           len(terms)), EXIT_USAGE)
    if count is not None:
        args["count"] = _check(ctx, config.parse_int, _int_text(count), "count", 1,
                               watch.MAX_COUNT)
    if seconds is not None:
        args["seconds"] = _check(ctx, watch.parse_seconds, _float_text(seconds))
    return args


def _run_stream(ctx, args, on_item):
    o = _opts(ctx)
    try:
        return stream.stream(o["socket"], "watch", args, on_item)
    except stream.StreamUnavailable as e:
        if o.get("json"):
            click.echo(json.dumps({"ok": False, "error": {"field": "socket", "message": str(e)}}))
        click.echo("error: %s" % e, err=True)
        ctx.exit(EXIT_UNREACHABLE)
    except LBError as e:
        _fail(ctx, e.field, e.message, EXIT_DAEMON)


@main.command("trace")
@click.argument("words", nargs=-1, metavar="SRC:PORT DST:PORT | FILTER")
@click.option("--proto", default="tcp", show_default=True, help="tcp or udp (a 5-tuple).")
@click.option("--follow", is_flag=True, help="Show matching frames live (FILTER).")
@click.option("--client", help="--follow: frames of this client IP[:PORT].")
@click.option("--vip", help="--follow: frames of this VIP:PORT.")
@click.option("--count", help="--follow: stop after N frames.")
@click.option("--seconds", help="--follow: stop after S seconds.")
@json_option
@click.pass_context
def trace_cmd(ctx, words, proto, follow, client, vip, count, seconds):
    """What lbd does with a 5-tuple; with --follow, each matching frame's verdict, live.

    A 5-tuple is SRC:PORT DST:PORT: a client and a VIP, or a backend and a client (the
    reverse direction). FILTER: `host A and port 80`, `src host A`, `dst port 8080`, `tcp`
    (terms joined by `and`; all must hold)."""
    if not follow:
        for name, val in (("client", client), ("vip", vip), ("count", count),
                          ("seconds", seconds)):
            if val is not None:
                _fail(ctx, name, "only with --follow", EXIT_USAGE)
        if len(words) != 2:
            _fail(ctx, "tuple", "give SRC:PORT DST:PORT (e.g. 198.18.0.10:40000 "
                  "198.19.100.1:80), or --follow FILTER", EXIT_USAGE)
        _check(ctx, config.parse_endpoint, words[0], "src")
        _check(ctx, config.parse_endpoint, words[1], "dst")
        _check(ctx, config.check_proto, proto)
        _run(ctx, "trace", {"src": words[0], "dst": words[1], "proto": proto},
             lambda r: click.echo(lbtrace.render(r)))
        return
    args = _watch_args(ctx, words, client, vip, count, seconds)
    as_json = _opts(ctx).get("json")

    def on_item(ev):
        click.echo(json.dumps(ev) if as_json else stream.event_line(ev))

    header, final = _run_stream(ctx, args, on_item)
    if final is not None:
        if as_json:
            click.echo(json.dumps(final))
        else:
            click.echo("%d frames in %.3f s (%s); lost to a full ring: %d" % (
                final["frames"], final["seconds"], header["result"]["watch"], final["lost"]),
                err=True)


@main.command("capture")
@click.option("-w", "--write", "path", required=True, help="The pcap file to write.")
@click.option("--vip", help="Frames of this VIP:PORT.")
@click.option("--client", help="Frames of this client IP[:PORT].")
@click.option("--filter", "filter_", help="A FILTER (as trace --follow), in one argument.")
@click.option("--count", help="Stop after N frames written.")
@click.option("--seconds", help="Stop after S seconds.")
@click.option("--snap", default=str(watch.CAPTURE_SNAP), show_default=True,
              help="Bytes kept of each frame.")
@json_option
@click.pass_context
def capture_cmd(ctx, path, vip, client, filter_, count, seconds, snap):
    """Write a pcap of the frames lbd received and sent that match (both directions, the
    frames lbd made in place, e.g. splice's SYN-ACK cookies, too)."""
    words = filter_.split() if filter_ else []
    args = _watch_args(ctx, words, client, vip, count, seconds)
    args["bytes"] = True
    args["snap"] = _check(ctx, config.parse_int, _int_text(snap), "snap",
                          watch.defs.WATCH_SNAP_MIN, watch.defs.WATCH_SNAP_MAX)
    limit = args.get("count")
    try:
        fobj = open(path, "wb")
    except OSError as e:
        _fail(ctx, "write", "%s: %s" % (path, e.strerror or e), EXIT_USAGE)
    counts = {"in": 0, "out": 0}
    with fobj:
        pcap = stream.PcapFile(fobj, args["snap"])

        def on_item(ev):
            ts = int(round(ev["ts"] * 1e9))
            for key, data, length in (("in", ev["in_bytes"], ev.get("in", {}).get("len")),
                                      ("out", ev.get("out_bytes"), ev.get("out", {}).get("len"))):
                if limit is not None and pcap.frames >= limit:
                    return True
                if data:
                    pcap.write(bytes.fromhex(data), ts, length)
                    counts[key] += 1
            fobj.flush()
            return limit is not None and pcap.frames >= limit

        header, final = _run_stream(ctx, args, on_item)
    result = {"file": path, "frames": pcap.frames, "received": counts["in"],
              "sent": counts["out"], "lost": (final or {}).get("lost"),
              "watch": header["result"]["watch"]}
    if _opts(ctx).get("json"):
        click.echo(json.dumps(result))
    else:
        click.echo("%s: %d frames (%d received, %d sent; %s); lost to a full ring: %s" % (
            path, pcap.frames, counts["in"], counts["out"], result["watch"], result["lost"]),
            err=True)


# --- human output ---------------------------------------------------------------------------

def _table(headers, rows):
    """Aligned columns: numbers right, text left; no trailing spaces."""
    numeric = [any(r[i] is not None for r in rows) and
               all(r[i] is None or isinstance(r[i], (int, float)) for r in rows)
               for i in range(len(headers))]
    rows = [["-" if c is None else c for c in r] for r in rows]
    cols = list(zip(headers, *rows)) if rows else [(h,) for h in headers]
    widths = [max(len(str(c)) for c in col) for col in cols]
    out = []
    for r in [headers] + rows:
        cells = [str(c).rjust(w) if num else str(c).ljust(w)
                 for c, w, num in zip(r, widths, numeric)]
        out.append("  ".join(cells).rstrip())
    click.echo("\n".join(out))


def _sched_text(v):
    if v["scheduler"] == "maglev" and v.get("maglev_size"):
        return "maglev/%d" % v["maglev_size"]
    return v["scheduler"]


def _health_cell(b):
    h = b.get("health")
    return None if h is None else health_text(h)


def _check_text(hc):
    if hc["check"] == "http":
        what = "http GET %s expect %d" % (hc["path"], hc["expect"])
    else:
        what = "tcp connect"
    return "%s every %gs, timeout %gs, rise %d, fall %d" % (what, hc["interval"],
                                                           hc["timeout"], hc["rise"], hc["fall"])


def _render_health_notes(vips):
    """One line per checked VIP under the table (what is probed, the down-backend policy)."""
    notes = ["%s/%s: %s%s; flows of a down backend: %s"
             % (v["vip"], v["proto"], _check_text(v["health"]),
                " along the VIP path" if getattr(modes.REGISTRY.get(v["mode"]), "probe_via_vip", False)
                else "",
                v.get("on_backend_down", "?"))
             for v in vips if v.get("health")]
    if notes:
        click.echo()
        click.echo("\n".join(notes))


def _render_vips(vips):
    if not vips:
        click.echo("no VIPs")
        return
    checked = any(v.get("health") for v in vips)   # no HEALTH column when nothing is checked
    rows = []
    for v in vips:
        head = ["%s/%s" % (v["vip"], v["proto"]), v["mode"], _sched_text(v)]
        if not v["backends"]:
            rows.append(head + [None, None] + ([None] if checked else []))
        for i, b in enumerate(v["backends"]):
            rows.append((head if i == 0 else ["", "", ""]) + [b["backend"], b["weight"]]
                        + ([_health_cell(b)] if checked else []))
    _table(["VIP", "MODE", "SCHEDULER", "BACKEND", "WEIGHT"] + (["HEALTH"] if checked else []),
           rows)
    _render_health_notes(vips)
    probes = [(v, p) for v in vips for p in v.get("probes", ())]
    if probes:      # a mode's probes before its answers (splice's redirect), last result each
        click.echo()
        _table(["VIP", "PROBED", "LAST", "DETAIL", "MS", "OK", "FAILED"],
               [["%s/%s" % (v["vip"], v["proto"]), p["backend"], p["last"], p["detail"],
                 p["ms"], p["ok"], p["failed"]] for v, p in probes])


def _render_vip_one(v):
    _render_vips([v])


def _render_conns(r):
    rows = [[c["client"], c["vip"], c["backend"], c["proto"], c["mode"], c["state"],
             c["age_s"], c["idle_s"], "%d/%d" % (c["packets_fwd"], c["packets_rev"]),
             "%d/%d" % (c["bytes_fwd"], c["bytes_rev"])] for c in r["conns"]]
    if rows:
        _table(["CLIENT", "VIP", "BACKEND", "PROTO", "MODE", "STATE", "AGE_S", "IDLE_S",
                "PKTS(F/R)", "BYTES(F/R)"], rows)
    click.echo("%d of %d connections" % (r["shown"], r["total"]))


def _render_stats(r):
    click.echo("flows: %d" % r.get("flow_count", 0))
    rows = []
    checked = any(v.get("health") for v in r.get("vips", []))
    extra = [None] if checked else []
    for v in r.get("vips", []):
        head = ["%s/%s" % (v["vip"], v["proto"]), v["mode"], v["scheduler"]]
        if not v["backends"]:
            rows.append(head + [None, None, None] + extra)
        for i, b in enumerate(v["backends"]):
            rows.append((head if i == 0 else ["", "", ""]) + [b["backend"], b["weight"],
                                                              b["conns"]]
                        + ([_health_cell(b)] if checked else []))
    for d in r.get("draining", []):
        rows.append(["(removed)", "", "", d["backend"], None, d["conns"]] + extra)
    if rows:
        click.echo()
        _table(["VIP", "MODE", "SCHEDULER", "BACKEND", "WEIGHT", "CONNS"]
               + (["HEALTH"] if checked else []), rows)
    if r.get("counters"):
        click.echo()
        _table(["COUNTER", "VALUE"], sorted(r["counters"].items()))
    rest = {k: v for k, v in r.items()
            if k not in ("flow_count", "vips", "draining", "counters")}
    if rest:
        click.echo()
        _render_mapping(rest)


def _render_health(r):
    click.echo("interface: %s" % (r.get("interface") or "none (dsr services cannot be checked)"))
    rows = [[b["vip"], b["backend"], b["probe"], health_text(b) if "state" in b else None]
            for b in r.get("backends", [])]
    if rows:
        click.echo()
        _table(["VIP", "BACKEND", "PROBE", "HEALTH"], rows)
    rest = {k: v for k, v in r.items() if k not in ("interface", "backends")}
    if rest:
        click.echo()
        _render_mapping(rest)


def _flatten(d, prefix=""):
    for k, v in d.items():
        name = "%s.%s" % (prefix, k) if prefix else str(k)
        if isinstance(v, dict) and v:
            yield from _flatten(v, name)
        else:
            yield name, v


def _render_mapping(d):
    if not isinstance(d, dict):
        click.echo(json.dumps(d))
        return
    items = list(_flatten(d))
    width = max((len(k) for k, _ in items), default=0)
    for k, v in items:
        click.echo("%s  %s" % ((k + ":").ljust(width + 1),
                               json.dumps(v) if isinstance(v, (list, dict)) else v))


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
