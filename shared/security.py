"""Secrets handed out by the services: API keys shown once and stored as hashes."""

from __future__ import annotations

import hashlib
import secrets


def new_api_key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_api_key(key: str) -> str:
    """SHA-256 is enough for 256-bit random keys: there is nothing to brute-force."""
    return hashlib.sha256(key.encode()).hexdigest()
