"""The shared JSON Lines reader: numbering, blank lines, bad lines reported rather than raised."""

from __future__ import annotations

from unime.jsonl import iter_jsonl


def test_lines_are_numbered_from_one_and_blank_lines_skipped():
    lines = ['{"a": 1}\n', "\n", "  \n", '"text"\n', "[1, 2]"]
    assert list(iter_jsonl(lines)) == [(1, {"a": 1}, None), (4, "text", None), (5, [1, 2], None)]


def test_a_bad_line_is_reported_with_its_number_and_reading_goes_on():
    rows = list(iter_jsonl(['{"a": 1}', "{oops", '{"b": 2}']))
    assert rows[0] == (1, {"a": 1}, None)
    number, value, error = rows[1]
    assert (number, value) == (2, None) and "property name" in error
    assert rows[2] == (3, {"b": 2}, None)


def test_numbered_pairs_keep_their_numbers():
    assert list(iter_jsonl([(7, '{"x": 0}'), (9, "")])) == [(7, {"x": 0}, None)]
