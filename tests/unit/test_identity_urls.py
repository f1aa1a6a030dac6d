"""Profile URLs as handles: each names one person, and a URL that names nobody keys alone."""

from __future__ import annotations

import pytest

from shared.events import Channel
from shared.identity import collapsed_identities, normalise_identity


@pytest.mark.parametrize("handle", ["http://[ada", "https://[x", "http://[", "https://]x["])
def test_a_handle_that_does_not_parse_as_a_url_is_plain_text(handle: str) -> None:
    assert normalise_identity(Channel.TWITTER, handle) == f"twitter:{handle.lower()}"


@pytest.mark.parametrize(
    ("channel", "url", "identity"),
    [
        (Channel.YOUTUBE, "https://www.youtube.com/channel/UCabc", "youtube:channel/ucabc"),
        (Channel.YOUTUBE, "https://m.youtube.com/channel/UCabc/videos", "youtube:channel/ucabc"),
        (Channel.YOUTUBE, "https://youtube.com/c/AdaLovelace", "youtube:c/adalovelace"),
        (Channel.YOUTUBE, "https://youtube.com/user/adal", "youtube:user/adal"),
        (Channel.YOUTUBE, "https://www.youtube.com/@Ada_L/shorts", "youtube:ada_l"),
        (Channel.FACEBOOK, "https://www.facebook.com/profile.php?id=100012", "facebook:100012"),
        (Channel.FACEBOOK, "https://m.facebook.com/Ada.Lovelace", "facebook:ada.lovelace"),
        (Channel.FACEBOOK, "https://mobile.facebook.com/ada.lovelace/", "facebook:ada.lovelace"),
        (Channel.LINKEDIN, "https://www.linkedin.com/company/Acme/about", "linkedin:company/acme"),
        (Channel.LINKEDIN, "https://linkedin.com/in/ada-l", "linkedin:ada-l"),
        (Channel.INSTAGRAM, "https://www.instagram.com/ada.l/", "instagram:ada.l"),
        (Channel.TWITTER, "https://twitter.com/intent/user?screen_name=Ada_L", "twitter:ada_l"),
        (Channel.X, "https://mobile.x.com/Ada_L/status/1", "twitter:ada_l"),
    ],
)
def test_a_profile_url_names_its_person(channel: Channel, url: str, identity: str) -> None:
    assert normalise_identity(channel, url) == identity


@pytest.mark.parametrize(
    ("channel", "first", "second"),
    [
        (
            Channel.YOUTUBE,
            "https://youtube.com/channel/UCabc",
            "https://youtube.com/channel/UCxyz",
        ),
        (
            Channel.FACEBOOK,
            "https://facebook.com/profile.php?id=1",
            "https://facebook.com/profile.php?id=2",
        ),
        (Channel.LINKEDIN, "https://linkedin.com/company/acme", "https://linkedin.com/in/acme"),
        (Channel.INSTAGRAM, "https://instagram.com/p/Cxyz", "https://instagram.com/p/Cabc"),
        (
            Channel.TWITTER,
            "https://twitter.com/i/status/1",
            "https://twitter.com/i/status/2",
        ),
        (Channel.YOUTUBE, "https://youtube.com/watch?v=a", "https://youtube.com/watch?v=b"),
    ],
)
def test_different_people_or_posts_never_share_an_identity(
    channel: Channel, first: str, second: str
) -> None:
    assert normalise_identity(channel, first) != normalise_identity(channel, second)


@pytest.mark.parametrize(
    ("channel", "url", "identity"),
    [
        (
            Channel.INSTAGRAM,
            "https://www.instagram.com/p/Cxyz/",
            "instagram:https://instagram.com/p/cxyz",
        ),
        (
            Channel.TWITTER,
            "http://twitter.com/intent/tweet?text=hi#top",
            "twitter:https://twitter.com/intent/tweet?text=hi",
        ),
        (
            Channel.FACEBOOK,
            "https://m.facebook.com/profile.php",
            "facebook:https://facebook.com/profile.php",
        ),
        (Channel.LINKEDIN, "https://www.linkedin.com/feed/", "linkedin:https://linkedin.com/feed"),
    ],
)
def test_a_url_that_names_no_profile_is_kept_whole(
    channel: Channel, url: str, identity: str
) -> None:
    assert normalise_identity(channel, url) == identity


def test_a_url_on_another_site_is_kept_as_given() -> None:
    assert (
        normalise_identity(Channel.FORUM, "https://forum.acme.com/u/Mo")
        == "forum:https://forum.acme.com/u/mo"
    )


@pytest.mark.parametrize(
    ("channel", "url", "identity"),
    [
        (Channel.TWITTER, "https://twitter.com/Intent/user?Screen_Name=Ada_L", "twitter:ada_l"),
        (Channel.FACEBOOK, "https://facebook.com/Profile.php?ID=100012", "facebook:100012"),
    ],
)
def test_a_profile_urls_keywords_are_read_in_any_case(
    channel: Channel, url: str, identity: str
) -> None:
    assert normalise_identity(channel, url) == identity


@pytest.mark.parametrize(
    ("channel", "handle"),
    [
        (Channel.YOUTUBE, "https://m.youtube.com/channel/UCabc/videos"),
        (Channel.FACEBOOK, "https://www.facebook.com/profile.php?id=100012"),
        (Channel.FACEBOOK, "https://m.facebook.com/profile.php"),
        (Channel.TWITTER, "http://twitter.com/Intent/Tweet?Text=hi#top"),
        (Channel.TWITTER, "https://twitter.com/intent/user?screen_name="),
        (Channel.X, "https://x.com/i/status/1/"),
        (Channel.LINKEDIN, "https://www.linkedin.com/feed/"),
        (Channel.INSTAGRAM, "https://www.instagram.com/p/Cxyz/"),
        (Channel.FORUM, "https://forum.acme.com/u/Mo"),
        (Channel.TWITTER, "@Ada_L"),
        (Channel.TWITTER, "http://[ada"),
    ],
)
def test_an_identity_read_again_is_itself(channel: Channel, handle: str) -> None:
    """What lets enrich tell a key stored under an earlier rule: today's read it again."""
    identity = normalise_identity(channel, handle)
    stored_channel, _, stored_handle = identity.partition(":")

    assert normalise_identity(Channel(stored_channel), stored_handle) == identity


def test_the_identities_profile_urls_once_collapsed_to_are_known() -> None:
    collapsed = collapsed_identities()

    assert {"youtube:channel", "facebook:profile.php", "linkedin:company", "instagram:p"} <= set(
        collapsed
    )
    assert "twitter:intent" in collapsed
    assert not {"twitter:ada_l", "linkedin:ada-l", "youtube:ada"} & set(collapsed)
