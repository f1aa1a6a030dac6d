"""The access scheme's pure parts: key format, role rules, default deny."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import APIRouter, FastAPI
from pydantic import ValidationError

from shared.access import (
    AdminOnly,
    KeyIn,
    hash_key,
    key_id_of,
    new_key,
    require_access_rules,
)
from shared.events import utcnow


def test_a_new_key_names_its_id_and_carries_256_random_bits() -> None:
    key_id, key = new_key()
    other_id, other = new_key()

    assert key_id_of(key) == key_id
    assert len(key.split("_", 2)[2]) >= 43  # 32 bytes, base64url
    assert key != other
    assert key_id != other_id
    assert len(hash_key(key)) == 64
    assert hash_key(key) != hash_key(other)


@pytest.mark.parametrize(
    "presented",
    ["", "sbk", "sbk_", "sbk_short_secret", "xyz_0123456789abcdef_s", "sbk_0123456789abcdef_"],
)
def test_anything_else_is_not_a_key(presented: str) -> None:
    assert key_id_of(presented) is None


def test_an_app_with_a_route_that_names_no_roles_is_refused() -> None:
    ruled, unruled = APIRouter(), APIRouter()

    @ruled.get("/v1/ruled", dependencies=[AdminOnly])
    async def fine() -> None: ...

    @unruled.get("/v1/forgotten")
    async def forgotten() -> None: ...

    safe, unsafe = FastAPI(), FastAPI()
    safe.include_router(ruled)
    unsafe.include_router(ruled)
    unsafe.include_router(unruled)

    require_access_rules(safe)
    with pytest.raises(RuntimeError, match="/v1/forgotten"):
        require_access_rules(unsafe)


@pytest.mark.parametrize(
    ("expires_at", "reason"),
    [
        ("9999-12-31T23:59:59-14:00", "within 100 years"),  # past year 9999 in UTC
        ("2200-01-01T00:00:00Z", "within 100 years"),
        ("2001-01-01T00:00:00Z", "in the future"),
    ],
)
def test_an_expiry_out_of_reach_is_refused_naming_the_field(expires_at: str, reason: str) -> None:
    with pytest.raises(ValidationError) as raised:
        KeyIn.model_validate({"role": "admin", "name": "ops", "expires_at": expires_at})

    [error] = raised.value.errors()
    assert error["loc"] == ("expires_at",)
    assert reason in error["msg"]


def test_an_expiry_within_reach_is_kept() -> None:
    soon = utcnow() + timedelta(days=30)

    assert KeyIn.model_validate({"role": "admin", "name": "ops", "expires_at": soon}).expires_at
