"""The standalone realtime gateway: a plain asyncio WebSocket server fanning inboxes out to devices.

It speaks what the ``/v1/inbox`` route of the HTTP API speaks: ``ws://host:port/v1/inbox?token=
<user token>[&last_id=<entry id>]``; each inbox entry goes out as one JSON text frame with its
``id``; the device answers ``{"ack": <id>, "push_id": <push>}``, which counts only when that id
is an entry of the device's own inbox carrying that push (``receipts.ack_inbox``). Unlike the
route, it holds no
Redis connection per device: one pub/sub connection per gateway listens to the tenants'
``keys.inbox_channel`` (subscribed when a tenant's first device connects) and wakes the
connections of the announced users, which then read the user's inbox from their cursor. A device
resumes after ``last_id``, else after the last id it acked (the stored cursor), so nothing is
missed while it was offline and, with ``last_id``, nothing arrives twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio as aioredis
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pipeline import keys, receipts, tenants
from pipeline.atrest import Sealer
from pipeline.errors import AuthError
from pipeline.outbox import inbox_frame
from pipeline.redis_server import SENTINEL_SCHEME, connect, connect_async

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

_PATH = "/v1/inbox"
# A pub/sub message can be lost (e.g. while resubscribing after a Redis restart), so an idle
# connection looks at its inbox this often anyway.
_RECHECK_SECONDS = 5.0


def server_tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """TLS 1.2+ server context for wss:// from a PEM certificate chain and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


class Gateway:
    """Start with ``await gateway.start()``; ``gateway.port`` is the port it listens on."""

    def __init__(self, redis_url: str, *, host: str = "127.0.0.1", port: int = 0,
                 batch: int = 200, ack_flush_ms: int = 20, sealer: Sealer | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self.redis_url = redis_url
        self._ssl = ssl_context  # wss:// when given (server_tls_context)
        self._sealer = sealer  # opens messages stored encrypted (pipeline.atrest)
        self.host = host
        self.port = port
        self.batch = batch
        self.ack_flush_ms = ack_flush_ms
        self._ar: aioredis.Redis | None = None
        self._r: redis.Redis | None = None  # for receipts, run in a thread
        self._pubsub: aioredis.client.PubSub | None = None
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        self._ready: dict[str, asyncio.Event] = {}  # tenant -> its channel is subscribed
        self._to_subscribe: asyncio.Queue[str] = asyncio.Queue()
        self._channels: dict[str, str] = {}  # channel -> tenant
        # tenant -> the acks its devices sent since the last flush
        self._acks: dict[str, list[receipts.InboxAck]] = defaultdict(list)
        self._reads: list[tuple[str, str, asyncio.Future[Any]]] = []

    @property
    def url(self) -> str:
        return f"{'wss' if self._ssl else 'ws'}://{self.host}:{self.port}{_PATH}"

    async def start(self) -> None:
        # Blocking pool: with more devices than connections, a read waits for one, not fails.
        if self.redis_url.startswith(f"{SENTINEL_SCHEME}:"):
            # Behind Sentinel the client must find the primary again after a failover.
            self._ar = connect_async(self.redis_url, max_connections=64)
        else:
            # Blocking pool: with more devices than connections, a read waits for one.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.redis_url, decode_responses=True, max_connections=64, timeout=None
            )
            self._ar = aioredis.Redis(connection_pool=pool)
        self._r = connect(self.redis_url)
        self._pubsub = self._ar.pubsub(ignore_subscribe_messages=True)
        self._server = await serve(self._handle, self.host, self.port, max_queue=64,
                                   compression=None, ssl=self._ssl)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        self._tasks = [asyncio.create_task(self._flush()), asyncio.create_task(self._listen())]
        log.info("gateway listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush_acks()
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._ar is not None:
            await self._ar.aclose(close_connection_pool=True)
        if self._r is not None:
            self._r.close()

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # --- connections --------------------------------------------------------------------------

    async def _authenticate(self, token: str) -> tuple[str, str]:
        assert self._ar is not None
        tenant_id = tenants.peek_token_tenant(token)
        keys.validate_tenant_id(tenant_id)
        secret = await self._ar.get(keys.tenant_secret(tenant_id))
        if secret is None:
            raise AuthError("unknown tenant")
        return tenants.verify_user_token(bytes.fromhex(secret), token)

    async def _handle(self, ws: ServerConnection) -> None:
        assert self._ar is not None and ws.request is not None
        url = urlsplit(ws.request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path != _PATH:
            await ws.close(4404, f"no such path; connect to {_PATH}")
            return
        try:
            tenant_id, user_id = await self._authenticate(query.get("token", ""))
        except (AuthError, ValueError) as e:
            await ws.close(4401, str(e)[:120])
            return
        stream = keys.inbox_stream(tenant_id, user_id)
        last_id = query.get("last_id")
        if last_id is not None and not receipts.is_entry_id(last_id):
            await ws.close(4400, "last_id must be an inbox entry id like 1712345678901-0")
            return
        cursor = last_id or await self._stored_cursor(tenant_id, user_id)
        wake = asyncio.Event()
        self._waiters[tenant_id, user_id].add(wake)
        acks = asyncio.create_task(self._read_acks(ws, tenant_id, user_id, wake))
        try:
            await self._subscribe(tenant_id)
            while not acks.done():
                wake.clear()
                reply = await self._xread(stream, cursor)
                read = 0
                for _, messages in reply:
                    for entry_id, fields in messages:
                        if self._sealer is not None:
                            fields = await self._sealer.frame_fields(self._ar, tenant_id, fields)
                        await ws.send(inbox_frame(entry_id, fields))
                        cursor = entry_id
                    read += len(messages)
                # A short read means caught up; what arrived since then set ``wake`` again.
                if read < self.batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), _RECHECK_SECONDS)
        except ConnectionClosed:
            pass
        except redis.RedisError as e:
            log.warning("inbox of a %s user closed: %s", tenant_id, e)
            await ws.close(1011, "the inbox store is unavailable; reconnect in a few seconds")
        finally:
            acks.cancel()
            waiters = self._waiters[tenant_id, user_id]
            waiters.discard(wake)
            if not waiters:
                del self._waiters[tenant_id, user_id]

    async def _stored_cursor(self, tenant_id: str, user_id: str) -> str:
        """Where the user's devices left off; one unreadable (stored before acks were checked)
        means from the start: a push twice rather than none."""
        assert self._ar is not None
        stored = await self._ar.get(keys.inbox_cursor(tenant_id, user_id))
        return stored if receipts.is_entry_id(stored) else "0-0"

    async def _read_acks(
        self, ws: ServerConnection, tenant_id: str, user_id: str, wake: asyncio.Event
    ) -> None:
        try:
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                entry_id, push_id = message.get("ack"), message.get("push_id")
                if receipts.is_entry_id(entry_id):
                    self._acks[tenant_id].append(receipts.InboxAck(
                        user_id, entry_id, push_id if isinstance(push_id, str) else ""))
        except ConnectionClosed:
            pass
        finally:
            wake.set()  # the sender loop sees the device is gone at once

    async def _xread(self, stream: str, cursor: str) -> Any:
        """XREAD, batched: the reads of every connection woken in one loop tick share a pipeline."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._reads.append((stream, cursor, future))
        if len(self._reads) == 1:
            asyncio.get_running_loop().call_soon(
                lambda: self._tasks.append(asyncio.create_task(self._run_reads())))
        return await future

    async def _run_reads(self) -> None:
        assert self._ar is not None
        reads, self._reads = self._reads, []
        self._tasks = [t for t in self._tasks if not t.done()]
        # One XREAD per round of distinct streams (two devices of one user read it twice).
        rounds: list[dict[str, str]] = [{}]
        for stream, cursor, _ in reads:
            target = next((r for r in rounds if stream not in r), None)
            if target is None:
                target = {}
                rounds.append(target)
            target[stream] = cursor
        pipe = self._ar.pipeline(transaction=False)
        for streams in rounds:
            pipe.xread(streams, count=self.batch)
        try:
            replies = await pipe.execute()
        except redis.RedisError as e:
            for _, _, future in reads:
                if not future.done():
                    future.set_exception(e)
            return
        by_read: dict[tuple[str, str], Any] = {}
        for streams, reply in zip(rounds, replies, strict=True):
            entries = {stream: messages for stream, messages in reply or ()}
            for stream, cursor in streams.items():
                by_read[stream, cursor] = [(stream, entries[stream])] if stream in entries else []
        for stream, cursor, future in reads:
            if not future.done():
                future.set_result(by_read[stream, cursor])

    # --- pub/sub and acks ---------------------------------------------------------------------

    async def _subscribe(self, tenant_id: str) -> None:
        """Returns once the tenant's channel is subscribed, so no announcement slips past."""
        ready = self._ready.get(tenant_id)
        if ready is None:
            ready = self._ready[tenant_id] = asyncio.Event()
            self._channels[keys.inbox_channel(tenant_id)] = tenant_id
            self._to_subscribe.put_nowait(tenant_id)
        await ready.wait()

    async def _listen(self) -> None:
        # The only task that touches the pub/sub connection: redis-py's PubSub is not safe to
        # subscribe on while another task waits for its messages.
        assert self._pubsub is not None
        while True:
            try:
                if not self._pubsub.subscribed:
                    await self._subscribe_queued(await self._to_subscribe.get())
                while not self._to_subscribe.empty():
                    await self._subscribe_queued(self._to_subscribe.get_nowait())
                message = await self._pubsub.get_message(timeout=0.05)
            except redis.ConnectionError:
                log.warning("gateway lost its pub/sub connection; retrying in a second")
                await asyncio.sleep(1.0)
                continue
            if message is None or message["type"] != "message":
                continue
            tenant_id = self._channels.get(message["channel"], "")
            for user_id in message["data"].split("\n"):
                for wake in self._waiters.get((tenant_id, user_id), ()):
                    wake.set()

    async def _subscribe_queued(self, tenant_id: str) -> None:
        assert self._pubsub is not None
        await self._pubsub.subscribe(keys.inbox_channel(tenant_id))
        self._ready[tenant_id].set()

    async def _flush(self) -> None:
        while True:
            await asyncio.sleep(self.ack_flush_ms / 1000)
            try:
                await self._flush_acks()
            except redis.RedisError:
                log.exception("could not record acks; keeping them for the next flush")

    async def _flush_acks(self) -> None:
        assert self._r is not None
        pending, self._acks = self._acks, defaultdict(list)
        try:
            while pending:
                tenant_id, acks = next(iter(pending.items()))
                # Checked against each user's own inbox, in the script (receipts.ack_inbox).
                await asyncio.to_thread(receipts.ack_inbox, self._r, tenant_id, acks)
                del pending[tenant_id]
        except redis.RedisError:
            # Keep what was not written for the next flush (the cursor only moves forward,
            # so the order does not matter).
            for tenant_id, acks in pending.items():
                self._acks[tenant_id][:0] = acks
            raise
