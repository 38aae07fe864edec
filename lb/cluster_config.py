"""The `[cluster]` table of lbd's config (lb/cluster.py runs it): parsed here, apart from
lb/cluster.py, so that lb/config.py can import it (lb/cluster.py imports lb/config.py).

Invariants: errors are LBError naming the dotted field (`cluster.etcd[1]`); unknown keys
are errors; parse(dump(c)) == c.
"""
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from .errors import LBError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PREFIX = "/threeway/"
DEFAULT_TTL = 3
KEYS = ("name", "etcd", "instance", "mgmt", "lease_ttl")


@dataclass
class ClusterConfig:
    name: str
    etcd: tuple                     # URLs, "http://IP:PORT"
    instance: str
    mgmt: str = None                # the instance's management address, None: found out
    lease_ttl: int = DEFAULT_TTL

    @property
    def config_key(self):
        return config_key(self.name)

    @property
    def members_prefix(self):
        return members_prefix(self.name)


def config_key(name):
    return "%s%s/config" % (PREFIX, name)


def members_prefix(name):
    return "%s%s/members/" % (PREFIX, name)


def secret_key(name):
    """The cluster's SYN-cookie key (lb/cluster.py splice_secret)."""
    return "%s%s/splice_secret" % (PREFIX, name)


def check_name(value, fld):
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise LBError(fld, "must be 1-64 characters of [A-Za-z0-9_.-], got %r" % (value,))
    return value


def parse_url(value, fld):
    """An etcd client URL http://HOST:PORT (the gateway; no TLS here) -> normalised text."""
    if not isinstance(value, str):
        raise LBError(fld, "must be a URL string like \"http://198.19.0.3:2379\", got %r"
                      % (value,))
    u = urllib.parse.urlsplit(value)
    if u.scheme != "http" or not u.hostname or u.path not in ("", "/") or u.query:
        raise LBError(fld, "must be http://HOST:PORT (etcd's client URL), got %r" % (value,))
    try:
        port = u.port or 2379
    except ValueError:
        raise LBError(fld, "bad port in %r" % (value,)) from None
    return "http://%s:%d" % (u.hostname, port)


def parse_urls(value, fld):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise LBError(fld, "must be a URL or a non-empty list of URLs, got %r" % (value,))
    return tuple(parse_url(v, "%s[%d]" % (fld, i) if len(value) > 1 else fld)
                 for i, v in enumerate(value))


def parse(raw, path="cluster"):
    """ClusterConfig of a [cluster] table (None: no table, not in cluster mode)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise LBError(path, "must be a table ([cluster])")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise LBError("%s.%s" % (path, unknown[0]), "unknown key (have: %s)" % ", ".join(KEYS))
    for k in ("name", "etcd", "instance"):
        if k not in raw:
            raise LBError("%s.%s" % (path, k), "missing")
    c = ClusterConfig(name=check_name(raw["name"], path + ".name"),
                      etcd=parse_urls(raw["etcd"], path + ".etcd"),
                      instance=check_name(raw["instance"], path + ".instance"))
    if "mgmt" in raw:
        try:
            c.mgmt = str(ipaddress.IPv4Address(raw["mgmt"]))
        except (ValueError, TypeError):
            raise LBError(path + ".mgmt", "must be an IPv4 address, got %r" % (raw["mgmt"],)) \
                from None
    if "lease_ttl" in raw:
        t = raw["lease_ttl"]
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= 60:
            raise LBError(path + ".lease_ttl", "must be a number of seconds 1..60, got %r"
                          % (t,))
        c.lease_ttl = t
    return c


def dump(c):
    """The [cluster] table of a ClusterConfig (parse(dump(c)) == c)."""
    d = {"name": c.name, "etcd": list(c.etcd) if len(c.etcd) > 1 else c.etcd[0],
         "instance": c.instance}
    if c.mgmt is not None:
        d["mgmt"] = c.mgmt
    d["lease_ttl"] = c.lease_ttl
    return d


