"""Names and handles without control or bidi-override characters, free text without NUL,
and bodies that are not JSON named with where they break."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

from shared.access import KeyIn
from shared.events import Author, Role
from shared.http import field_errors, not_json, parse_json
from shared.text import Name, Text

FORBIDDEN_IN_NAMES = [
    "\x00",  # NUL
    "\t",
    "\n",
    "\x1b",  # escape
    "\x7f",  # delete
    "\x85",  # next line (C1)
    "\u202a",  # left-to-right embedding
    "\u202e",  # right-to-left override
    "\u2066",  # left-to-right isolate
    "\u2069",  # pop directional isolate
]


class Named(BaseModel):
    name: Name


class Written(BaseModel):
    text: Text


def detail_of(error: HTTPException) -> Any:
    return error.detail  # typed as text, but the API's field problems are a list


def errors_of(model: type[BaseModel], value: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(value)
    return field_errors(raised.value.errors())


@pytest.mark.parametrize("character", FORBIDDEN_IN_NAMES)
def test_a_name_with_a_control_or_bidi_override_character_is_refused_naming_it(
    character: str,
) -> None:
    [error] = errors_of(Named, {"name": f"Ada{character}Lovelace"})

    assert error["field"] == "name"
    assert f"U+{ord(character):04X} at character 3" in error["reason"]


@pytest.mark.parametrize("name", ["Ada Lovelace", "@ada_l", "Zoë Ó'Brien", "نور", "שלום", "🙂 Ada"])
def test_names_in_any_script_are_kept_as_written(name: str) -> None:
    assert Named(name=name).name == name


def test_free_text_keeps_line_breaks_tabs_and_bidi_marks_but_not_nul() -> None:
    text = "first line\n\tsecond, \u202eright to left\u202c"

    [error] = errors_of(Written, {"text": "before\x00after"})

    assert Written(text=text).text == text
    assert error == {
        "field": "text",
        "reason": "Value error, must not contain NUL (U+0000 at character 6)",
    }


def test_an_authors_handle_and_display_name_are_names() -> None:
    handle = errors_of(Author, {"handle": "@ada\u202egnp.exe"})
    display = errors_of(Author, {"handle": "@ada", "display_name": "Ada\x00"})

    assert [e["field"] for e in handle] == ["handle"]
    assert [e["field"] for e in display] == ["display_name"]


def test_a_key_name_or_subject_with_a_control_character_is_refused() -> None:
    errors = errors_of(KeyIn, {"role": Role.AGENT, "name": "ops\x1b[31m", "subject": "a\nb"})

    assert sorted(e["field"] for e in errors) == ["name", "subject"]


def test_a_body_that_is_not_json_is_named_with_the_line_column_and_reason() -> None:
    with pytest.raises(json.JSONDecodeError) as raised:
        json.loads('{\n  "name": "Ada",\n  "tier" "gold"\n}')

    assert not_json(raised.value) == {
        "field": "body",
        "reason": "not valid JSON: Expecting ':' delimiter at line 3, column 10 (character 28)",
    }


def test_a_body_that_is_not_utf8_is_named_with_the_byte_where_it_breaks() -> None:
    with pytest.raises(HTTPException) as raised:
        parse_json(b'{"name":\n "Bj\xf6rn"}')

    assert raised.value.status_code == 400
    assert detail_of(raised.value) == [
        {
            "field": "body",
            "reason": "not valid JSON: not valid UTF-8 (invalid start byte) "
            "at line 2, column 5 (byte 13)",
        }
    ]


def test_a_body_nested_too_deeply_is_named_as_the_body() -> None:
    with pytest.raises(HTTPException) as raised:
        parse_json(b"[" * 100_000)

    assert raised.value.status_code == 400
    assert detail_of(raised.value) == [
        {"field": "body", "reason": "not valid JSON: nested too deeply to read"}
    ]


def test_a_json_body_is_parsed() -> None:
    assert parse_json(b'{"name": "Ada"}') == {"name": "Ada"}
