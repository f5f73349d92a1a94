"""`pushpilot gateway`: the standalone realtime WebSocket gateway, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from pipeline.redis_server import redis_url_for
from serving.cli_common import settings
from serving.loop import run_event_loop

__all__ = ["app"]

app = typer.Typer(help="The realtime WebSocket gateway (ws://HOST:PORT/v1/inbox).")


@app.callback(invoke_without_command=True)
def gateway(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free port.")] = 8765,
) -> None:
    """Fan each tenant's inbox events out to connected devices; SIGTERM closes cleanly."""
    from serving.gateway import Gateway

    current = settings()
    with redis_url_for(current.redis_url, current.data_dir, is_admin=False) as url:

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            gateway = Gateway(url, host=host, port=port)
            await gateway.start()
            typer.echo(f"gateway listening on {gateway.url}", err=False)
            try:
                await stop.wait()
            finally:
                await gateway.stop()

        run_event_loop(main())
