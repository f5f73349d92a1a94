"""A device's side of the realtime inbox: connect with a user token, receive pushes, ack each."""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
import time
from dataclasses import dataclass, field

import websockets

__all__ = ["InboxClient", "Received"]


@dataclass(frozen=True, slots=True)
class Received:
    entry_id: str
    push_id: str
    latency_ms: float


@dataclass
class InboxClient:
    """Connects to ``ws://`` or ``wss://.../v1/inbox``; ``received`` fills as pushes arrive,
    each acked once. ``ssl`` is the client context for wss:// (e.g. trusting a private CA)."""

    url: str
    token: str
    ssl: ssl_module.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    last_acked: str | None = None
    _task: asyncio.Task[None] | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), timeout=30)

    async def _run(self) -> None:
        query = f"?token={self.token}" + (f"&last_id={self.last_acked}" if self.last_acked else "")
        options = {"ssl": self.ssl} if self.ssl is not None else {}
        async with websockets.connect(self.url + query, open_timeout=30, **options) as ws:
            self._connected.set()
            async for raw in ws:
                now = time.time()
                message = json.loads(raw)
                enqueued_at = float(message.get("enqueued_at") or now)
                self.received.append(
                    Received(message["id"], message["push_id"], (now - enqueued_at) * 1000.0)
                )
                await ws.send(json.dumps({"ack": message["id"], "push_id": message["push_id"]}))
                self.last_acked = message["id"]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, websockets.ConnectionClosed):
                pass
            self._task = None
            self._connected = asyncio.Event()
