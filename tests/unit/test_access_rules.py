"""The access scheme's pure parts: key format, role rules, default deny."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI

from shared.access import AdminOnly, hash_key, key_id_of, new_key, require_access_rules


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
