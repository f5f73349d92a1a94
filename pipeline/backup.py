"""Back up tenants into one signed archive and restore them, into the same or a fresh deployment.

An archive (``.tar.gz``) holds, per tenant, every Redis key under the tenant's prefix (``DUMP``
with its absolute expiry, so streams keep their consumer groups and pending entries), the
tenant's entries in the global indexes (tenant list, API key digests), and every registered
MLflow model version: its artifacts, its run's parameters, metrics, tags and artifacts, and which
version is champion. ``manifest.json`` lists every file with its sha256, and ``manifest.sig`` is
an HMAC-SHA256 of the manifest under the operator's backup key (``BackupKey``).

A restore trusts nothing in an archive it has not verified: it checks the signature before it
extracts anything, every file's sha256 against the signed manifest, then that every key,
API key digest and model of the archive belongs to a tenant the caller named, before it writes
anything. Model artifacts are skops files that restore copies but never loads (loading checks
their digest and types: ``models.registry``); only a signed archive's reach the registry. A
corrupt, unsigned, tampered or foreign archive restores nothing.

The tenant's plan, webhook URL, privacy policy and secret are Redis keys of the tenant, so they
travel with it. Each key is copied atomically, but a backup of a tenant taking writes is not
one point in time (docs/ha.md says how to take a point-in-time one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from models.registry import CHAMPION_ALIAS, ModelRegistry, registered_name
from pipeline import keys
from pipeline.errors import PushError

__all__ = [
    "ARCHIVE_FORMAT",
    "BackupError",
    "BackupKey",
    "load_or_create_key",
    "BackupReport",
    "RestoreReport",
    "backup",
    "restore",
    "read_manifest",
]

log = logging.getLogger(__name__)

# 2: signed (manifest.sig). Format 1 archives were unsigned, so nothing vouches for them.
ARCHIVE_FORMAT = 2
_MANIFEST = "manifest.json"
_SIGNATURE = "manifest.sig"
_SIGNATURE_ALG = "HMAC-SHA256"
# Domain separation: a MAC made for an archive is no MAC of anything else under the same key.
_SIGNING_CONTEXT = b"pushpilot backup manifest v2\n"
_KEY_BYTES = 32
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 500
# A restored version remembers where it came from, so a restored registry can be audited.
_RESTORED_FROM_TAG = "pushpilot.restored_from"


class BackupError(PushError):
    """An archive that cannot be written, read, verified or restored as asked."""


class BackupKey:
    """The operator's HMAC-SHA256 key: ``backup`` signs archives with it, ``restore`` verifies.

    Whoever holds it can make an archive restore accepts, so it lives in a 0600 file of its own
    (by default ``<data_dir>/backup.key``), and a copy off the machine lets a restore elsewhere
    verify the archives.
    """

    def __init__(self, secret: bytes, path: Path | None = None):
        if len(secret) < _KEY_BYTES:
            raise ValueError(f"a backup key needs at least {_KEY_BYTES} bytes, got {len(secret)}")
        self._secret = bytes(secret)
        self.path = path

    def __repr__(self) -> str:  # never print the secret into a log
        return f"BackupKey(key_id={self.key_id!r}, path={str(self.path)!r})"

    @property
    def key_id(self) -> str:
        """Names the key in an archive's signature without revealing it."""
        return hashlib.sha256(b"pushpilot backup key id\n" + self._secret).hexdigest()[:16]

    @classmethod
    def generate(cls) -> BackupKey:
        return cls(secrets.token_bytes(_KEY_BYTES))

    @classmethod
    def load(cls, path: Path) -> BackupKey:
        path = Path(path).expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text().strip()
        except FileNotFoundError:
            raise BackupError(
                f"no backup key at {str(path)!r}; give --key-file the key the archive was signed "
                "with (a backup creates <data dir>/backup.key on first use)"
            ) from None
        except OSError as e:
            raise BackupError(f"cannot read the backup key {str(path)!r}: {e}") from None
        if mode & 0o077:
            raise BackupError(
                f"backup key {str(path)!r} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"whoever reads it can sign archives: chmod 600 {path}"
            )
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = b""
        if len(secret) != _KEY_BYTES:
            raise BackupError(f"backup key {str(path)!r} is not {_KEY_BYTES} bytes of hex, as "
                              "`pushpilot backup` writes it; give the key file it created")
        return cls(secret, path)

    def save(self, path: Path) -> None:
        """Write the key to a new file, 0600 from the start; an existing file is an error."""
        path = Path(path).expanduser()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._secret.hex() + "\n")
        self.path = path

    def _mac(self, manifest: bytes) -> str:
        return hmac.new(self._secret, _SIGNING_CONTEXT + manifest, hashlib.sha256).hexdigest()

    def sign(self, manifest: bytes) -> bytes:
        """The signature document of ``manifest`` (its exact bytes)."""
        return json.dumps({"alg": _SIGNATURE_ALG, "key_id": self.key_id,
                           "mac": self._mac(manifest)}, sort_keys=True).encode()

    def verify(self, manifest: bytes, signature: bytes | None, archive: Path) -> None:
        """BackupError unless ``signature`` is this key's signature of ``manifest``."""
        where = f"archive {str(archive)!r}"
        if signature is None:
            raise BackupError(
                f"{where} is not signed (no {_SIGNATURE}); restore accepts only archives that "
                "`pushpilot backup` signed with your backup key. Nothing restored; an archive "
                "from before signing cannot be verified: take a new backup"
            )
        try:
            doc = json.loads(signature)
            alg, key_id, mac = doc["alg"], doc["key_id"], doc["mac"]
        except (ValueError, TypeError, KeyError):
            raise BackupError(f"{where} has an unreadable {_SIGNATURE}; nothing restored") from None
        if alg != _SIGNATURE_ALG:
            raise BackupError(f"{where} is signed with {alg!r}, not {_SIGNATURE_ALG}; "
                              "nothing restored")
        if not isinstance(mac, str) or not hmac.compare_digest(mac.encode(),
                                                                self._mac(manifest).encode()):
            if key_id != self.key_id:
                raise BackupError(
                    f"{where} was signed with backup key {key_id!r}, not with yours "
                    f"({self.key_id!r}, {str(self.path)!r}); nothing restored. Give --key-file "
                    "the key of the deployment that wrote it, or do not trust the archive"
                )
            raise BackupError(
                f"{where} fails its signature: the manifest was changed after it was signed; "
                "nothing restored"
            )


def load_or_create_key(path: Path) -> tuple[BackupKey, bool]:
    """The key at ``path``, or a new one written there 0600; the flag says it was created."""
    path = Path(path).expanduser()
    if path.exists():
        return BackupKey.load(path), False
    key = BackupKey.generate()
    try:
        key.save(path)
    except FileExistsError:  # another backup created it first: use theirs
        return BackupKey.load(path), False
    return key, True


@dataclass(frozen=True)
class BackupReport:
    path: Path
    sha256: str
    tenants: dict[str, dict[str, int]]  # tenant -> {"keys", "api_keys", "model_versions"}


@dataclass(frozen=True)
class RestoreReport:
    tenants: dict[str, str]  # tenant in the archive -> tenant restored
    keys: int
    model_versions: int
    api_keys_dropped: int = 0
    versions: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)


# --- backup -----------------------------------------------------------------------------------


def backup(
    r: redis.Redis, registry: ModelRegistry, tenant_ids: Sequence[str], out: Path,
    *, key: BackupKey,
) -> BackupReport:
    """Write the tenants' Redis state and MLflow models to ``out`` (a .tar.gz), signed by ``key``."""
    if not tenant_ids:
        raise BackupError("nothing to back up: give at least one tenant (or --all with tenants)")
    # Absolute before anything: the artifacts are downloaded to absolute paths under it.
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise BackupError(f"--out {str(out)!r} is a directory; name the archive file to write")
    for tenant_id in tenant_ids:
        _check_tenant_id(tenant_id)
        if not r.sismember(keys.tenants_set(), tenant_id):
            raise BackupError(f"tenant {tenant_id!r} does not exist here; nothing to back up")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="pushpilot-backup-", dir=out.parent) as tmp:
        root = Path(tmp) / "archive"
        root.mkdir()
        tenants_meta = []
        for tenant_id in tenant_ids:
            tenant_dir = root / "tenants" / tenant_id
            tenant_dir.mkdir(parents=True)
            n_keys = _dump_redis(r, tenant_id, tenant_dir / "redis.jsonl")
            api_keys = _api_key_index(r, tenant_id)
            (tenant_dir / "globals.json").write_text(json.dumps({"api_key_index": api_keys}))
            models = _export_models(registry, tenant_id, root, tenant_dir / "models")
            n_versions = sum(len(m["versions"]) for m in models)
            tenants_meta.append({"tenant_id": tenant_id, "keys": n_keys, "models": models})
            summary[tenant_id] = {"keys": n_keys, "api_keys": len(api_keys),
                                  "model_versions": n_versions}
        files = {
            path.relative_to(root).as_posix(): _sha256(path)
            for path in sorted(root.rglob("*")) if path.is_file()
        }
        manifest = {
            "format": ARCHIVE_FORMAT,
            "created_at": time.time(),
            "redis_version": str(_server_info(r).get("redis_version", "")),
            "tenants": tenants_meta,
            "files": files,
        }
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
        (root / _MANIFEST).write_bytes(manifest_bytes)
        (root / _SIGNATURE).write_bytes(key.sign(manifest_bytes))
        partial = Path(tmp) / "archive.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(root / _SIGNATURE, arcname=_SIGNATURE)
            tar.add(root / _MANIFEST, arcname=_MANIFEST)
            for name in files:
                tar.add(root / name, arcname=name)
        # It holds the tenants' secrets: readable by its owner only, like the data dir's files.
        os.chmod(partial, 0o600)
        # Written aside and moved in: a crash never leaves a half archive under the real name.
        os.replace(partial, out)
    return BackupReport(path=out, sha256=_sha256(out), tenants=summary)


def _check_tenant_id(tenant_id: str) -> None:
    try:
        keys.validate_tenant_id(tenant_id)
    except ValueError as e:
        raise BackupError(str(e)) from None


def _server_info(r: redis.Redis) -> dict[str, Any]:
    info = r.info("server")
    # A cluster client answers per node; any node's version will do.
    if info and all(isinstance(v, dict) for v in info.values()):
        return next(iter(info.values()))  # type: ignore[no-any-return]
    return info  # type: ignore[no-any-return]


def _tenant_keys(r: redis.Redis, tenant_id: str) -> Iterator[str]:
    for key in r.scan_iter(match=keys.tenant_pattern(tenant_id), count=1000):
        yield key.decode() if isinstance(key, bytes) else key


def _dump_order(key: str) -> tuple[int, str]:
    # Status records (each push's id guard) before the outboxes: a write landing mid-backup
    # can leave a push in the outbox with an older record, never a push the guard remembers
    # but no outbox holds.
    return (2 if ":outbox:" in key else 1), key


def _dump_redis(r: redis.Redis, tenant_id: str, path: Path) -> int:
    from redis.client import NEVER_DECODE

    names = sorted(set(_tenant_keys(r, tenant_id)), key=_dump_order)
    written = 0
    with open(path, "w") as f:
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            # Not a transaction: DUMP's reply is binary, and only outside MULTI can the client
            # read it undecoded. Each key is still a consistent copy of itself.
            seconds, micros = r.time()  # the server's clock: PTTL is relative to it
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            pipe = r.pipeline(transaction=False)
            for name in chunk:
                pipe.pttl(name)
                pipe.execute_command("DUMP", name, **{NEVER_DECODE: []})
            reply = pipe.execute()
            for i, name in enumerate(chunk):
                pttl, payload = reply[2 * i], reply[1 + 2 * i]
                if payload is None:  # expired or deleted between SCAN and DUMP
                    continue
                expire_at_ms = now_ms + int(pttl) if int(pttl) > 0 else 0
                f.write(json.dumps({"key": name, "expire_at_ms": expire_at_ms,
                                    "dump": base64.b64encode(payload).decode()}) + "\n")
                written += 1
    return written


def _api_key_index(r: redis.Redis, tenant_id: str) -> dict[str, str]:
    """The tenant's entries of the global digest -> tenant index."""
    digests = sorted(r.hkeys(keys.tenant_api_keys(tenant_id)))
    if not digests:
        return {}
    owners = r.hmget(keys.api_key_index(), digests)
    return {d: o for d, o in zip(digests, owners, strict=True) if o == tenant_id}


def _mlflow_client(registry: ModelRegistry) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)


def _download(artifact_uri: str, dest: Path) -> Path:
    """Download a directory of artifacts; returns the folder holding its content."""
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    got = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dest))
    return Path(got)


def _export_models(
    registry: ModelRegistry, tenant_id: str, root: Path, dest: Path
) -> list[dict[str, Any]]:
    client = _mlflow_client(registry)
    models = []
    for kind in registry.kinds(tenant_id):
        name = registered_name(tenant_id, kind)
        versions = []
        for info in registry.list_versions(tenant_id, kind):
            described = registry.describe_version(tenant_id, kind, info.version)
            where = dest / kind / str(info.version)
            # download_artifacts puts a directory's content one level down, under its name.
            model_dir = _download(
                client.get_model_version_download_uri(name, str(info.version)), where / "model"
            )
            run_tags: dict[str, str] = {}
            run_dir: Path | None = None
            if info.run_id:
                run = client.get_run(info.run_id)
                run_tags = {k: v for k, v in run.data.tags.items()
                            if not k.startswith("mlflow.") or k == "mlflow.runName"}
                if client.list_artifacts(info.run_id):
                    run_dir = _download(run.info.artifact_uri, where / "run")
            versions.append({
                "version": info.version,
                "model_dir": model_dir.relative_to(root).as_posix(),
                "run_dir": run_dir.relative_to(root).as_posix() if run_dir else None,
                "params": described["params"],
                "metrics": described["metrics"],
                "version_tags": described["tags"],
                "run_tags": run_tags,
                "created_at_ms": described["created_at_ms"],
            })
        models.append({"kind": kind, "champion": registry.champion_version(tenant_id, kind),
                       "versions": versions})
    return models


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reading and verifying --------------------------------------------------------------------


def read_manifest(archive: Path, *, key: BackupKey) -> dict[str, Any]:
    """The archive's manifest, after checking its signature and every file's sha256."""
    with tempfile.TemporaryDirectory(prefix="pushpilot-verify-") as tmp:
        return _extract_verified(Path(archive), Path(tmp), key)


def _read_member(tar: tarfile.TarFile, name: str) -> bytes | None:
    try:
        member = tar.getmember(name)
    except KeyError:
        return None
    f = tar.extractfile(member) if member.isfile() else None
    return f.read() if f is not None else None


def _extract_verified(archive: Path, into: Path, key: BackupKey) -> dict[str, Any]:
    if not archive.is_file():
        raise BackupError(f"--in {str(archive)!r} is not a file")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            manifest_bytes = _read_member(tar, _MANIFEST)
            if manifest_bytes is None:
                raise BackupError(f"archive {str(archive)!r} has no {_MANIFEST}; it is not a "
                                  "pushpilot backup; nothing restored")
            # Before a single file is extracted: nothing of an unsigned archive is trusted.
            key.verify(manifest_bytes, _read_member(tar, _SIGNATURE), archive)
            # "data" refuses absolute paths, links out of the folder and devices.
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BackupError(
            f"archive {str(archive)!r} is corrupt or not a pushpilot backup ({e}); nothing restored"
        ) from None
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise BackupError(f"archive {str(archive)!r} has no readable {_MANIFEST} ({e}); "
                          "nothing restored") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BackupError(f"archive format {got!r} is not the supported "
                          f"{ARCHIVE_FORMAT}; use the pushpilot version that wrote it")
    listed = manifest.get("files", {})
    present = {p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file()}
    present -= {_MANIFEST, _SIGNATURE}
    problems = [f"{name}: missing" for name in sorted(set(listed) - present)]
    problems += [f"{name}: not in the manifest" for name in sorted(present - set(listed))]
    problems += [f"{name}: sha256 mismatch" for name in sorted(set(listed) & present)
                 if _sha256(into / name) != listed[name]]
    if problems:
        raise BackupError(f"archive {str(archive)!r} fails verification, nothing restored: "
                          + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    return manifest  # type: ignore[no-any-return]


def _confine(r: redis.Redis, root: Path, meta: dict[str, Any], target: str) -> None:
    """BackupError unless everything the tenant's part would write is the tenant's own.

    A signed archive is still checked: the key proves who wrote it, not that the writer kept
    to the tenant (a backup bug, or a key used by a script of one's own).
    """
    source = meta["tenant_id"]
    where = f"tenant {source!r} of the archive"
    prefix = keys.tenant_prefix(source)
    tenant_dir = root / "tenants" / source
    try:
        for n, record in enumerate(_records(tenant_dir / "redis.jsonl"), 1):
            name, expire_at_ms, dump = record["key"], record["expire_at_ms"], record["dump"]
            if not isinstance(name, str) or not name.startswith(prefix):
                raise BackupError(
                    f"{where} holds key {name!r} (redis.jsonl line {n}), which is not one of "
                    f"its keys (they start {prefix!r}); restore refuses keys of other tenants "
                    "and pp:global: keys; nothing restored"
                )
            if not isinstance(expire_at_ms, int) or expire_at_ms < 0:
                raise BackupError(f"{where}: key {name!r} has expiry {expire_at_ms!r}, not "
                                  "epoch milliseconds; nothing restored")
            base64.b64decode(dump, validate=True)
        index = json.loads((tenant_dir / "globals.json").read_text())["api_key_index"]
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as e:
        raise BackupError(f"{where} has unreadable Redis state ({type(e).__name__}: {e}); "
                          "nothing restored") from None
    if not isinstance(index, dict):
        raise BackupError(f"{where}: api_key_index is not a mapping; nothing restored")
    for digest, owner in index.items():
        if owner != source or not _DIGEST.fullmatch(str(digest)):
            raise BackupError(
                f"{where} maps API key digest {digest!r} to tenant {owner!r}; restore maps API "
                f"keys only to the tenant restored ({source!r}); nothing restored"
            )
    if source == target and index:
        # A digest is one key of one tenant: an archive never takes over another's key.
        owners = r.hmget(keys.api_key_index(), list(index))
        taken = sorted(d for d, o in zip(index, owners, strict=True) if o not in (None, target))
        if taken:
            raise BackupError(
                f"{where} holds {len(taken)} API key(s) that belong to another tenant here "
                f"(digest {taken[0][:12]}...); nothing restored"
            )
    models_dir = (tenant_dir / "models").resolve()
    try:
        for model in meta["models"]:
            registered_name(target, model["kind"])
            for version in model["versions"]:
                int(version["version"])
                # Only the named tenant's own model folders are imported.
                for folder in (version["model_dir"], version["run_dir"]):
                    if folder is None:
                        continue
                    path = (root / str(folder)).resolve()
                    if not path.is_dir() or not path.is_relative_to(models_dir):
                        raise BackupError(
                            f"{where}: model {model['kind']!r} names folder {folder!r}, which "
                            f"is not under tenants/{source}/models/; nothing restored"
                        )
    except (ValueError, KeyError, TypeError) as e:
        raise BackupError(f"{where} lists its models wrongly ({type(e).__name__}: {e}); "
                          "nothing restored") from None


# --- restore ----------------------------------------------------------------------------------


def restore(
    r: redis.Redis,
    registry: ModelRegistry,
    archive: Path,
    *,
    key: BackupKey,
    tenant_ids: Sequence[str],
    as_tenant_id: str | None = None,
    is_replacing: bool = False,
) -> RestoreReport:
    """Restore the named tenants of a signed archive; ``as_tenant_id`` renames the one named.

    Nothing is written unless the archive is signed by ``key``, holds every tenant named, and
    everything it would write for them is theirs: their own keys, API key digests mapping to
    them only, no ``pp:global:`` key. Other tenants of the archive are left out.

    A tenant that exists here already (keys, index entry or registered models) is an error
    unless ``is_replacing``, which first deletes its keys and registered models. Restored as a
    new tenant, the API keys are left behind (a key belongs to exactly one tenant); the
    tenant's secret is kept, so the pseudonyms in its features and profiles still match.
    """
    if not tenant_ids:
        raise BackupError("name the tenant(s) to restore (--tenant T, repeatable); restore "
                          "writes nothing that is not theirs")
    for tenant_id in tenant_ids:
        _check_tenant_id(tenant_id)
    if len(set(tenant_ids)) != len(tenant_ids):
        raise BackupError(f"--tenant names a tenant twice: {list(tenant_ids)}")
    if as_tenant_id is not None:
        _check_tenant_id(as_tenant_id)
        if len(tenant_ids) != 1:
            raise BackupError(f"--as renames one tenant; --tenant names {list(tenant_ids)}")
    with tempfile.TemporaryDirectory(prefix="pushpilot-restore-") as tmp:
        root = Path(tmp)
        manifest = _extract_verified(Path(archive), root, key)
        try:
            by_source = {t["tenant_id"]: t for t in manifest["tenants"]}
        except (KeyError, TypeError):
            raise BackupError(f"archive {str(archive)!r} lists no tenants; nothing restored") from None
        missing = [t for t in tenant_ids if t not in by_source]
        if missing:
            raise BackupError(
                f"archive {str(archive)!r} holds tenants {sorted(map(str, by_source))}, not "
                f"{missing}; name a tenant it holds (--tenant), and --as NEW to restore it under "
                "another id; nothing restored"
            )
        chosen = [by_source[t] for t in tenant_ids]
        mapping = {t: (as_tenant_id or t) for t in tenant_ids}
        for meta in chosen:
            _confine(r, root, meta, mapping[meta["tenant_id"]])
        for target in mapping.values():
            _check_free(r, registry, target, is_replacing)
        total_keys = total_versions = dropped = 0
        versions: dict[str, dict[str, dict[int, int]]] = {}
        for meta in chosen:
            source = meta["tenant_id"]
            target = mapping[source]
            if is_replacing:
                _purge(r, registry, target, [m["kind"] for m in meta["models"]])
            # Models first, the tenant list last: a tenant shows up only once it is whole.
            versions[target] = _import_models(registry, root, source, target, meta["models"])
            total_versions += sum(len(v) for v in versions[target].values())
            n_keys, n_dropped = _restore_redis(r, root / "tenants" / source, source, target)
            total_keys += n_keys
            dropped += n_dropped
            _recreate_acl_user(r, target)
            log.info("restored tenant %s as %s: %d keys, %d model versions", source, target,
                     n_keys, sum(len(v) for v in versions[target].values()))
    return RestoreReport(tenants=mapping, keys=total_keys, model_versions=total_versions,
                         api_keys_dropped=dropped, versions=versions)


def _check_free(r: redis.Redis, registry: ModelRegistry, tenant_id: str,
                is_replacing: bool) -> None:
    if is_replacing:
        return
    has_keys = next(_tenant_keys(r, tenant_id), None) is not None
    if r.sismember(keys.tenants_set(), tenant_id) or has_keys or registry.kinds(tenant_id):
        raise BackupError(
            f"tenant {tenant_id!r} already exists here; restore it under another id with "
            "--as NEW_TENANT, or pass --replace to overwrite it with the archive's state"
        )


def _purge(r: redis.Redis, registry: ModelRegistry, tenant_id: str, kinds: list[str]) -> None:
    digests = r.hkeys(keys.tenant_api_keys(tenant_id))
    if digests:
        r.hdel(keys.api_key_index(), *digests)
    names = list(_tenant_keys(r, tenant_id))
    for start in range(0, len(names), _CHUNK):
        r.unlink(*names[start : start + _CHUNK])
    client = _mlflow_client(registry)
    for kind in set(kinds) | set(registry.kinds(tenant_id)):
        client.delete_registered_model(registered_name(tenant_id, kind))


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _restore_redis(r: redis.Redis, tenant_dir: Path, source: str, target: str) -> tuple[int, int]:
    is_renamed = source != target
    api_keys_key = keys.tenant_api_keys(source)
    index = json.loads((tenant_dir / "globals.json").read_text())["api_key_index"]
    dropped = len(index) if is_renamed else 0
    restored = 0
    now_ms = int(time.time() * 1000)
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        # One tenant's keys share a slot, so a chunk is one transaction even on a cluster.
        pipe = r.pipeline(transaction=True)
        for record in batch:
            name = record["key"]
            if is_renamed:
                name = keys.retenant_key(name, source, target)
            payload = base64.b64decode(record["dump"])
            expire_at_ms = int(record["expire_at_ms"])
            if expire_at_ms:
                pipe.restore(name, expire_at_ms, payload, replace=True, absttl=True)
            else:
                pipe.restore(name, 0, payload, replace=True)
        pipe.execute()
        batch.clear()

    for record in _records(tenant_dir / "redis.jsonl"):
        if is_renamed and record["key"] == api_keys_key:
            # Digest -> tenant is one to one: the keys stay with the tenant they were made for.
            continue
        if record["expire_at_ms"] and int(record["expire_at_ms"]) <= now_ms:
            continue  # expired since the backup, as it would have here
        batch.append(record)
        restored += 1
        if len(batch) >= _CHUNK:
            flush()
    flush()
    if index and not is_renamed:
        r.hset(keys.api_key_index(), mapping=index)
    r.sadd(keys.tenants_set(), target)
    return restored, dropped


def _recreate_acl_user(r: redis.Redis, tenant_id: str) -> None:
    """A hard-isolated tenant's Redis ACL user is server config, not a key: make it again."""
    raw = r.hget(keys.tenant_meta(tenant_id), "plan")
    if not raw or not json.loads(raw).get("is_hard_isolated"):
        return
    from pipeline import acl

    acl.create_tenant_user(r, tenant_id)


def _retenant(values: dict[str, str], source: str, target: str) -> dict[str, str]:
    """Tags naming the source tenant (``tenant_id``) name the target instead."""
    if source == target:
        return dict(values)
    return {k: (target if v == source else v) for k, v in values.items()}


def _experiment_id(client: Any, registry: ModelRegistry, tenant_id: str) -> str:
    # The registry's layout: experiment pushpilot.<tenant>, artifacts under artifact_root/<tenant>.
    name = f"pushpilot.{tenant_id}"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, (registry.artifact_root / tenant_id).as_uri()))


def _import_models(
    registry: ModelRegistry, root: Path, source: str, target: str, models: list[dict[str, Any]]
) -> dict[str, dict[int, int]]:
    """Re-register each kind's versions, oldest first; returns kind -> {old version: new}."""
    from mlflow.entities import Metric, Param

    if not models:
        return {}
    client = _mlflow_client(registry)
    experiment_id = _experiment_id(client, registry, target)
    mapping: dict[str, dict[int, int]] = {}
    for model in models:
        kind = model["kind"]
        name = registered_name(target, kind)
        client.create_registered_model(name)
        mapping[kind] = {}
        for version in sorted(model["versions"], key=lambda v: int(v["version"])):
            run_tags = _retenant(version["run_tags"], source, target)
            run = client.create_run(experiment_id, run_name=run_tags.pop("mlflow.runName", kind),
                                    tags=run_tags)
            run_id = run.info.run_id
            now_ms = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now_ms, 0) for k, v in version["metrics"].items()],
                params=[Param(k, str(v)) for k, v in version["params"].items()],
            )
            if version["run_dir"]:
                client.log_artifacts(run_id, str(root / version["run_dir"]))
            client.log_artifacts(run_id, str(root / version["model_dir"]), "model")
            client.set_terminated(run_id)
            tags = _retenant(version["version_tags"], source, target)
            tags[_RESTORED_FROM_TAG] = f"{source}/{kind}/v{version['version']}"
            created = client.create_model_version(
                name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags
            )
            mapping[kind][int(version["version"])] = int(created.version)
        champion = model["champion"]
        if champion is not None and int(champion) in mapping[kind]:
            client.set_registered_model_alias(name, CHAMPION_ALIAS,
                                              str(mapping[kind][int(champion)]))
    return mapping

