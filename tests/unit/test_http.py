"""Turning pydantic's validation errors into the API's field/reason items."""

from __future__ import annotations

from shared.http import field_errors


def test_field_errors_join_the_location_without_the_body_prefix() -> None:
    errors = [{"loc": ("body", "author", "handle"), "msg": "Field required"}]

    assert field_errors(errors) == [{"field": "author.handle", "reason": "Field required"}]


def test_field_errors_name_the_body_when_the_whole_body_is_wrong() -> None:
    assert field_errors([{"loc": ("body",), "msg": "Invalid JSON"}]) == [
        {"field": "body", "reason": "Invalid JSON"}
    ]


def test_field_errors_keep_list_indices_and_strip_query_prefix() -> None:
    errors = [
        {"loc": ("body", "identities", 0, "handle"), "msg": "too short"},
        {"loc": ("query", "limit"), "msg": "not an int"},
    ]

    assert field_errors(errors) == [
        {"field": "identities.0.handle", "reason": "too short"},
        {"field": "limit", "reason": "not an int"},
    ]


def test_field_errors_default_the_reason_when_msg_is_missing() -> None:
    assert field_errors([{"loc": ("body", "text")}]) == [{"field": "text", "reason": "invalid"}]


def test_a_body_that_is_not_json_is_named_as_the_body_with_where_it_breaks() -> None:
    error = {
        "type": "json_invalid",
        "loc": ("body", 1),
        "msg": "JSON decode error",
        "ctx": {"error": "Expecting property name enclosed in double quotes"},
    }

    assert field_errors([error]) == [
        {
            "field": "body",
            "reason": "JSON decode error: Expecting property name enclosed in double quotes"
            " at character 1",
        }
    ]
