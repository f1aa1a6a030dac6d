"""CRM import parsing: CSV by the standard library's reader, fed a chunk at a time, and
lines that are not UTF-8 reported by their number."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.enrich.customers import (
    CsvRows,
    ImportRow,
    JsonLines,
    ParsedRow,
    RowParser,
    RowProblem,
    line_batches,
    parsed_rows,
)

HEADER = b"crm_id,name,tier"


def fed(parser: RowParser, body: bytes, lines_per_feed: int = 1) -> list[ParsedRow]:
    lines = body.split(b"\n")
    rows: list[ParsedRow] = []
    for start in range(0, len(lines), lines_per_feed):
        rows += parser.feed(lines[start : start + lines_per_feed])
    return rows + parser.end()


def names(rows: list[ParsedRow]) -> dict[int, str]:
    return {line: row.name for line, row in rows if isinstance(row, ImportRow)}


def problems(rows: list[ParsedRow]) -> dict[int, str]:
    return {line: row.reason for line, row in rows if isinstance(row, RowProblem)}


def test_a_stray_quote_in_an_unquoted_cell_is_part_of_the_cell() -> None:
    body = HEADER + b'\n1,Ada,gold\n2,Bob 5" screen,gold\n3,Carol,gold\n4,Dan,gold\n'

    rows = fed(CsvRows(), body)

    assert names(rows) == {2: "Ada", 3: 'Bob 5" screen', 4: "Carol", 5: "Dan"}
    assert problems(rows) == {}


def test_a_quoted_cell_across_lines_fed_apart_is_one_cell() -> None:
    body = HEADER + b'\n1,"Ada\nLovelace",gold\n2,"Grace ""Amazing""\n\nHopper",gold\n3,Eve,gold'

    for lines_per_feed in (1, 2, 100):
        rows = fed(CsvRows(), body, lines_per_feed)

        # A name may not hold a line break: the rows are read whole, then refused.
        assert names(rows) == {7: "Eve"}, lines_per_feed
        assert sorted(problems(rows)) == [2, 4]
        assert "U+000A" in problems(rows)[2]


def test_a_quoted_cell_never_closed_is_one_problem_at_its_first_line() -> None:
    body = HEADER + b'\n1,Ada,gold\n2,"Bob,gold\n3,Carol,gold\n'

    rows = fed(CsvRows(), body)

    assert names(rows) == {2: "Ada"}
    assert problems(rows) == {3: "a quoted cell is never closed"}


def test_a_line_that_is_not_utf8_is_a_problem_naming_its_line_and_the_rest_import() -> None:
    body = HEADER + b'\n1,Ada,gold\n2,Bj\xf6rn,gold\n3,"Multi\n\xff",gold\n4,Eve,gold\n'

    rows = fed(CsvRows(), body)

    assert names(rows) == {2: "Ada", 6: "Eve"}
    assert set(problems(rows)) == {3, 5}
    assert "not UTF-8" in problems(rows)[3]
    assert "0xf6" in problems(rows)[3]
    assert "0xff" in problems(rows)[5]


def test_a_json_line_that_is_not_utf8_is_a_problem_and_the_rest_import() -> None:
    body = b'{"crm_id": "1", "name": "Ada"}\n{"crm_id": "2", "name": "Bj\xf6rn"}\n\n{"crm_id": "3", "name": "Eve"}'

    rows = fed(JsonLines(), body, lines_per_feed=2)

    assert names(rows) == {1: "Ada", 4: "Eve"}
    assert list(problems(rows)) == [2]
    assert "not UTF-8" in problems(rows)[2]


def test_a_byte_order_mark_and_carriage_returns_are_not_part_of_the_cells() -> None:
    body = b"\xef\xbb\xbfcrm_id,name\r\n1,Ada\r\n"

    rows = fed(CsvRows(), body)

    assert [(line, row.crm_id, row.name) for line, row in rows if isinstance(row, ImportRow)] == [
        (2, "1", "Ada")
    ]


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_lines_are_whole_however_the_body_is_chunked() -> None:
    batches = [b async for b in line_batches(chunks(b"ab", b"c\nd", b"ef\ng\n", b"h"))]

    assert batches == [[b"abc"], [b"def", b"g"], [b"h"]]


async def test_rows_of_a_streamed_body_are_parsed_in_order() -> None:
    body = chunks(HEADER + b'\n1,"Ada', b' Lovelace",gold\n2,Grace', b",gold\n")

    rows = [row async for row in parsed_rows(body, CsvRows())]

    assert names(rows) == {2: "Ada Lovelace", 3: "Grace"}
