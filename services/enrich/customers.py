"""Customer profiles as the API and CRM imports give them, and identity normalisation."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from shared.events import Channel
from shared.http import field_errors
from shared.identity import normalise_identity
from shared.text import Name

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
    handle: Name = Field(min_length=1, max_length=256)

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

    name: Name | None = Field(default=None, min_length=1, max_length=256)
    tier: str | None = Field(default=None, min_length=1, max_length=32)
    value: float | None = Field(default=None, ge=0, le=1e12)
    crm_id: Name | None = Field(default=None, min_length=1, max_length=128)
    emails: list[Email] | None = Field(default=None, max_length=16)
    tags: list[Tag] | None = Field(default=None, max_length=32)


class CustomerIn(CustomerFields):
    name: Name = Field(min_length=1, max_length=256)
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

    crm_id: Name = Field(min_length=1, max_length=128)


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


def decoded_line(number: int, raw: bytes) -> str | RowProblem:
    """The line as text, or why it is not UTF-8."""
    try:
        return line_text(number, raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        bad = raw[error.start]
        return RowProblem(
            number, f"not UTF-8: byte 0x{bad:02x} at byte {error.start} ({error.reason})"
        )


def line_text(number: int, text: str) -> str:
    """Without a carriage return; the first line loses the byte-order mark Excel's "CSV
    UTF-8" writes, which would otherwise be part of the first column's name."""
    text = text.rstrip("\r")
    return text.removeprefix("\ufeff") if number == 1 else text


class RowParser(Protocol):
    """Turns a body's lines into rows, fed a chunk's complete lines at a time."""

    def feed(self, lines: list[bytes]) -> list[ParsedRow]: ...

    def end(self) -> list[ParsedRow]: ...


class JsonLines:
    """One profile per line, as a JSON object; blank lines are skipped."""

    def __init__(self) -> None:
        self.lines_fed = 0

    def feed(self, lines: list[bytes]) -> list[ParsedRow]:
        rows: list[ParsedRow] = []
        for number, raw in enumerate(lines, start=self.lines_fed + 1):
            text = decoded_line(number, raw)
            if isinstance(text, RowProblem):
                rows.append((number, text))
            elif text.strip():
                rows.append(parse_json_line(number, text))
        self.lines_fed += len(lines)
        return rows

    def end(self) -> list[ParsedRow]:
        return []


class _OutOfLines(Exception):
    """The lines fed so far are spent, and more may come."""


class _CsvSource:
    """The lines of one pass of the csv reader, as text ending in a newline (so a quoted
    cell keeps its line breaks). A line that is not UTF-8 is read with U+FFFD in place of
    its bad bytes, so the quoting stays in step, and the record holding it is refused."""

    def __init__(self, lines: list[tuple[int, bytes]], final: bool) -> None:
        self.lines = lines
        self.final = final
        self.read = 0
        self.exhausted = False  # the reader asked for a line past the last one
        self.undecodable: dict[int, RowProblem] = {}

    def __iter__(self) -> _CsvSource:
        return self

    def __next__(self) -> str:
        if self.read == len(self.lines):
            if self.final:
                self.exhausted = True
                raise StopIteration
            raise _OutOfLines
        number, raw = self.lines[self.read]
        self.read += 1
        text = decoded_line(number, raw)
        if isinstance(text, RowProblem):
            self.undecodable[number] = text
            text = line_text(number, raw.decode("utf-8", errors="replace"))
        return text + "\n"


class CsvRows:
    """CSV rows after the header, read by the standard library's csv module.

    A record whose quoted cell goes on past the lines fed so far waits for the next
    chunk, and its lines are read again then: the reader cannot resume a record it
    broke off. Such a record is bounded by the csv module's field size limit.
    """

    def __init__(self) -> None:
        self.header: list[str] | None = None
        self.pending: list[tuple[int, bytes]] = []  # the lines of an unfinished record
        self.lines_fed = 0

    def feed(self, lines: list[bytes]) -> list[ParsedRow]:
        numbered = list(enumerate(lines, start=self.lines_fed + 1))
        self.lines_fed += len(lines)
        return self.parse(self.pending + numbered, final=False)

    def end(self) -> list[ParsedRow]:
        return self.parse(self.pending, final=True)

    def parse(self, lines: list[tuple[int, bytes]], final: bool) -> list[ParsedRow]:
        source = _CsvSource(lines, final)
        reader = csv.reader(source, strict=True)
        rows: list[ParsedRow] = []
        done = 0  # lines of the records read so far
        while True:
            try:
                values = next(reader)
            except (StopIteration, _OutOfLines):
                break
            except csv.Error as error:
                first = lines[done][0]
                unclosed = source.exhausted
                reason = "a quoted cell is never closed" if unclosed else f"unreadable CSV: {error}"
                rows.append((first, RowProblem(first, reason)))
            else:
                rows.extend(self.record(lines[done : reader.line_num], values, source))
            done = reader.line_num
        self.pending = lines[done:]
        return rows

    def record(
        self, lines: list[tuple[int, bytes]], values: list[str], source: _CsvSource
    ) -> list[ParsedRow]:
        """The row one record makes, if any: the header is none, nor is a blank line."""
        first = lines[0][0]
        problems = [source.undecodable[n] for n, _ in lines if n in source.undecodable]
        if problems:
            if self.header is None:  # the column names are taken anyway, to go on
                self.header = [column.strip().lower() for column in values]
            return [(problems[0].line, problems[0])]
        if not any(value.strip() for value in values):
            return []
        if self.header is None:
            self.header = [column.strip().lower() for column in values]
            return []
        return [parse_csv_row(first, self.header, values)]


async def line_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[bytes]]:
    """A streamed body's complete lines, without their newlines, a chunk's worth at a
    time; the last line needs no newline. Holds at most one unfinished line."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        if b"\n" not in chunk:
            continue
        end = pending.rfind(b"\n")
        yield bytes(pending[:end]).split(b"\n")
        del pending[: end + 1]
    if pending:
        yield [bytes(pending)]


async def parsed_rows(chunks: AsyncIterable[bytes], parser: RowParser) -> AsyncIterator[ParsedRow]:
    """The rows of a streamed body, parsed in a worker thread a chunk at a time: a big
    import neither holds up the event loop nor the whole body in memory."""
    async for lines in line_batches(chunks):
        for row in await asyncio.to_thread(parser.feed, lines):
            yield row
    for row in await asyncio.to_thread(parser.end):
        yield row
