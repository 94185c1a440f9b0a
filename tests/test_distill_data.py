"""Stage-1 data: every sentence of each supported layout, duplicates removed, errors naming file and line."""

from __future__ import annotations

import pytest

from unime.training.text_data import data_fingerprint, read_sentences


def test_nli_csv_uses_all_three_sentences_of_each_row_once(tmp_path):
    path = tmp_path / "nli.csv"
    path.write_text('sent0,sent1,hard_neg\n"A man, tall, sings .",A man sings .,A woman sleeps .\n'
                    "A dog runs .,A man sings .,A cat sleeps .\n")
    assert read_sentences(path) == ["A man, tall, sings .", "A man sings .", "A woman sleeps .", "A dog runs .",
                                    "A cat sleeps ."]


def test_jsonl_of_strings_lists_and_objects(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = ['"first one"', '["second", "third"]', '{"sentence1": "fourth", "sentence2": "first one", "score": 3}',
             "", '{"text": "  fifth  "}']
    path.write_text("\n".join(lines) + "\n")
    assert read_sentences(path) == ["first one", "second", "third", "fourth", "fifth"]


def test_tsv_with_a_header_or_headerless_pairs(tmp_path):
    headed = tmp_path / "h.tsv"
    headed.write_text("sentence1\tsentence2\tscore\nA b .\tC d .\t4.0\n")
    assert read_sentences(headed) == ["A b .", "C d ."]
    pairs = tmp_path / "p.tsv"
    pairs.write_text('one "quoted" .\ttwo\nthree\tone "quoted" .\n')
    assert read_sentences(pairs) == ['one "quoted" .', "two", "three"]


def test_plain_text_one_sentence_a_line_over_several_files(tmp_path):
    (tmp_path / "a.txt").write_text("alpha \n\n beta\nalpha\n")
    (tmp_path / "b.dev").write_text("gamma\nbeta\n")
    assert read_sentences([tmp_path / "a.txt", tmp_path / "b.dev"]) == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "", r"empty\.txt: no sentences"),
        ("blank.txt", "\n  \n", r"blank\.txt: no sentences"),
        ("bad.jsonl", '"ok"\n{"text": \n', r"bad\.jsonl line 2: not valid JSON"),
        ("keys.jsonl", '{"label": 1}\n', r"keys\.jsonl line 1: no sentence field"),
        ("num.jsonl", '{"text": 5}\n', r"num\.jsonl line 1: expected a sentence"),
        ("ragged.csv", "sent0,sent1,hard_neg\na,b,c\nd,e\n", r"ragged\.csv line 3: 2 fields"),
        ("nohead.csv", "a,b,c\n", r"nohead\.csv line 1: no sentence column"),
        ("hole.csv", "sent0,sent1\n,\n", r"hole\.csv line 2: the row has no sentence"),
        ("wide.tsv", "a\tb\tc\td\n", r"wide\.tsv line 1: 4 fields"),
    ],
)
def test_bad_files_and_rows_are_named_in_the_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_sentences(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_sentences(tmp_path / "nope.csv")


def test_the_fingerprint_depends_on_content_and_order_only():
    assert data_fingerprint(["a", "b"]) == data_fingerprint(["a", "b"])
    assert data_fingerprint(["a", "b"]) != data_fingerprint(["b", "a"])
    assert data_fingerprint(["ab"]) != data_fingerprint(["a", "b"])


def test_the_snli_excerpt_gives_its_distinct_sentence_count(data_excerpts):
    folder = data_excerpts / "snli"
    files = [folder / name for name in ("s1.dev", "s2.dev", "s1.test", "s2.test")]
    assert sum(len(path.read_text(encoding="utf-8").splitlines()) for path in files) == 120
    # 30 lines a file; each premise is repeated for its 3 hypotheses, so 10 + 30 per split are distinct.
    sentences = read_sentences(files)
    assert len(sentences) == 80 == len(set(sentences))
    assert sentences[0] == "Two women are embracing while holding to go packages ."
    triplets = read_sentences(folder / "snli_dev_triplets.csv")
    assert len(triplets) == 60  # 20 rows of 3 sentences, none repeated
    assert triplets[:3] == ["Two women are embracing while holding to go packages .", "Two woman are holding packages .",
                            "The men are fighting outside a deli ."]
