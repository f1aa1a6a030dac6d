"""Who an author is across the forms a handle takes: ``twitter:ada_l``.

Ingest keys an author's posts by it (one partition keeps their order) and enrich
resolves customers by it, so both must normalise the same way.
"""

from __future__ import annotations

from urllib.parse import urlparse

from shared.events import Channel

# One identity namespace per network: a handle on x is the same person on twitter.
_CHANNEL_ALIASES = {Channel.X: Channel.TWITTER}
_PROFILE_HOSTS = (
    "twitter.com",
    "x.com",
    "instagram.com",
    "facebook.com",
    "linkedin.com",
    "youtube.com",
)


def normalise_identity(channel: Channel, handle: str) -> str:
    """``channel:handle`` in one canonical form: lower case, no leading @, no profile URL."""
    canonical = _CHANNEL_ALIASES.get(channel, channel)
    text = handle.strip()
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        host = parsed.hostname.removeprefix("www.").removeprefix("mobile.")
        if host in _PROFILE_HOSTS:  # the profile is the first path segment, e.g. /ada/status/1
            segments = [s for s in parsed.path.split("/") if s and s != "in"]  # linkedin.com/in/x
            text = segments[0] if segments else text
    return f"{canonical.value}:{text.lstrip('@').lower()}"
