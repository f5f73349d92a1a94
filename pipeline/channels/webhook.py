"""The webhook channel: POST each push to the tenant's URL, signed with the tenant's secret.

Headers: ``X-Pushpilot-Timestamp`` (epoch seconds), ``X-Pushpilot-Signature`` =
``v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` and ``X-Pushpilot-Push-Id`` (the idempotency
key: a receiver that sees an id twice after a retry drops the second). A 2xx is delivered; a 5xx,
408, 429, timeout or connection error is retried with backoff; any other 4xx is the tenant's
answer that this push will never be accepted, so it goes to the dead letters at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

from pipeline import tenants
from pipeline.atrest import Sealer, SealError, SealKeyError, is_sealed
from pipeline.channels import SendResult
from pipeline.errors import UnknownTenantError
from pipeline.outbox import entry_content

__all__ = ["WebhookChannel", "sign", "verify", "SIGNATURE_HEADER", "TIMESTAMP_HEADER"]

SIGNATURE_HEADER = "X-Pushpilot-Signature"
TIMESTAMP_HEADER = "X-Pushpilot-Timestamp"
PUSH_ID_HEADER = "X-Pushpilot-Push-Id"
_RETRIED_4XX = (408, 429)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: bytes, timestamp: str, body: bytes, signature: str, *,
    tolerance_seconds: int = 300, now: float | None = None,
) -> bool:
    """What a receiver checks: the signature, and a timestamp recent enough to refuse replays."""
    now = time.time() if now is None else now
    try:
        is_fresh = abs(now - int(timestamp)) <= tolerance_seconds
    except ValueError:
        return False
    return is_fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookChannel:
    name = "webhook"

    def __init__(
        self,
        r: redis.Redis,
        *,
        timeout_seconds: float = 5.0,
        max_concurrency: int = 16,
        config_ttl_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        sealer: Sealer | None = None,
    ):
        self.r = r
        self._sealer = sealer
        self.timeout_seconds = timeout_seconds
        self.config_ttl_seconds = config_ttl_seconds
        self._clock = clock
        self._http = httpx.Client(timeout=timeout_seconds)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency,
                                        thread_name_prefix="webhook")
        self._config: dict[str, tuple[float, str | None, bytes]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    def send_many(
        self, tenant_id: str, pushes: Sequence[Mapping[str, str]]
    ) -> list[SendResult]:
        try:
            url, secret = self._tenant_config(tenant_id)
        except UnknownTenantError as e:
            return [SendResult("retry", f"webhook: {e}")] * len(pushes)
        if url is None:
            return [SendResult("retry", f"webhook: tenant {tenant_id!r} has no webhook URL; "
                                        "set one with tenants.set_webhook_url")] * len(pushes)
        return list(self._pool.map(lambda push: self._post(tenant_id, url, secret, push), pushes))

    def _tenant_config(self, tenant_id: str) -> tuple[str | None, bytes]:
        cached = self._config.get(tenant_id)
        if cached is not None and self._clock() - cached[0] < self.config_ttl_seconds:
            return cached[1], cached[2]
        url, secret = tenants.webhook_url(self.r, tenant_id), tenants.tenant_secret(self.r, tenant_id)
        self._config[tenant_id] = (self._clock(), url, secret)
        return url, secret

    def _post(self, tenant_id: str, url: str, secret: bytes, push: Mapping[str, str]) -> SendResult:
        if self._sealer is not None:
            try:
                push = self._sealer.open_fields(self.r, tenant_id, push)
            except SealKeyError as e:  # this worker's key file: fixable, so try again later
                return SendResult("retry", f"webhook: {e}")
            except SealError as e:  # changed or another push's: it will never open
                return SendResult("permanent", f"webhook: {e}")
        elif is_sealed(push.get("m", "")):
            return SendResult("retry", "webhook: the message is encrypted and this worker has "
                                       "no master key (Settings.at_rest_key_file)")
        content = entry_content(push)
        del content["channel"]
        body = json.dumps(content, separators=(",", ":")).encode()
        timestamp = str(int(self._clock()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(secret, timestamp, body),
                   PUSH_ID_HEADER: push["push_id"]}
        try:
            response = self._http.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            return SendResult("retry", f"webhook: no answer within {self.timeout_seconds}s")
        except httpx.HTTPError as e:
            return SendResult("retry", f"webhook: {type(e).__name__}: {e}")
        status = response.status_code
        if 200 <= status < 300:
            return SendResult("sent", fields={"channel": "webhook", "http_status": status})
        detail = f"webhook: HTTP {status} from {url}"
        if status >= 500 or status in _RETRIED_4XX:
            return SendResult("retry", detail)
        return SendResult("permanent", detail)
