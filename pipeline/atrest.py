"""Push payloads encrypted at rest: per-tenant data keys, wrapped by the operator's master key.

What a push says (its ``m``: title, body, data) is sealed with AES-256-GCM when it is enqueued,
under the tenant's current data key, and stays sealed wherever the delivery tier copies it: the
outbox, the user's inbox, dead letters, Valkey's AOF and snapshots, and backups. It is opened
only where it leaves pushpilot: the WebSocket frame, the webhook body, a data-subject export.
The associated data binds a sealed message to its push id and key version, so it cannot be
replayed under another push; tenants are kept apart by their own data keys. Neither a message
nor a wrapped key names the tenant, so a tenant restored under a new name (``restore --as``)
still opens its messages.

Keys, in ``keys.data_keys(T)`` (a hash):

- ``k:<version>:<master key id>`` -> the data key of that version, wrapped (AES-GCM) by that
  master key. A version may be wrapped by several master keys while the master key changes.
- ``current`` -> the version new messages are sealed with.

The master key is 32 random bytes in a 0600 file (``Settings.at_rest_key_file``, by default
``<data_dir>/master.key``, made on first use). Every process that enqueues or opens pushes
needs the same file. ``rotate_data_key`` starts a new version for new messages (old versions
stay, to open what they sealed); ``rewrap`` wraps every version under a new master key beside
the old one, so processes can move to the new file one by one, then drops the old wrappings
when asked. A sealed value is ``ppe1:<version>:<base64url(nonce | ciphertext | tag)>``; a plain
one (a JSON object, written with encryption off or before it) is read as it is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline import audit, keys, tenants
from pipeline.config import Settings
from pipeline.errors import InvalidInputError, PushError

__all__ = ["MasterKey", "Sealer", "SealError", "SealKeyError", "is_sealed",
           "load_or_create_master_key", "sealer_for", "ensure_master_key",
           "rotate_data_key", "rewrap", "key_versions", "PREFIX"]

log = logging.getLogger(__name__)

PREFIX = "ppe1:"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_CURRENT = "current"


class SealError(PushError):
    """A sealed value that does not open: another push's, or a changed byte. Trying again
    will not help."""


class SealKeyError(SealError):
    """This process lacks the key to seal or open: no master key file, a master key that does
    not wrap the tenant's data key, or no data key yet. A configuration error: fixing the
    key file and trying again helps."""


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MasterKey:
    """The operator's key-encryption key. It never leaves the file and this object."""

    def __init__(self, secret: bytes, path: Path | None = None):
        if len(secret) != _KEY_BYTES:
            raise ValueError(f"a master key is {_KEY_BYTES} bytes, got {len(secret)}")
        self._aead = AESGCM(bytes(secret))
        self.key_id = hashlib.sha256(b"pushpilot master key id\n" + secret).hexdigest()[:16]
        self.path = path

    def __repr__(self) -> str:  # never print the secret into a log
        return f"MasterKey(key_id={self.key_id!r}, path={str(self.path)!r})"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(_KEY_BYTES))

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        path = Path(path).expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text().strip()
        except FileNotFoundError:
            raise InvalidInputError("at_rest_key_file", f"no master key at {str(path)!r}; `pushpilot "
                                    "serve` creates it on first start, and every process that "
                                    "enqueues or opens pushes needs a copy") from None
        except OSError as e:
            raise InvalidInputError("at_rest_key_file", f"cannot read {str(path)!r}: {e}") from None
        if mode & 0o077:
            raise InvalidInputError(
                "at_rest_key_file", f"{str(path)!r} is readable by others (mode "
                f"{stat.S_IMODE(mode):04o}); whoever reads it can open every push: chmod 600 {path}")
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = b""
        if len(secret) != _KEY_BYTES:
            raise InvalidInputError("at_rest_key_file",
                                    f"{str(path)!r} is not {_KEY_BYTES} bytes of hex")
        return cls(secret, path)

    def save(self, path: Path, secret: bytes) -> None:
        path = Path(path).expanduser()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
        self.path = path

    def wrap(self, tenant_id: str, version: int, data_key: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _b64(nonce + self._aead.encrypt(nonce, data_key, _wrap_aad(tenant_id, version)))

    def unwrap(self, tenant_id: str, version: int, wrapped: str) -> bytes:
        raw = _unb64(wrapped)
        try:
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                      _wrap_aad(tenant_id, version))
        except (InvalidTag, ValueError, IndexError):
            raise SealKeyError(f"data key v{version} of tenant {tenant_id!r} does not unwrap "
                               f"with master key {self.key_id}") from None


def _wrap_aad(tenant_id: str, version: int) -> bytes:
    del tenant_id  # not bound: see the module doc (restore --as)
    return f"pushpilot data key|{version}".encode()


def _message_aad(tenant_id: str, push_id: str, version: int) -> bytes:
    del tenant_id
    return f"pushpilot push|{push_id}|{version}".encode()


def load_or_create_master_key(path: Path) -> MasterKey:
    """The master key at ``path``, or a new one written there 0600 (another process racing to
    create it wins, and its key is used). Only entry points create it (``pushpilot serve``, the
    demo, campaign runs, benchmarks): a process that merely lacks the file must not make a key
    of its own, so everything else loads it (``sealer_for``)."""
    path = Path(path).expanduser()
    if not path.exists():
        secret = secrets.token_bytes(_KEY_BYTES)
        try:
            MasterKey(secret).save(path, secret)
        except FileExistsError:
            pass
    return MasterKey.load(path)


def ensure_master_key(settings: Settings) -> Path:
    """Create the master key file if encryption is on and it is missing; returns its path.
    For entry points that start producers (serve, the demo, campaign runs), before they do."""
    path = Path(settings.at_rest_key_path)
    if settings.encrypt_at_rest:
        load_or_create_master_key(path)
    return path


def sealer_for(key_file: str | Path, *, seals: bool = True) -> Sealer:
    """The Sealer of a process: ``Settings.at_rest_key_path`` and ``Settings.encrypt_at_rest``.

    The key file is read when first needed and never created here (see
    ``load_or_create_master_key``). With ``seals`` false new messages are stored plain, while
    sealed ones still open as long as the key file is there.
    """
    return Sealer(key_file=Path(key_file), seals=seals)


def _field(version: int, master_id: str) -> str:
    return f"k:{version}:{master_id}"


def key_versions(r: redis.Redis, tenant_id: str) -> dict[str, Any]:
    """The tenant's data key versions: current, and per version the master key ids wrapping it."""
    raw = r.hgetall(keys.data_keys(tenant_id))
    versions: dict[int, list[str]] = {}
    for name in raw:
        if name.startswith("k:"):
            _, version, master_id = name.split(":", 2)
            versions.setdefault(int(version), []).append(master_id)
    return {"current": int(raw[_CURRENT]) if _CURRENT in raw else None,
            "versions": {v: sorted(m) for v, m in sorted(versions.items())}}


@dataclass
class _Ring:
    current: int
    aeads: dict[int, AESGCM] = field(default_factory=dict)
    loaded_at: float = 0.0


# KEYS: the tenant's data keys. ARGV: field of the wrapped version-1 key, the wrapped key.
# The first data key and ``current`` in one step, only if the tenant has none: two processes
# racing on a tenant's first push never make two different version-1 keys.
_CREATE_FIRST = """
if redis.call('HEXISTS', KEYS[1], 'current') == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'current', '1')
return 1
"""


class Sealer:
    """Seals and opens one process's push messages; caches the unwrapped data keys.

    A new current version (``rotate_data_key``) reaches a process within ``refresh_seconds``;
    a version it has not seen is loaded when a message names it. The master key comes from
    ``master``, or is read from ``key_file`` when first needed.
    """

    def __init__(self, master: MasterKey | None = None, refresh_seconds: float = 5.0, *,
                 key_file: Path | None = None, seals: bool = True):
        if master is None and key_file is None:
            raise ValueError("give the master key or the file it is in")
        self._master = master
        self._key_file = key_file
        self.seals = seals
        self.refresh_seconds = refresh_seconds
        self._rings: dict[str, _Ring] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = self._master if self._master is not None else f"key_file={str(self._key_file)!r}"
        return f"Sealer({where}, seals={self.seals})"

    @property
    def master(self) -> MasterKey:
        if self._master is None:
            with self._lock:
                if self._master is None:
                    assert self._key_file is not None
                    try:
                        self._master = MasterKey.load(self._key_file)
                    except InvalidInputError as e:
                        raise SealKeyError(e.problem) from None
        return self._master

    def _ring_from(self, tenant_id: str, raw: dict[str, str]) -> _Ring | None:
        if _CURRENT not in raw:
            return None
        ring = _Ring(current=int(raw[_CURRENT]), loaded_at=time.monotonic())
        suffix = f":{self.master.key_id}"
        for name, wrapped in raw.items():
            if name.startswith("k:") and name.endswith(suffix):
                version = int(name.split(":", 2)[1])
                ring.aeads[version] = AESGCM(self.master.unwrap(tenant_id, version, wrapped))
        with self._lock:
            self._rings[tenant_id] = ring
        return ring

    def _ring(self, r: redis.Redis, tenant_id: str, *, need: int | None = None,
              create: bool = False) -> _Ring:
        ring = self._rings.get(tenant_id)
        is_fresh = ring is not None and time.monotonic() - ring.loaded_at < self.refresh_seconds
        if ring is None or not is_fresh or (need is not None and need not in ring.aeads):
            ring = self._ring_from(tenant_id, r.hgetall(keys.data_keys(tenant_id)))
            if ring is None and create:
                ring = self._create(r, tenant_id)
        if ring is None:
            raise SealKeyError(f"tenant {tenant_id!r} has no data key; nothing was sealed for it")
        return ring

    def _create(self, r: redis.Redis, tenant_id: str) -> _Ring:
        tenants.get_tenant(r, tenant_id)
        wrapped = self.master.wrap(tenant_id, 1, secrets.token_bytes(_KEY_BYTES))
        if r.eval(_CREATE_FIRST, 1, keys.data_keys(tenant_id), _field(1, self.master.key_id),
                  wrapped):
            audit.record(r, tenant_id, "system", "data_key.created", "data-key:1",
                         master_key_id=self.master.key_id)
        ring = self._ring_from(tenant_id, r.hgetall(keys.data_keys(tenant_id)))  # whoever won
        assert ring is not None
        return ring

    def seal(self, r: redis.Redis, tenant_id: str, push_id: str, message: str) -> str:
        """``message`` sealed under the tenant's current data key (created on first use);
        as it is when this process does not seal (``encrypt_at_rest = false``)."""
        if not self.seals:
            return message
        ring = self._ring(r, tenant_id, create=True)
        aead = ring.aeads.get(ring.current)
        if aead is None:
            raise SealKeyError(
                f"tenant {tenant_id!r}'s current data key v{ring.current} is not wrapped by "
                f"master key {self.master.key_id}; give this process the key file that wraps "
                "it, or run `pushpilot keys rewrap` with this one")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = aead.encrypt(nonce, message.encode(), _message_aad(tenant_id, push_id, ring.current))
        return f"{PREFIX}{ring.current}:{_b64(nonce + sealed)}"

    def open(self, r: redis.Redis, tenant_id: str, push_id: str, value: str) -> str:
        """The message of a sealed ``value``; a plain one as it is."""
        if not is_sealed(value):
            return value
        version = self._version(value)
        return self._open(self._ring(r, tenant_id, need=version), tenant_id, push_id, value, version)

    async def open_async(self, ar: Any, tenant_id: str, push_id: str, value: str) -> str:
        """``open`` for an asyncio client (the gateways)."""
        if not is_sealed(value):
            return value
        version = self._version(value)
        ring = self._rings.get(tenant_id)
        if ring is None or version not in ring.aeads or (
                time.monotonic() - ring.loaded_at > self.refresh_seconds):
            ring = self._ring_from(tenant_id, await ar.hgetall(keys.data_keys(tenant_id)))
        if ring is None:
            raise SealKeyError(f"tenant {tenant_id!r} has no data key")
        return self._open(ring, tenant_id, push_id, value, version)

    def open_fields(self, r: redis.Redis, tenant_id: str,
                    fields: Mapping[str, str]) -> Mapping[str, str]:
        """An outbox or inbox entry's fields with its ``m`` opened."""
        m = fields.get("m", "")
        if not is_sealed(m):
            return fields
        return {**fields, "m": self.open(r, tenant_id, fields.get("push_id", ""), m)}

    async def open_fields_async(self, ar: Any, tenant_id: str,
                                fields: Mapping[str, str]) -> Mapping[str, str]:
        m = fields.get("m", "")
        if not is_sealed(m):
            return fields
        return {**fields, "m": await self.open_async(ar, tenant_id, fields.get("push_id", ""), m)}

    async def frame_fields(self, ar: Any, tenant_id: str,
                           fields: Mapping[str, str]) -> Mapping[str, str]:
        """What a gateway sends of an inbox entry: opened, or, when it does not open, the
        entry with an ``error`` message instead (logged), so one bad entry never stalls the
        user's inbox: the device acks it and gets the next."""
        try:
            return await self.open_fields_async(ar, tenant_id, fields)
        except SealError as e:
            log.error("tenant %s: inbox entry of push %s not sent: %s", tenant_id,
                      fields.get("push_id", ""), e)
            error = {"error": "this push could not be decrypted"}
            return {**fields, "m": json.dumps(error)}

    @staticmethod
    def _version(value: str) -> int:
        try:
            return int(value[len(PREFIX):].split(":", 1)[0])
        except ValueError:
            raise SealError("a sealed message without a key version") from None

    def _open(self, ring: _Ring, tenant_id: str, push_id: str, value: str, version: int) -> str:
        aead = ring.aeads.get(version)
        if aead is None:
            raise SealKeyError(f"data key v{version} of tenant {tenant_id!r} is not wrapped by "
                               f"master key {self.master.key_id}")
        try:
            raw = _unb64(value[len(PREFIX):].split(":", 1)[1])
            plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                 _message_aad(tenant_id, push_id, version))
            return plain.decode()
        except (InvalidTag, ValueError, IndexError):  # binascii.Error is a ValueError
            raise SealError(f"a sealed message of tenant {tenant_id!r} does not open for push "
                            f"{push_id!r}: changed, or another push's") from None


def _versions(raw: Mapping[str, str]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for name in raw:
        if name.startswith("k:"):
            _, version, master_id = name.split(":", 2)
            found.setdefault(int(version), set()).add(master_id)
    return found


def rotate_data_key(r: redis.Redis, master: MasterKey, tenant_id: str, *, actor: str) -> int:
    """A new data key version for the tenant's new messages; returns it. Old versions stay, so
    what they sealed still opens. Processes switch within their Sealer's refresh interval.

    Refused while the master key changes (a version wrapped by more than one master key):
    the new version would be wrapped by this key only, and processes on the other could not
    seal. One transaction (WATCH): two rotations never write the same version.
    """
    tenants.get_tenant(r, tenant_id)
    name = keys.data_keys(tenant_id)
    if not r.hexists(name, _CURRENT):
        Sealer(master)._create(r, tenant_id)  # the first key, made atomically on its own
        return 1

    def rotate(pipe: Any) -> int:
        raw = pipe.hgetall(name)
        versions = _versions(raw)
        current = int(raw[_CURRENT])
        if master.key_id not in versions.get(current, set()):
            raise InvalidInputError("at_rest_key_file", f"master key {master.key_id} does not "
                                    f"wrap tenant {tenant_id!r}'s data keys; give the key that does")
        if any(len(masters) > 1 for masters in versions.values()):
            raise InvalidInputError(
                "at_rest_key_file", f"tenant {tenant_id!r}'s data keys are wrapped by several "
                "master keys (a master key change is under way); finish it with "
                "`pushpilot keys rewrap --drop-old` before rotating")
        version = max(versions) + 1
        pipe.multi()
        pipe.hset(name, _field(version, master.key_id),
                  master.wrap(tenant_id, version, secrets.token_bytes(_KEY_BYTES)))
        pipe.hset(name, _CURRENT, str(version))
        audit.record(pipe, tenant_id, actor, "data_key.rotated", f"data-key:{version}",
                     master_key_id=master.key_id)
        return version

    return r.transaction(rotate, name, value_from_callable=True)  # type: ignore[no-any-return]


def rewrap(r: redis.Redis, old: MasterKey, new: MasterKey, tenant_id: str, *, actor: str,
           drop_others: bool = False) -> int:
    """Wrap every data key version of the tenant under ``new`` as well as ``old``; with
    ``drop_others`` only ``new``'s wrappings stay. Returns the versions rewrapped. One
    transaction (WATCH): a version added meanwhile is never left wrapped by ``old`` only."""
    tenants.get_tenant(r, tenant_id)
    name = keys.data_keys(tenant_id)

    def rewrap_all(pipe: Any) -> int:
        raw = pipe.hgetall(name)
        mine = {int(n.split(":", 2)[1]): w for n, w in raw.items()
                if n.startswith("k:") and n.endswith(f":{old.key_id}")}
        missing = sorted(set(_versions(raw)) - set(mine))
        if missing:
            raise InvalidInputError("at_rest_key_file", f"master key {old.key_id} does not wrap "
                                    f"data key versions {missing} of {tenant_id!r}")
        pipe.multi()
        for version, wrapped in mine.items():
            pipe.hset(name, _field(version, new.key_id),
                      new.wrap(tenant_id, version, old.unwrap(tenant_id, version, wrapped)))
        if drop_others:
            stale = [n for n in raw if n.startswith("k:") and not n.endswith(f":{new.key_id}")]
            if stale:
                pipe.hdel(name, *stale)
        audit.record(pipe, tenant_id, actor, "data_key.rewrapped", "data-keys",
                     old_master_key_id=old.key_id, new_master_key_id=new.key_id,
                     dropped_others=drop_others)
        return len(mine)

    return r.transaction(rewrap_all, name, value_from_callable=True)  # type: ignore[no-any-return]
