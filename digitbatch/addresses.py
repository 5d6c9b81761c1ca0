"""What a Dask scheduler address may look like: checked before anything is started.

Pure string checks (no Dask import, no network): :func:`address_problem`
says what is wrong with an address, :func:`valid_host` whether a host is a
host name or an IP address. :func:`digitbatch.cluster.check_address` uses
them on the effective ``--scheduler``, and :func:`local_host` on the
interface a LocalCluster listens on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re

from .errors import SchedulerAddressError

log = logging.getLogger(__name__)

# What a LocalCluster listens on; the environment may name another interface.
LOCAL_HOST_ENV = "DIGITBATCH_LOCAL_HOST"
LOCAL_HOST = "127.0.0.1"

# Dask's transports that take HOST:PORT (and inproc://, the in-process one).
HOST_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")


def valid_host(host: str) -> bool:
    """A host name, an IPv4 address, or an IPv6 address in brackets."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()


def _host_port_problem(location: str) -> str | None:
    """What is wrong with ``HOST:PORT`` (None when nothing is)."""
    if "/" in location or "?" in location or "#" in location:
        return "it has a path after HOST:PORT"
    host, sep, port = location.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        return "it has no :PORT"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    if not host or not valid_host(host):
        return f"host {host!r} is not a host name or IP address"
    return None


def address_problem(address: str) -> str | None:
    """What is wrong with a scheduler ``address`` other than local/synchronous
    (``SCHEME://HOST:PORT``, ``HOST:PORT`` or ``inproc://...``); None when nothing is."""
    scheme, sep, location = address.partition("://")
    if not sep:
        scheme, location = "tcp", address
    if scheme == "inproc":
        return None if location else "it names no in-process address"
    if scheme not in HOST_SCHEMES:
        return f"{scheme + '://'!r} is not one of Dask's transports ({', '.join(HOST_SCHEMES)})"
    return _host_port_problem(location)


def local_host() -> str:
    """The interface a LocalCluster listens on: loopback, or ``$DIGITBATCH_LOCAL_HOST``."""
    host = os.environ.get(LOCAL_HOST_ENV, "").strip() or LOCAL_HOST
    if not valid_host(host):
        raise SchedulerAddressError(f"${LOCAL_HOST_ENV} {host!r} is not a host name or IP "
                                    f"address: unset it to listen on {LOCAL_HOST} only")
    if host != LOCAL_HOST:
        log.warning("the LocalCluster listens on %s ($%s), not only on %s", host,
                    LOCAL_HOST_ENV, LOCAL_HOST)
    return host
