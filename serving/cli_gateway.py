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
    from pipeline.atrest import sealer_for
    from serving.gateway import Gateway, server_tls_context

    current = settings()
    sealer = sealer_for(current.at_rest_key_path)  # opens only
    tls = (server_tls_context(current.tls_cert_file, current.tls_key_file)  # type: ignore[arg-type]
           if current.is_tls else None)
    with redis_url_for(current.redis_url, current.data_dir, tls=current.embedded_tls, is_admin=False) as url:

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            gateway = Gateway(url, host=host, port=port, sealer=sealer, ssl_context=tls)
            await gateway.start()
            typer.echo(f"gateway listening on {gateway.url}", err=False)
            try:
                await stop.wait()
            finally:
                await gateway.stop()

        run_event_loop(main())
