from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from pipeline import keys, tenants
from pipeline.errors import AuthError, InvalidInputError, TenantExistsError, UnknownTenantError


def test_key_names_are_hash_tagged_by_tenant() -> None:
    assert keys.outbox_stream("shop", "marketing") == "pp:{shop}:outbox:marketing"
    assert keys.inbox_stream("shop", "u1").startswith("pp:{shop}:")
    for bad in ("", "Shop", "a:b", "{x}", "-lead", "a" * 64):
        with pytest.raises(ValueError):
            keys.tenant_prefix(bad)
    with pytest.raises(ValueError):
        keys.outbox_stream("shop", "express")


def test_create_tenant_twice_is_refused_and_changes_nothing(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tid = new_tenant_id("shop")
    tenants.create_tenant(redis_client, tid)
    secret = tenants.tenant_secret(redis_client, tid)
    with pytest.raises(TenantExistsError):
        tenants.create_tenant(redis_client, tid)
    assert tenants.tenant_secret(redis_client, tid) == secret
    assert tid in tenants.list_tenants(redis_client)


def test_bad_tenant_name_is_refused_before_anything_is_written(redis_client: redis.Redis) -> None:
    before = redis_client.dbsize()
    with pytest.raises(InvalidInputError, match="tenant id must match"):
        tenants.create_tenant(redis_client, "Not Valid")
    assert redis_client.dbsize() == before


def test_api_key_is_stored_hashed_and_authenticates_to_its_tenant_only(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    a, b = new_tenant_id("a"), new_tenant_id("b")
    tenants.create_tenant(redis_client, a)
    tenants.create_tenant(redis_client, b)
    key_a = tenants.create_api_key(redis_client, a, ["score"])
    stored = redis_client.hgetall(keys.tenant_api_keys(a))
    assert key_a not in str(stored) and key_a not in str(redis_client.hgetall(keys.api_key_index()))
    auth = tenants.authenticate(redis_client, key_a)
    assert (auth.tenant_id, auth.scopes) == (a, ("score",))
    assert redis_client.hlen(keys.tenant_api_keys(b)) == 0
    with pytest.raises(AuthError):
        tenants.authenticate(redis_client, key_a[:-2] + "xx")
    with pytest.raises(AuthError):
        tenants.authenticate(redis_client, "")


def test_key_for_unknown_tenant_or_scope_is_refused(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    with pytest.raises(UnknownTenantError):
        tenants.create_api_key(redis_client, new_tenant_id("ghost"), ["score"])
    tid = new_tenant_id("s")
    tenants.create_tenant(redis_client, tid)
    with pytest.raises(InvalidInputError, match="unknown"):
        tenants.create_api_key(redis_client, tid, ["score", "root"])
    assert redis_client.hlen(keys.tenant_api_keys(tid)) == 0


def test_user_token_verifies_only_with_its_tenants_secret() -> None:
    token = tenants.issue_user_token(b"s" * 32, "shop", "u1", ttl_seconds=60)
    assert tenants.verify_user_token(b"s" * 32, token) == ("shop", "u1")
    assert tenants.peek_token_tenant(token) == "shop"
    with pytest.raises(AuthError):
        tenants.verify_user_token(b"t" * 32, token)
    with pytest.raises(AuthError, match="expired"):
        tenants.verify_user_token(b"s" * 32, token, now=time.time() + 120)
    with pytest.raises(AuthError):
        tenants.verify_user_token(b"s" * 32, "garbage")
