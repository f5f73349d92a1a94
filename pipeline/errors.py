"""Errors raised by our code. Each says what, what we got, and how to fix it."""

from __future__ import annotations

__all__ = [
    "PushError",
    "InvalidInputError",
    "UnknownTenantError",
    "TenantExistsError",
    "NoModelError",
    "AuthError",
]


class PushError(Exception):
    """Base class for errors raised by pushpilot."""


class InvalidInputError(PushError, ValueError):
    """Input that we refuse, with the field and the problem; nothing was changed."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class UnknownTenantError(PushError):
    def __init__(self, tenant_id: str):
        super().__init__(
            f"no tenant {tenant_id!r}; create it with `pushpilot tenant create {tenant_id}`"
        )
        self.tenant_id = tenant_id


class TenantExistsError(PushError):
    def __init__(self, tenant_id: str):
        super().__init__(f"tenant {tenant_id!r} already exists")
        self.tenant_id = tenant_id


class NoModelError(PushError):
    def __init__(self, tenant_id: str, kind: str = "propensity"):
        super().__init__(
            f"no {kind} champion registered for tenant {tenant_id!r}; "
            "train and register one before scoring"
        )
        self.tenant_id = tenant_id
        self.kind = kind


class AuthError(PushError):
    """A missing, unknown or insufficient API key."""
