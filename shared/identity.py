"""Who an author is across the forms a handle takes: ``twitter:ada_l``.

Ingest keys an author's posts by it (one partition keeps their order) and enrich
resolves customers by it, so both must normalise the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import SplitResult, parse_qs, urlsplit

from shared.events import Channel

# One identity namespace per network: a handle on x is the same person on twitter.
_CHANNEL_ALIASES = {Channel.X: Channel.TWITTER}
# Host prefixes that serve the same profiles as the bare host.
_HOST_PREFIXES = ("www.", "m.", "mobile.")

# First path segments that are a site's own pages, never a member's name.
_TWITTER_PAGES = frozenset(
    {
        "i",
        "intent",
        "home",
        "explore",
        "search",
        "hashtag",
        "messages",
        "notifications",
        "settings",
        "share",
        "compose",
        "login",
        "signup",
        "tos",
        "privacy",
        "status",
        "statuses",
    }
)
_INSTAGRAM_PAGES = frozenset(
    {"p", "reel", "reels", "tv", "stories", "explore", "accounts", "direct", "about", "legal"}
)
_FACEBOOK_PAGES = frozenset(
    {
        "groups",
        "pages",
        "events",
        "watch",
        "photo",
        "photos",
        "videos",
        "reel",
        "posts",
        "story",
        "sharer",
        "share",
        "hashtag",
        "marketplace",
        "gaming",
        "people",
        "login",
        "help",
        "settings",
        "search",
        "messages",
        "notifications",
    }
)

# First path segments that name a kind of profile, each its own namespace.
_LINKEDIN_KINDS = frozenset({"company", "school", "showcase"})
_YOUTUBE_KINDS = frozenset({"channel", "c", "user"})
# Facebook's pages that are scripts: posts and photos, or a profile by its number.
_FACEBOOK_SCRIPTS = frozenset({"profile.php", "photo.php", "permalink.php", "story.php"})

Query = dict[str, list[str]]
ProfileRule = Callable[[list[str], Query], str | None]


def normalise_identity(channel: Channel, handle: str) -> str:
    """``channel:handle`` in one canonical form: lower case, no leading @.

    A profile URL on a network's own site becomes the handle it names:

    - twitter.com, x.com, instagram.com, facebook.com: the first path segment
      (``/ada_l/status/1`` -> ``ada_l``), twitter's ``intent/user?screen_name=ada_l``,
      facebook's ``profile.php?id=4`` -> ``4`` (as ``facebook.com/4`` names the same);
    - linkedin.com: ``/in/ada-l`` -> ``ada-l``; a company or school keeps its kind,
      ``/company/acme`` -> ``company/acme``, so it never meets a member of that name;
    - youtube.com: ``/@ada`` -> ``ada``; ``/channel/<id>``, ``/c/<name>`` and
      ``/user/<name>`` keep their kind (``channel/<id>``), being separate namespaces.

    ``www.``, ``m.`` and ``mobile.`` hosts are the same site. A URL on such a site that
    names no profile (a post, a search, an intent) is kept whole, as
    ``https://host/path?query``, so that it stands for itself rather than for everyone
    whose URL starts the same way. Other text, URLs of other sites included, is kept as
    given.
    """
    canonical = _CHANNEL_ALIASES.get(channel, channel)
    text = handle.strip()
    named = _named_by_url(text) or text
    return f"{canonical.value}:{named.lstrip('@').lower()}"


def _named_by_url(text: str) -> str | None:
    """What a URL on a known network names; None when ``text`` is not such a URL."""
    try:
        parsed = urlsplit(text)
        host = parsed.hostname
    except ValueError:  # "http://[ada" and the like: not a URL, so a plain handle
        return None
    if parsed.scheme not in ("http", "https") or not host:
        return None
    site = _site(host)
    rule = _PROFILE_RULES.get(site)
    if rule is None:
        return None
    segments = [segment for segment in parsed.path.split("/") if segment]
    # Keywords read in any case, so that a key read again (lower case) is itself.
    query = {key.lower(): values for key, values in parse_qs(parsed.query).items()}
    return rule(segments, query) or _whole_url(site, parsed)


def _site(host: str) -> str:
    for prefix in _HOST_PREFIXES:
        if host.startswith(prefix):
            return host.removeprefix(prefix)
    return host


def _whole_url(site: str, parsed: SplitResult) -> str:
    query = f"?{parsed.query}" if parsed.query else ""
    return f"https://{site}{parsed.path.rstrip('/')}{query}"


def _member(segments: list[str], pages: frozenset[str]) -> str | None:
    """The first segment, unless it is one of the site's own pages."""
    if segments and segments[0].lower() not in pages:
        return segments[0]
    return None


def _twitter(segments: list[str], query: Query) -> str | None:
    first = segments[0].lower() if segments else ""
    if first == "intent" and query.get("screen_name"):  # intent/user, intent/follow
        return query["screen_name"][0]
    return _member(segments, _TWITTER_PAGES)


def _instagram(segments: list[str], query: Query) -> str | None:
    return _member(segments, _INSTAGRAM_PAGES)


def _facebook(segments: list[str], query: Query) -> str | None:
    first = segments[0].lower() if segments else ""
    if first == "profile.php":
        return query["id"][0] if query.get("id") else None
    if first.endswith(".php"):  # photo.php, permalink.php, story.php: posts, not people
        return None
    return _member(segments, _FACEBOOK_PAGES)


def _linkedin(segments: list[str], query: Query) -> str | None:
    kind = segments[0].lower() if len(segments) >= 2 else ""
    if kind == "in":
        return segments[1]
    if kind in _LINKEDIN_KINDS:
        return f"{kind}/{segments[1]}"
    return None


def _youtube(segments: list[str], query: Query) -> str | None:
    if segments and segments[0].startswith("@"):
        return segments[0]
    kind = segments[0].lower() if len(segments) >= 2 else ""
    if kind in _YOUTUBE_KINDS:
        return f"{kind}/{segments[1]}"
    return None


_PROFILE_RULES: dict[str, ProfileRule] = {
    "twitter.com": _twitter,
    "x.com": _twitter,
    "instagram.com": _instagram,
    "facebook.com": _facebook,
    "linkedin.com": _linkedin,
    "youtube.com": _youtube,
}


def collapsed_identities() -> list[str]:
    """The identities that profile URLs naming a site's page or a kind of profile became
    before each network's URLs were read by its own rule: the first path segment, so
    ``youtube.com/channel/<id>`` became ``youtube:channel`` and stood for whoever had such
    a URL first. What named the person was dropped: none of them can be read again."""
    collapsed = {
        Channel.TWITTER: _TWITTER_PAGES,
        Channel.INSTAGRAM: _INSTAGRAM_PAGES,
        Channel.FACEBOOK: _FACEBOOK_PAGES | _FACEBOOK_SCRIPTS,
        Channel.LINKEDIN: _LINKEDIN_KINDS,
        Channel.YOUTUBE: _YOUTUBE_KINDS,
    }
    return sorted(
        f"{channel.value}:{page}" for channel, pages in collapsed.items() for page in pages
    )
