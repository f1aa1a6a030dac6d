"""Text people give: names and handles carry no control or bidi-override characters, and
free text carries no NUL.

A control character in a name breaks the lines of logs, CSV exports and webhook
messages; a bidi override (U+202A-U+202E, U+2066-U+2069) makes a handle read as
another one. Free text (a post) keeps its tabs and newlines, and even bidi controls,
which right-to-left writers use; only NUL, which no text means, is refused there.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# C0 controls, DEL and C1 controls (Unicode's category Cc), then the bidi embeddings,
# overrides and isolates.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _codepoint(character: str) -> str:
    return f"U+{ord(character):04X}"


def no_control_characters(value: str) -> str:
    """``value`` unchanged, or a ValueError naming the first forbidden character and where."""
    found = _NOT_IN_NAMES.search(value)
    if found is not None:
        raise ValueError(
            "must not contain control or bidi-override characters "
            f"({_codepoint(found.group())} at character {found.start()})"
        )
    return value


def no_nul(value: str) -> str:
    """``value`` unchanged, or a ValueError saying where its first NUL is."""
    at = value.find("\x00")
    if at >= 0:
        raise ValueError(f"must not contain NUL (U+0000 at character {at})")
    return value


Name = Annotated[str, AfterValidator(no_control_characters)]
"""A name, handle or other identifier shown to people: one line, read as written."""

Text = Annotated[str, AfterValidator(no_nul)]
"""Free text such as a post: any character but NUL."""


def as_name(value: str) -> str:
    """A name taken from elsewhere (a feed's author), made one: each run of forbidden
    characters becomes a space."""
    return " ".join(_NOT_IN_NAMES.sub(" ", value).split())
