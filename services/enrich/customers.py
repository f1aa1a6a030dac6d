"""Customer profiles as the API and CRM imports give them, and identity normalisation."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from shared.events import Channel
from shared.http import field_errors
from shared.identity import normalise_identity

PROSPECT = "prospect"
DEFAULT_TIERS = ("platinum", "gold", "silver", "standard", PROSPECT)


def parse_identity(text: str) -> tuple[Channel, str]:
    """``twitter:@Ada`` as (channel, handle); raises ValueError naming what is wrong."""
    channel, separator, handle = text.partition(":")
    if not separator or not handle.strip():
        raise ValueError(f"identity {text!r} is not channel:handle")
    try:
        return Channel(channel.strip().lower()), handle
    except ValueError:
        raise ValueError(f"identity {text!r} names an unknown channel") from None


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


Email = Annotated[
    str,
    BeforeValidator(_lower),
    Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320),
]
Tag = Annotated[str, Field(min_length=1, max_length=64)]


class IdentityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    handle: str = Field(min_length=1, max_length=256)

    @property
    def normalised(self) -> str:
        return normalise_identity(self.channel, self.handle)


def _identity_from_text(value: Any) -> Any:
    """Imports may write an identity as ``twitter:@ada``."""
    if isinstance(value, str):
        channel, handle = parse_identity(value)
        return {"channel": channel, "handle": handle}
    return value


class CustomerFields(BaseModel):
    """What a profile holds besides its identities; every field optional for PATCH."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=256)
    tier: str | None = Field(default=None, min_length=1, max_length=32)
    value: float | None = Field(default=None, ge=0, le=1e12)
    crm_id: str | None = Field(default=None, min_length=1, max_length=128)
    emails: list[Email] | None = Field(default=None, max_length=16)
    tags: list[Tag] | None = Field(default=None, max_length=32)


class CustomerIn(CustomerFields):
    name: str = Field(min_length=1, max_length=256)
    tier: str = Field(default="standard", min_length=1, max_length=32)
    value: float = Field(default=0.0, ge=0, le=1e12)
    emails: list[Email] = Field(default_factory=list, max_length=16)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    identities: list[Annotated[IdentityIn, BeforeValidator(_identity_from_text)]] = Field(
        default_factory=list, max_length=64
    )

    @cached_property
    def normalised_identities(self) -> list[str]:
        return sorted({identity.normalised for identity in self.identities})


class ImportRow(CustomerIn):
    """One CRM row: the CRM id is what an import upserts by."""

    crm_id: str = Field(min_length=1, max_length=128)


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str


ParsedRow = tuple[int, ImportRow | RowProblem]


def _problem(line: int, error: ValidationError) -> RowProblem:
    return RowProblem(
        line, "; ".join(f"{e['field']}: {e['reason']}" for e in field_errors(error.errors()))
    )


def parse_json_line(line: int, text: str) -> ParsedRow:
    try:
        return line, ImportRow.model_validate_json(text)
    except ValidationError as error:
        if error.errors()[0]["type"] == "json_invalid":
            return line, RowProblem(line, "not a JSON object")
        return line, _problem(line, error)


_LIST_COLUMNS = ("emails", "tags", "identities")


def csv_record(header: list[str], values: list[str]) -> dict[str, Any]:
    """A CSV row as a profile: list columns hold ``;``-separated items, empty cells are absent."""
    record: dict[str, Any] = {}
    for column, value in zip(header, values, strict=False):
        value = value.strip()
        if not value:
            continue
        record[column] = (
            [item.strip() for item in value.split(";") if item.strip()]
            if column in _LIST_COLUMNS
            else value
        )
    return record


def parse_csv_row(line: int, header: list[str], values: list[str]) -> ParsedRow:
    if len(values) > len(header):
        return line, RowProblem(line, f"{len(values)} cells but {len(header)} columns")
    try:
        return line, ImportRow.model_validate(csv_record(header, values))
    except ValidationError as error:
        return line, _problem(line, error)


async def lines_of(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, str]]:
    """Decoded lines of a streamed body with their numbers, holding one line at a time."""
    pending = b""
    number = 0
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            yield number, decoded_line(number, raw)
    if pending:
        yield number + 1, decoded_line(number + 1, pending)


def decoded_line(number: int, raw: bytes) -> str:
    """The line as text; the first loses the byte-order mark Excel's "CSV UTF-8" writes,
    which would otherwise be part of the first column's name."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return text.removeprefix("\ufeff") if number == 1 else text


async def json_rows(lines: AsyncIterable[tuple[int, str]]) -> AsyncIterator[ParsedRow]:
    async for number, text in lines:
        if text.strip():
            yield parse_json_line(number, text)


async def csv_rows(lines: AsyncIterable[tuple[int, str]]) -> AsyncIterator[ParsedRow]:
    """Rows after the header; a quoted cell may span lines (an odd count of quotes so far)."""
    header: list[str] | None = None
    record, first = "", 0
    async for number, text in lines:
        record, first = (f"{record}\n{text}", first) if record else (text, number)
        if record.count('"') % 2:
            continue  # inside a quoted cell: the record goes on on the next line
        try:
            values = next(csv.reader([record]), [])
        except csv.Error as error:  # a cell over the csv module's limit, say
            yield first, RowProblem(first, f"unreadable CSV: {error}")
            record = ""
            continue
        record = ""
        if not any(value.strip() for value in values):
            continue
        if header is None:
            header = [column.strip().lower() for column in values]
        else:
            yield parse_csv_row(first, header, values)
    if record:
        yield first, RowProblem(first, "a quoted cell is never closed")
