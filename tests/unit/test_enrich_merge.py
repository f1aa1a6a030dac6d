"""How a merge combines two profiles: what the survivor keeps, takes and adds up."""

from __future__ import annotations

from services.enrich.repository import Merge, MergeBusy, merge_of
from services.enrich.service import held_for_s, history_of, missing_fields

CUSTOMER = {
    "_id": "c1",
    "name": "Ada Lovelace",
    "tier": "gold",
    "crm_id": "crm-ada",
    "value": 5000.0,
    "identities": ["twitter:ada"],
    "created_at": "2026-01-01T00:00:00+00:00",
}
PROSPECT = {
    "_id": "p1",
    "name": "early_bird",
    "tier": "prospect",
    "value": 0.0,
    "identities": ["twitter:early_bird"],
    "tags": ["seen"],
    "followers": 10,
    "posts": 3,
    "created_at": "2026-02-01T00:00:00+00:00",
    "merging": "p1>c1",
}


def test_the_survivor_takes_only_the_fields_it_lacks() -> None:
    assert missing_fields(CUSTOMER, PROSPECT) == {"tags": ["seen"]}
    assert missing_fields(PROSPECT, CUSTOMER) == {"crm_id": "crm-ada"}


def test_the_history_joins_lists_adds_posts_and_keeps_the_larger_counts() -> None:
    assert history_of(PROSPECT) == {
        "$addToSet": {"identities": {"$each": ["twitter:early_bird"]}, "tags": {"$each": ["seen"]}},
        "$inc": {"posts": 3},
        "$max": {"value": 0.0, "followers": 10},
    }


def test_history_gained_after_a_read_is_only_the_difference() -> None:
    later = {**PROSPECT, "posts": 5, "identities": ["twitter:early_bird", "x:eb"]}

    assert history_of(later, PROSPECT) == {
        "$addToSet": {"identities": {"$each": ["x:eb"]}},
        "$inc": {"posts": 2},
    }
    assert history_of(PROSPECT, PROSPECT) == {}


def test_a_merge_knows_its_marks_and_says_which_merge_holds_a_profile() -> None:
    merge = Merge(survivor="c1", other="p1")

    assert merge.holds({"merging": "p1>c1"})
    assert merge.holds({"merging": "p1>c1 applied"})
    assert not merge.holds({"merging": "c1>p1"})
    assert not merge.holds({})
    assert merge_of(merge.applied) == "a merge of p1 into c1"


def test_a_mark_names_the_merge_that_left_it() -> None:
    merge = Merge(survivor="c1", other="p1")

    assert Merge.of(merge.mark) == merge
    assert Merge.of(merge.applied) == merge


def test_a_merge_in_the_way_has_held_its_profile_since_its_mark_or_forever() -> None:
    timed = MergeBusy("c1", "p1>c1", since_ms=1_000)
    untimed = MergeBusy("c1", "p1>c1", since_ms=None)  # made before marks were timed

    assert held_for_s(timed, now_ms=61_000) == 60.0
    assert held_for_s(untimed, now_ms=61_000) == float("inf")
