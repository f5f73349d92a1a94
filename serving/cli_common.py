"""What every CLI command group shares: settings read once, the Redis lease, failing clearly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import redis
import typer

from pipeline.config import Settings, load_settings
from pipeline.redis_server import connect, redis_url_for

__all__ = ["settings", "redis_client", "fail"]


class _State:
    settings: Settings | None = None


def settings() -> Settings:
    """The process's settings, read on first use and then shared by every command."""
    if _State.settings is None:
        _State.settings = load_settings()
    return _State.settings


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def redis_client() -> Iterator[redis.Redis]:
    """A client on the configured Redis, or on the shared embedded Valkey for this command."""
    current = settings()
    with redis_url_for(current.redis_url, current.data_dir, tls=current.embedded_tls) as url:
        client = connect(url)
        try:
            yield client
        finally:
            client.close()
