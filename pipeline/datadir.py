"""The data directory is private: 0700 folders, 0600 files, whatever the caller's umask.

It holds the Valkey passwords, the AOF (every tenant's secrets and pushes), the MLflow store and
the logs, so nobody else on the machine may list or read it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "private_dir", "write_private"]

# For the processes that write into the data directory (valkey-server, the CLI and what it starts).
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; an existing one is narrowed to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for a folder that exists (an older
    # pushpilot made them 0755).
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file, atomically (a reader sees old or new, whole)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
