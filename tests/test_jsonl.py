"""The shared JSON Lines reader: numbering, blank lines, bad lines reported rather than raised."""

from __future__ import annotations

from unime.io.jsonl import iter_jsonl


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


def test_a_field_above_the_csv_size_limit_is_named_at_its_own_line(tmp_path):
    # csv's line_num lags one line behind on this error; every CSV/TSV reader names the right line.
    import pytest

    from unime.data.records import read_records
    from unime.evaluation.sts import load_sts
    from unime.training.caption_data import read_caption_data
    from unime.training.text_data import read_sentences

    huge = "x" * 140_000
    captions = tmp_path / "captions.csv"
    captions.write_text(f"image,caption\na.jpg,short\nb.jpg,{huge}\n")
    sentences = tmp_path / "sentences.csv"
    sentences.write_text(f"sentence\nshort\n{huge}\n")
    sts = tmp_path / "sts.tsv"
    sts.write_text("a\tb\tc\td\t1.0\tone\ttwo\n" f"a\tb\tc\td\t2.0\t{huge}\ttwo\n")
    readers = [lambda: list(read_records(captions)), lambda: read_caption_data([captions], tmp_path),
               lambda: list(read_sentences(sentences)), lambda: load_sts(sts)]
    for read in readers:
        with pytest.raises(ValueError, match=r"line 2\b|line 3\b") as error:
            read()
        expected = "line 2" if read is readers[-1] else "line 3"
        assert expected in str(error.value) and "field limit" in str(error.value), str(error.value)[-120:]
