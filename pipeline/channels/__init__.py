"""Delivery channels as plug-ins: each sends a batch of one tenant's pushes and says how it went.

The in-app inbox is built into the delivery worker (it is a Redis write, done inside the worker's
Lua script); every other channel implements ``Channel`` and is passed to ``DeliveryWorker`` by
name, so FCM or APNs senders can follow the webhook one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["Channel", "SendResult", "Outcome"]

Outcome = Literal["sent", "retry", "permanent"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """``sent``; ``retry`` (a transient failure: backoff, then again); ``permanent`` (dead letter)."""

    outcome: Outcome
    detail: str = ""
    fields: Mapping[str, str | int] = field(default_factory=dict)  # added to the status trail


class Channel(Protocol):
    name: str

    def send_many(
        self, tenant_id: str, pushes: Sequence[Mapping[str, str]]
    ) -> list[SendResult]:
        """Send outbox entries (their fields) of one tenant; one result per push, in order."""
        ...
