"""Configuration in etcd (issue 16): the `[cluster]` table, the VIP-table document in etcd,
lbd's agent that watches it and registers the instance, and lbctl --cluster's
compare-and-swap writer.

```toml
[cluster]
name = "lab"                          # [A-Za-z0-9_.-]{1,64}: the key prefix /threeway/<name>/
etcd = "http://198.19.0.3:2379"       # or a list of URLs (tried in turn)
instance = "lb1"                      # this lbd's member name (same charset)
mgmt = "198.19.0.3"                   # optional: its management address (default: the local
                                      # address of its connection to etcd)
lease_ttl = 3                         # optional: seconds of its membership lease (1..60)
```

Keys (etcd v3, one cluster per name):
    /threeway/<name>/config              the VIP-table document: TOML text of `[[vip]]`
                                         tables exactly as `lbctl save` writes them (lb/running.py
                                         dump_vip); nothing else at its top level. One put = one
                                         revision = one atomic change. "" = no VIPs.
    /threeway/<name>/members/<instance>  JSON {instance, data, mgmt, sync, pid, started}, put
                                         with a lease of lease_ttl s that lbd keeps alive
                                         (sync: the [sync] listen address when lbd has one)
    /threeway/<name>/splice_secret       the SYN-cookie key, 32 hex digits: put once by the
                                         first lbd to start (create-if-absent), read by all at
                                         start (splice_secret), so cookies hold on any instance

Invariants:
- A document is validated as the instance's own config with its [[vip]] replaced (merge():
  the instance's [lb], [io], [flows], [health] and [cluster] from its file, the VIPs from
  the document), by config.parse, and applied with LBState.apply_config: one commit, as a
  reload of a file is. A document that does not parse or validate is refused whole: logged,
  counted (refused), shown in status (last_refused: revision, field, message); the instance
  keeps running its last good table. Deleting the key is refused the same way.
- Revisions are applied in order and at most once: every document the watch delivers goes
  through the daemon's event loop (loop.call_soon_threadsafe, FIFO) and a mod_revision not
  above the one last seen is skipped; after a reconnect the agent reads the key again, so a
  change made while it was away is caught up (and the watch continues from that read's
  revision: nothing between is lost).
- etcd unreachable: forwarding goes on with what runs; the agent retries with backoff
  (0.2 s doubling to BACKOFF_MAX_S) and says so (status cluster.connected false,
  last_error, since; metrics threeway_cluster_connected 0). A dead server is noticed by
  the watch stream closing, or by a failed lease keep-alive, which also cuts the watch.
- While in cluster mode lbd refuses local changes of the VIP table (vip/backend/rule
  commands, restore, reload, SIGHUP) with an error that names `lbctl --cluster`: etcd is
  the one source of truth. `health.interface` stays local (it names this host's interface).
- lbctl --cluster URL runs the same LBState command code the daemon runs, on an LBState
  over a small engine of its own holding the document's VIPs (Editor), so a bad argument
  is the same LBError naming the field, and nothing is written. The write is a txn whose
  compare is the document's mod_revision as read (0: the key does not exist yet). On a
  conflict it reads again and re-runs the same command (up to CAS_TRIES times): the
  command is re-validated against the newer table, so no update is lost and none is
  applied to a table it was not checked against. With expect_revision it fails instead.
- Membership: members() is the live map {instance: info} (from one read, then the watch),
  and subscribe(fn) calls fn(members) in the daemon's event loop on every change.
"""
import copy
import json
import logging
import os
import re
import socket
import threading
import time
import tomllib
import urllib.parse

import tomli_w

from . import cluster_config, config, running
from .errors import LBError

log = logging.getLogger("lbd.cluster")

API = "/v3/"                 # etcd 3.4's gateway (tools/etcd.py)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 5.0
REQUEST_TIMEOUT_S = 2.0
CAS_TRIES = 10
DOC_KEYS = ("vip",)
# the control commands that change the VIP table, and those that read it
WRITE_CMDS = ("vip.add", "vip.set", "vip.del", "vip.health", "backend.add", "backend.del",
              "backend.weight", "rule.add", "rule.del")
READ_CMDS = ("vip.list", "rule.list")
LOCAL_REFUSED = WRITE_CMDS + ("config.restore", "config.reload")


# --- [cluster]: lb/cluster_config.py (config.py imports it; this module imports config) ---------

ClusterConfig, config_key, members_prefix = (cluster_config.ClusterConfig,
                                             cluster_config.config_key,
                                             cluster_config.members_prefix)
check_name, parse_url, parse_urls = (cluster_config.check_name, cluster_config.parse_url,
                                     cluster_config.parse_urls)
parse, dump = cluster_config.parse, cluster_config.dump
PREFIX, DEFAULT_TTL = cluster_config.PREFIX, cluster_config.DEFAULT_TTL


# --- the document --------------------------------------------------------------------------

def dump_document(vips):
    """The document's TOML text of a list of VipConfig."""
    if not vips:
        return ""
    return tomli_w.dumps({"vip": [running.dump_vip(v) for v in vips]})


def load_document(text, source):
    """The document's dict; LBError naming `source` for bad TOML or a key that is not vip."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LBError(source, "not UTF-8 text: %s" % e) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LBError(source, "TOML syntax error: %s" % e) from None
    config.check_keys(doc, list(DOC_KEYS), "")
    return doc


def merge(base, text, source):
    """Config `base` (the instance's own) with its [[vip]] replaced by the document's,
    validated whole by config.parse; LBError naming the field, prefixed by source."""
    doc = load_document(text, source)
    data = running.dump(base)
    data.pop("vip", None)
    if "vip" in doc:
        data["vip"] = doc["vip"]
    try:
        cfg = config.parse(data)
    except LBError as e:
        raise LBError(e.field, "%s: %s" % (source, e.message)) from None
    cfg.path = base.path
    return cfg


class Editor:
    """The VIP table of a document as an LBState over a small engine of its own: the daemon's
    own command code (LBState.handle) changes it, so lbctl --cluster validates as lbd does.
    No instance's fixed parts are known here: the balancer address is 0.0.0.0 and [health]
    interface a placeholder (each instance checks the document against its own when it
    applies it, and refuses it if e.g. a dsr VIP's health check needs an interface it has
    not set)."""

    CAPACITY = 1024

    def __init__(self, text, source="document"):
        import fastpath
        from .state import LBState
        doc = load_document(text, source)
        data = {"lb": {"address": "0.0.0.0"}, "health": {"interface": "lo"},
                "vip": doc.get("vip", [])}
        try:
            cfg = config.parse(data)
        except LBError as e:
            raise LBError(e.field, "%s: %s" % (source, e.message)) from None
        self.state = LBState(fastpath.Engine(self.CAPACITY), cfg)

    def handle(self, cmd, args):
        if cmd not in WRITE_CMDS + READ_CMDS:
            raise LBError("cmd", "%s is not a command of the cluster's VIP table (have: %s)"
                          % (cmd, ", ".join(WRITE_CMDS + READ_CMDS)))
        return self.state.handle(cmd, args)

    def text(self):
        return dump_document(self.state.running_config().vips)


# --- etcd over its HTTP/JSON gateway ---------------------------------------------------------

def _b64(s):
    import base64
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def _unb64(s):
    import base64
    return base64.b64decode(s or "")


def _range_end(prefix):
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b)


class EtcdError(Exception):
    """etcd could not be reached or answered with an error."""


class Etcd:
    """The few etcd v3 calls threeway makes, over etcd3gw's client (one per URL, tried in
    turn on a connection failure). Not thread-safe: one per thread."""

    def __init__(self, urls, timeout=REQUEST_TIMEOUT_S):
        import etcd3gw
        self.urls = tuple(urls)
        self.timeout = timeout
        self._clients = []
        for u in self.urls:
            p = urllib.parse.urlsplit(u)
            self._clients.append(etcd3gw.Etcd3Client(host=p.hostname, port=p.port,
                                                     protocol="http", timeout=timeout,
                                                     api_path=API))
        self._i = 0

    @property
    def url(self):
        return self.urls[self._i]

    @property
    def client(self):
        return self._clients[self._i]

    def post(self, path, body):
        from etcd3gw import exceptions as ex
        last = None
        for _ in range(len(self._clients)):
            c = self.client
            try:
                return c.post(c.get_url(path), json=body)
            except (ex.ConnectionFailedError, ex.ConnectionTimeoutError) as e:
                last = e
                self._i = (self._i + 1) % len(self._clients)
            except ex.Etcd3Exception as e:
                raise EtcdError("%s%s: %s" % (self.url, path, e.detail_text or e)) from None
            except ValueError as e:           # not JSON
                raise EtcdError("%s%s: %s" % (self.url, path, e)) from None
        raise EtcdError("cannot reach etcd at %s: %s" % (", ".join(self.urls),
                                                         _short(last)))

    def get(self, key):
        """(value bytes or None, mod_revision (0: no key), header revision)."""
        r = self.post("/kv/range", {"key": _b64(key)})
        rev = int(r.get("header", {}).get("revision", 0))
        kvs = r.get("kvs") or []
        if not kvs:
            return None, 0, rev
        return _unb64(kvs[0].get("value")), int(kvs[0].get("mod_revision", 0)), rev

    def get_prefix(self, prefix):
        """([(key, value, mod_revision)], header revision)."""
        r = self.post("/kv/range", {"key": _b64(prefix), "range_end": _b64(_range_end(prefix))})
        rev = int(r.get("header", {}).get("revision", 0))
        return [(_unb64(kv["key"]).decode(), _unb64(kv.get("value")),
                 int(kv.get("mod_revision", 0))) for kv in r.get("kvs") or []], rev

    def cas_put(self, key, value, mod_revision):
        """Put iff key's mod_revision is mod_revision (0: it does not exist). (succeeded,
        revision of the put or of the store)."""
        r = self.post("/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD",
                         "mod_revision": mod_revision}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
            "failure": []})
        return bool(r.get("succeeded")), int(r.get("header", {}).get("revision", 0))

    def grant(self, ttl):
        r = self.post("/lease/grant", {"TTL": ttl})
        return int(r["ID"])

    def keepalive(self, lease):
        r = self.post("/lease/keepalive", {"ID": lease})
        return int((r.get("result") or {}).get("TTL", -1))

    def put(self, key, value, lease=None):
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.post("/kv/put", body).get("header", {}).get("revision", 0))

    def revoke(self, lease):
        self.post("/kv/lease/revoke", {"ID": lease})

    def watch(self, prefix, start_revision):
        """The watch stream's response (requests, stream=True) on prefix from a revision."""
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(_range_end(prefix)),
                                   "start_revision": start_revision}}
        c = self.client
        try:
            return c.session.post(c.get_url("/watch"), json=body, stream=True,
                                  timeout=(self.timeout, None))
        except Exception as e:
            raise EtcdError("watch on %s: %s" % (self.url, _short(e))) from None


_WHY = re.compile(r"""\[Errno -?\d+\] [^'")\]]*|Connection refused|[Rr]ead timed out""")


def _short(e):
    s = getattr(e, "detail_text", None) or str(e)      # etcd3gw keeps its text there
    m = _WHY.search(s)
    return m.group(0) if m else s[:200]


# --- lbctl --cluster --------------------------------------------------------------------------

class ConflictError(LBError):
    pass


def run_command(urls, name, cmd, args, expect_revision=None, tries=CAS_TRIES, etcd=None):
    """Run one VIP-table command on the cluster's document (read, LBState command, CAS write).
    Returns {"result", "revision" (the document's after: the put's, or as read for a read
    command / a change of nothing), "tries", "written"}. LBError naming the field if the
    command is refused (nothing written); ConflictError when the document moved (after
    `tries` attempts, or at once with expect_revision); EtcdError when etcd is unreachable."""
    e = etcd or Etcd(urls)
    key = config_key(name)
    for attempt in range(1, tries + 1):
        value, mod, _ = e.get(key)
        if expect_revision is not None and mod != expect_revision:
            raise ConflictError("revision", "the document is at revision %d, not %d "
                                "(--expect-revision): nothing written" % (mod, expect_revision))
        ed = Editor(value or b"", "revision %d" % mod)
        before = ed.text()
        result = ed.handle(cmd, args)
        after = ed.text()
        if cmd in READ_CMDS or after == before and value is not None:
            return {"result": result, "revision": mod, "tries": attempt, "written": False}
        ok, rev = e.cas_put(key, after, mod)
        if ok:
            return {"result": result, "revision": rev, "tries": attempt, "written": True}
        if expect_revision is not None:
            raise ConflictError("revision", "the document changed after revision %d "
                                "(--expect-revision): nothing written" % mod)
    raise ConflictError("revision", "the document kept changing under %d attempts: nothing "
                        "written" % tries)


def show(urls, name, etcd=None):
    """{"key", "revision", "document", "vips", "members"} of a cluster."""
    e = etcd or Etcd(urls)
    value, mod, rev = e.get(config_key(name))
    members, _ = e.get_prefix(members_prefix(name))
    return {"key": config_key(name), "revision": mod, "store_revision": rev,
            "exists": value is not None,
            "document": (value or b"").decode("utf-8", errors="replace"),
            "members": {k[len(members_prefix(name)):]: _member(v) for k, v, _ in members}}


def init(urls, name, cfg, force=False, etcd=None):
    """Seed the document from a Config's VIPs. Refused if it exists, unless force (then a
    CAS over the revision read). Returns the new revision."""
    e = etcd or Etcd(urls)
    key = config_key(name)
    text = dump_document(cfg.vips)
    Editor(text, "init")                # the same checks lbctl's commands pass
    value, mod, _ = e.get(key)
    if value is not None and not force:
        raise LBError("init", "%s exists (revision %d); --force replaces it" % (key, mod))
    ok, rev = e.cas_put(key, text, mod)
    if not ok:
        raise ConflictError("revision", "%s changed while init ran: nothing written" % key)
    return rev


SECRET_LEN = 16


def splice_secret(urls, name, etcd=None):
    """The cluster's SYN-cookie key (16 bytes): etcd's secret_key, written once by the first
    instance to ask (a txn that puts only if the key is absent), then read by every one. So a
    cookie one instance made is valid on every other: ECMP may move a handshake between its
    SYN and its ACK (a route change, an instance gone or joined), and a splice or hop
    connection then goes on where the ACK lands. EtcdError if etcd cannot be reached, or if
    the stored key is not SECRET_LEN bytes."""
    e = etcd or Etcd(urls)
    key = cluster_config.secret_key(name)
    for _ in range(3):
        value, mod, _rev = e.get(key)
        if value is not None:
            try:
                secret = bytes.fromhex(value.decode())
            except ValueError:
                secret = b""
            if len(secret) != SECRET_LEN:
                raise EtcdError("%s holds no %d-byte hex key" % (key, SECRET_LEN))
            return secret
        e.cas_put(key, os.urandom(SECRET_LEN).hex(), 0)    # first: absent -> ours
    raise EtcdError("%s: no key after 3 reads" % key)


def _member(v):
    try:
        return json.loads(v)
    except ValueError:
        return {"raw": v.decode("utf-8", errors="replace")}


# --- lbd's agent --------------------------------------------------------------------------------

class Agent:
    """Watches the cluster's prefix and keeps this instance's membership lease alive, in two
    threads; everything it learns is handed to `deliver(fn, *args)` (the daemon passes its
    loop's call_soon_threadsafe), so on_document(text_or_None, mod_revision) and the member
    subscribers run in the event loop, in the order etcd produced them."""

    def __init__(self, ccfg, on_document, member_info, deliver, wall=time.time):
        self.ccfg = ccfg
        self.on_document = on_document
        self.member_info = member_info          # () -> dict (the member key's JSON)
        self.deliver = deliver
        self.wall = wall
        self._stop = threading.Event()
        self._threads = []
        self._resp = None
        self._lock = threading.Lock()
        self._members = {}
        self._subs = []
        self.url = ccfg.etcd[0]
        self.connected = False
        self.since = wall()
        self.last_error = None
        self.last_error_at = None
        self.errors = 0
        self.reconnects = 0
        self.seen_revision = 0          # the document's mod_revision last delivered
        self.store_revision = 0
        self.lease = None
        self.lease_ok = False
        self.mgmt = ccfg.mgmt
        self.on_secret = None           # fn(16 bytes): the cluster's SYN-cookie key, once
        self.secret_error = None        # why it is not known yet (etcd unreachable, bad key)

    # -- what the daemon and other parts use --
    def members(self):
        with self._lock:
            return copy.deepcopy(self._members)

    def subscribe(self, fn):
        """fn(members) in the event loop on every membership change; returns fn."""
        self._subs.append(fn)
        return fn

    def view(self):
        return {"etcd": self.url, "etcd_urls": list(self.ccfg.etcd), "name": self.ccfg.name,
                "instance": self.ccfg.instance, "key": self.ccfg.config_key,
                "connected": self.connected, "since": self.since,
                "last_error": self.last_error, "last_error_at": self.last_error_at,
                "errors": self.errors, "reconnects": self.reconnects,
                "seen_revision": self.seen_revision, "store_revision": self.store_revision,
                "lease": {"id": self.lease, "ok": self.lease_ok, "ttl": self.ccfg.lease_ttl},
                "mgmt": self.mgmt, "members": self.members()}

    def start(self):
        for fn, name in ((self._watch_loop, "cluster-watch"), (self._lease_loop, "cluster-lease")):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout=2.0):
        """Stop both threads; revoke the lease (the member key goes at once) if etcd is there."""
        self._stop.set()
        self._cut_watch()
        for t in self._threads:
            t.join(timeout)

    # -- state changes --
    def _set_connected(self, ok, err=None):
        if err is not None:
            self.errors += 1
            self.last_error = err
            self.last_error_at = self.wall()
        if ok != self.connected:
            self.connected = ok
            self.since = self.wall()
            if ok:
                log.info("cluster %s: connected to etcd %s", self.ccfg.name, self.url)
            else:
                log.warning("cluster %s: etcd %s unreachable (%s); running revision on, "
                            "retrying", self.ccfg.name, self.url, err)

    def _cut_watch(self):
        r = self._resp
        if r is None:
            return
        try:
            fp = r.raw._fp
            s = socket.socket(fileno=os.dup(fp.fileno()))
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.close()
        except Exception:
            pass

    def _doc(self, value, mod):
        if mod <= self.seen_revision and value is not None:
            return
        self.seen_revision = max(self.seen_revision, mod)
        self.deliver(self.on_document, value, mod, self.wall())

    def _set_members(self, members):
        with self._lock:
            if members == self._members:
                return
            self._members = members
        snap = self.members()
        for fn in self._subs:
            self.deliver(fn, snap)

    # -- the watch thread --
    def _watch_loop(self):
        backoff = BACKOFF_MIN_S
        e = Etcd(self.ccfg.etcd)
        key = self.ccfg.config_key
        mpre = self.ccfg.members_prefix
        prefix = "%s%s/" % (PREFIX, self.ccfg.name)
        while not self._stop.is_set():
            try:
                kvs, rev = e.get_prefix(prefix)
                self.url = e.url
                self.store_revision = rev
                members = {}
                doc = None
                for k, v, mod in kvs:
                    if k == key:
                        doc = (v, mod)
                    elif k.startswith(mpre):
                        members[k[len(mpre):]] = _member(v)
                if doc is not None:
                    self._doc(*doc)
                self._set_members(members)
                if self.on_secret is not None:
                    # the cluster's SYN-cookie key, before "connected" (a joining lbd waits
                    # for that, so its workers start with the key); retried on each
                    # reconnect until it is known
                    try:
                        secret = splice_secret(None, self.ccfg.name, etcd=e)
                    except EtcdError as exc:
                        if self.secret_error is None:
                            log.warning("cluster %s: no shared SYN-cookie key yet (%s); this "
                                        "lbd's own serves, so a handshake another instance "
                                        "began fails here", self.ccfg.name, exc)
                        self.secret_error = str(exc)
                    else:
                        fn, self.on_secret, self.secret_error = self.on_secret, None, None
                        self.deliver(fn, secret)
                if self.mgmt is None:
                    self.mgmt = _local_address(e.url)
                resp = e.watch(prefix, rev + 1)
                self._resp = resp
                if resp.status_code != 200:
                    raise EtcdError("watch: HTTP %d" % resp.status_code)
                self._set_connected(True)
                backoff = BACKOFF_MIN_S
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        break
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        raise EtcdError("watch: %s" % msg["error"].get("message", msg["error"]))
                    res = msg.get("result") or {}
                    if res.get("compact_revision") or res.get("canceled"):
                        raise EtcdError("watch canceled (compacted at %s): reading again"
                                        % res.get("compact_revision"))
                    hrev = int((res.get("header") or {}).get("revision", 0))
                    if hrev:
                        self.store_revision = hrev
                    changed = False
                    for ev in res.get("events") or []:
                        kv = ev.get("kv") or {}
                        k = _unb64(kv.get("key")).decode()
                        mod = int(kv.get("mod_revision", 0))
                        deleted = ev.get("type") == "DELETE"
                        if k == key:
                            self._doc(None if deleted else _unb64(kv.get("value")), mod)
                        elif k.startswith(mpre):
                            name = k[len(mpre):]
                            with self._lock:
                                if deleted:
                                    self._members.pop(name, None)
                                else:
                                    self._members[name] = _member(_unb64(kv.get("value")))
                            changed = True
                    if changed:
                        snap = self.members()
                        for fn in self._subs:
                            self.deliver(fn, snap)
                if self._stop.is_set():
                    break
                raise EtcdError("watch stream from %s ended" % e.url)
            except Exception as exc:
                if self._stop.is_set():
                    break
                msg = str(exc) if isinstance(exc, EtcdError) else "%s: %s" % (
                    type(exc).__name__, _short(exc))
                self._set_connected(False, msg)
                self.reconnects += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                r, self._resp = self._resp, None
                if r is not None:
                    try:
                        r.close()
                    except Exception:
                        pass

    # -- the lease thread --
    def _lease_loop(self):
        e = Etcd(self.ccfg.etcd, timeout=max(0.5, self.ccfg.lease_ttl / 3.0))
        key = self.ccfg.members_prefix + self.ccfg.instance
        period = max(0.3, self.ccfg.lease_ttl / 3.0)
        while not self._stop.is_set():
            try:
                if self.lease is None:
                    lease = e.grant(self.ccfg.lease_ttl)
                    if self.mgmt is None:
                        self.mgmt = _local_address(e.url)
                    info = dict(self.member_info(), mgmt=self.mgmt)
                    e.put(key, json.dumps(info, sort_keys=True), lease)
                    self.lease = lease
                    log.info("cluster %s: member %s registered (lease %x, ttl %d s)",
                             self.ccfg.name, self.ccfg.instance, lease, self.ccfg.lease_ttl)
                elif e.keepalive(self.lease) <= 0:
                    log.warning("cluster %s: lease %x expired; registering again",
                                self.ccfg.name, self.lease)
                    self.lease = None
                    continue
                self.lease_ok = True
            except Exception as exc:
                if self._stop.is_set():
                    break
                if self.lease_ok:
                    log.warning("cluster %s: lease keep-alive failed: %s", self.ccfg.name,
                                _short(exc))
                self.lease_ok = False
                self._cut_watch()          # a silent server: the watch must notice too
            self._stop.wait(period)
        if self.lease is not None:         # here: this thread is in lbd's namespace
            try:
                Etcd(self.ccfg.etcd, timeout=0.5).revoke(self.lease)
                self.lease = None
            except Exception:
                pass


def _local_address(url):
    """The local address this host uses to reach url's host (no packet is sent)."""
    p = urllib.parse.urlsplit(url)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((p.hostname, p.port or 2379))
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


# --- the daemon's side: apply documents -------------------------------------------------------

class Runtime:
    """What lbd runs of the cluster: the agent, and the documents applied to LBState.
    apply(text, mod_revision, seen_wall) runs in the event loop (Agent.deliver)."""

    def __init__(self, state, cfg, wall=time.time):
        self.state = state
        self.cfg = cfg
        self.ccfg = cfg.cluster
        self.wall = wall
        self.revision = 0               # the document revision running (0: the file's VIPs)
        self.applied_at = None          # wall time it was applied
        self.apply_ms = None            # how long the apply took
        self.applied = 0
        self.refused = 0
        self.last_refused = None
        self.agent = None
        self.history = []               # (revision, applied_at) of the last HISTORY applies
        self.secret = None              # "cluster" once the cluster's SYN-cookie key is in use
        self.started = wall()
        self._subs = []                 # subscribe() before start(): handed to the agent

    HISTORY = 64

    def _take_secret(self, secret):
        """The cluster's SYN-cookie key (Agent.on_secret, in the event loop) into the
        engines: until it comes (etcd unreachable at start) this lbd's own key serves, so
        its own cookies hold but a handshake another instance began does not."""
        self.state.engine.set_splice_secret(secret)
        self.secret = "cluster"
        log.info("cluster %s: the cluster's SYN-cookie key is in use", self.ccfg.name)

    def start(self, loop):
        def deliver(fn, *a):
            loop.call_soon_threadsafe(fn, *a)
        self.agent = Agent(self.ccfg, self.apply, self.member_info, deliver, self.wall)
        self.agent.on_secret = self._take_secret
        for fn in self._subs:
            self.agent.subscribe(fn)
        self.agent.start()

    def stop(self):
        if self.agent is not None:
            self.agent.stop()

    def member_info(self):
        sync = getattr(getattr(self.cfg, "sync", None), "listen", None)
        return {"instance": self.ccfg.instance, "data": self.cfg.lb.address,
                "sync": sync, "pid": os.getpid(), "started": self.started}

    def members(self):
        return self.agent.members() if self.agent is not None else {}

    def subscribe(self, fn):
        """fn(members) in the event loop on every change of the member list (flow sync's
        peers); before or after start()."""
        if self.agent is not None:
            return self.agent.subscribe(fn)
        self._subs.append(fn)
        return fn

    def apply(self, value, mod, seen_wall=None):
        if mod <= self.revision:
            return
        source = "%s revision %d" % (self.ccfg.config_key, mod)
        t0 = time.monotonic()
        try:
            if value is None:
                raise LBError("document", "%s was deleted; keeping revision %d"
                              % (self.ccfg.config_key, self.revision))
            new = merge(self.state.running_config(), value, source)
            d = self.state.apply_config(new)
        except LBError as e:
            self.refused += 1
            self.last_refused = {"revision": mod, "field": e.field, "message": e.message,
                                 "at": self.wall()}
            log.error("cluster %s: %s refused, running revision %d on: %s",
                      self.ccfg.name, source, self.revision, e)
            return
        except Exception as e:              # a bug; keep running what runs
            self.refused += 1
            self.last_refused = {"revision": mod, "field": "internal",
                                 "message": "%s: %s" % (type(e).__name__, e), "at": self.wall()}
            log.exception("cluster %s: applying %s failed", self.ccfg.name, source)
            return
        self.apply_ms = round((time.monotonic() - t0) * 1000.0, 3)
        self.revision = mod
        self.applied_at = self.wall()
        self.applied += 1
        self.history.append((mod, self.applied_at))
        del self.history[:-self.HISTORY]
        log.info("cluster %s: applied revision %d in %.1f ms: %s", self.ccfg.name, mod,
                 self.apply_ms, running.summary(d))

    def view(self):
        out = self.agent.view() if self.agent is not None else {}
        out.update(revision=self.revision, applied_at=self.applied_at, apply_ms=self.apply_ms,
                   applied=self.applied, refused=self.refused, last_refused=self.last_refused,
                   splice_secret=self.secret or "local: %s" % (
                       (self.agent and self.agent.secret_error) or "not read yet"),
                   history=[list(h) for h in self.history[-8:]])
        return out

    def check_local(self, cmd):
        """LBError for a local change of the VIP table while in cluster mode."""
        if cmd in LOCAL_REFUSED:
            raise LBError("cmd", "%s: this lbd takes its VIP table from etcd (cluster %s, "
                          "key %s, revision %d); change it with `lbctl --cluster %s --name %s "
                          "...`" % (cmd, self.ccfg.name, self.ccfg.config_key, self.revision,
                                    self.ccfg.etcd[0], self.ccfg.name))


def metric_families(view):
    """Prometheus families of a Runtime.view() (lb/metrics.py yields them)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    if not view:
        return
    yield GaugeMetricFamily("threeway_cluster_connected", "1 while lbd's watch on etcd runs "
                            "(lb/cluster.py)", value=1 if view.get("connected") else 0)
    yield GaugeMetricFamily("threeway_cluster_revision", "the etcd revision of the VIP-table "
                            "document lbd runs (0: its file's)", value=view.get("revision", 0))
    yield GaugeMetricFamily("threeway_cluster_members", "live members of the cluster",
                            value=len(view.get("members") or {}))
    yield CounterMetricFamily("threeway_cluster_applied", "documents applied",
                              value=view.get("applied", 0))
    yield CounterMetricFamily("threeway_cluster_refused", "documents refused (bad or deleted)",
                              value=view.get("refused", 0))
    yield CounterMetricFamily("threeway_cluster_etcd_errors", "failed etcd requests and "
                              "watch streams", value=view.get("errors", 0))
    if view.get("apply_ms") is not None:
        yield GaugeMetricFamily("threeway_cluster_apply_seconds", "time the last apply took",
                                value=view["apply_ms"] / 1000.0)
