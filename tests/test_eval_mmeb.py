"""MMEB: precision@1 on hand-computed cases, the paper's aggregates, deduplication and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import (
    ConceptModel,
    ConstantModel,
    CountingModel,
    LookupModel,
    RandomModel,
    classification_rows,
    write_image,
    write_mmeb_dataset,
    write_mmeb_suite,
)

from unime.evaluation.common import input_key
from unime.evaluation.mmeb import (
    MMEBDataset,
    MMEBProtocol,
    candidate_scores,
    evaluate_mmeb,
    load_mmeb,
    load_mmeb_dataset,
    precision_at_1,
    precision_from_scores,
    score_mmeb_dataset,
    summarize_mmeb,
)


@pytest.fixture
def suite(tmp_path):
    return write_mmeb_suite(tmp_path)


def test_precision_at_1_hand_computed_with_a_tie_counted_as_miss():
    # q0: positive 0.9 beats 0.1 -> hit; q1: negative 0.8 beats positive 0.6 -> miss;
    # q2: positive and a negative both 0.5 -> tie -> miss. 1 hit of 3.
    model = LookupModel(
        {
            "q0": [1, 0, 0],
            "q1": [0, 1, 0],
            "q2": [0, 0, 1],
            "a": [0.9, np.sqrt(1 - 0.81), 0],
            "b": [0.1, 0.8, np.sqrt(1 - 0.65)],
            "c": [0, 0.6, 0.8],
            "d": [0.5, 0, 0.5],
            "e": [0, 0.5, 0.5],
        }
    )
    dataset = MMEBDataset.from_rows("Hand", ["q0", "q1", "q2"], [["a", "b"], ["c", "b"], ["d", "e"]])
    assert dataset.pool == ["a", "b", "c", "d", "e"]
    assert score_mmeb_dataset(model, dataset) == pytest.approx(100 / 3)


def test_tie_rules_on_constructed_ties():
    # Column 0 is the positive. argmax is np.argmax (the first maximum): a tie WITH the positive is a
    # hit; strict needs the positive above every other candidate.
    scores = np.array(
        [
            [0.7, 0.7, 0.1],  # positive tied with a negative at the top: argmax hit, strict miss
            [0.5, 0.5, 0.5],  # everything tied (a constant model): argmax hit, strict miss
            [0.4, 0.6, 0.6],  # two negatives tied above the positive: miss for both
            [0.3, 0.9, 0.3],  # a negative wins outright: miss for both
            [0.8, 0.2, 0.79],  # the positive wins outright: hit for both
        ],
        dtype=np.float32,
    )
    assert precision_from_scores(scores, "argmax") == pytest.approx(60.0)
    assert precision_from_scores(scores, "strict") == pytest.approx(20.0)
    # Shorter candidate lists are NaN-padded and the padding never counts.
    ragged = np.array([[0.2, np.nan, np.nan], [0.1, 0.3, np.nan]], dtype=np.float32)
    assert precision_from_scores(ragged, "argmax") == precision_from_scores(ragged, "strict") == 50.0
    assert MMEBProtocol("vlm2vec").tie_rule == "argmax" and MMEBProtocol("unime").tie_rule == "strict"
    assert MMEBProtocol("unime", ties="argmax").tie_rule == "argmax"


def test_the_protocol_chooses_the_tie_rule_and_a_constant_model_shows_it(suite):
    datasets = load_mmeb(*suite)
    assert set(evaluate_mmeb(ConstantModel(), datasets, protocol=MMEBProtocol("vlm2vec")).values()) == {100.0}
    assert set(evaluate_mmeb(ConstantModel(), datasets, protocol=MMEBProtocol("unime")).values()) == {0.0}


def test_scores_are_cosines_of_embeddings_normalised_again_in_float32():
    # bf16-normalised rows have norms 0.997 to 1.003: the raw dot product would prefer the longer
    # negative (0.997 * 0.999 < 1.003 * 0.998), the cosine prefers the positive.
    a, b = np.arccos(0.999), np.arccos(0.998)
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    pool = np.array([[0.997 * np.cos(a), 0.997 * np.sin(a)], [1.003 * np.cos(b), 1.003 * np.sin(b)]],
                    dtype=np.float32)
    targets = [np.array([0, 1])]
    assert (pool @ queries[0])[0] < (pool @ queries[0])[1]
    np.testing.assert_allclose(candidate_scores(queries, pool, targets), [[0.999, 0.998]], atol=1e-6)
    assert precision_at_1(queries, pool, targets, "strict") == 100.0
    assert candidate_scores(queries, pool, targets).dtype == np.float32


def test_single_candidate_is_a_hit():
    # The query is orthogonal to its only candidate: nothing else competes, so it still counts.
    queries, pool = np.eye(2, dtype=np.float32)[:1], np.eye(2, dtype=np.float32)
    assert precision_at_1(queries, pool, [np.array([1])]) == 100.0


def test_oracle_scores_100_and_constant_model_scores_0(suite):
    data_dir, image_dir = suite
    datasets = load_mmeb(data_dir, image_dir)
    assert [d.name for d in datasets] == ["Custom", "ImageNet-1K", "MSCOCO_t2i"]
    oracle = evaluate_mmeb(ConceptModel(), datasets)
    assert set(oracle.values()) == {100.0}
    constant = evaluate_mmeb(ConstantModel(), datasets)
    assert set(constant.values()) == {0.0}


def test_summary_follows_the_papers_split_and_leaves_other_datasets_out():
    scores = {"ImageNet-1K": 80.0, "Place365": 40.0, "OK-VQA": 60.0, "Custom": 0.0}
    metrics = summarize_mmeb(scores)
    assert metrics["mmeb/Custom/precision@1"] == 0.0
    assert metrics["mmeb/classification/precision@1"] == pytest.approx(60.0)
    assert metrics["mmeb/vqa/precision@1"] == pytest.approx(60.0)
    assert metrics["mmeb/IND/precision@1"] == pytest.approx(70.0)
    assert metrics["mmeb/OOD/precision@1"] == pytest.approx(40.0)
    assert metrics["mmeb/overall/precision@1"] == pytest.approx(60.0)
    assert "mmeb/retrieval/precision@1" not in metrics and "mmeb/grounding/precision@1" not in metrics


def test_reader_pools_repeated_label_sets_across_parquet_shards(suite):
    data_dir, image_dir = suite
    dataset = load_mmeb_dataset(data_dir / "ImageNet-1K", image_dir)
    assert len(dataset.queries) == 12 and len(dataset.pool) == 5
    assert dataset.queries[0] == {
        "text": "<|image_1|>\nRepresent the given image for classification",
        "image": str((image_dir / "ImageNet-1K" / "cat_0.png").resolve()),
    }
    assert dataset.pool[dataset.targets[1][0]] == "dog"
    t2i = load_mmeb_dataset(data_dir / "MSCOCO_t2i", image_dir)
    assert isinstance(t2i.queries[0], str) and t2i.pool[0]["image"].endswith("cat_pool.png")


def test_each_unique_input_encoded_once_with_the_same_score_as_per_query_encoding(suite):
    data_dir, image_dir = suite
    for dataset in load_mmeb(data_dir, image_dir):
        counting = CountingModel(RandomModel())
        score = score_mmeb_dataset(counting, dataset)
        distinct = {input_key(item) for item in [*dataset.queries, *dataset.pool]}
        assert set(counting.counts) == distinct and max(counting.counts.values()) == 1

        # The naive reference: encode each query with its own candidate list, as listed in the file.
        naive = RandomModel()
        hits = 0
        for query, target in zip(dataset.queries, dataset.targets, strict=True):
            embeddings = naive.encode([query, *[dataset.pool[i] for i in target]])
            scores = embeddings[1:] @ embeddings[0]
            hits += scores[0] > scores[1:].max()
        assert score == pytest.approx(100 * hits / len(dataset.queries))


def _expect_error(folder, image_dir, error, *fragments):
    with pytest.raises(error) as raised:
        load_mmeb_dataset(folder, image_dir)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_missing_column_is_named(tmp_path):
    rows = classification_rows(tmp_path / "img", "N24News", 2)
    folder = write_mmeb_dataset(
        tmp_path / "data", "N24News", [{k: v for k, v in r.items() if k != "tgt_img_path"} for r in rows]
    )
    _expect_error(
        folder, tmp_path / "img", ValueError, "N24News", "test-00000-of-00001.parquet", "tgt_img_path"
    )


def test_unequal_candidate_lists_are_named(tmp_path):
    rows = classification_rows(tmp_path / "img", "SUN397", 3)
    rows[2]["tgt_img_path"] = rows[2]["tgt_img_path"][:-1]
    folder = write_mmeb_dataset(tmp_path / "data", "SUN397", rows)
    _expect_error(
        folder, tmp_path / "img", ValueError, "SUN397", "row 2", "tgt_text has 5", "tgt_img_path has 4"
    )


def test_missing_image_names_dataset_row_and_field(tmp_path):
    rows = classification_rows(tmp_path / "img", "VOC2007", 3)
    rows[1]["tgt_img_path"] = ["", "", "VOC2007/gone.png", "", ""]
    rows[1]["tgt_text"] = ["dog", "cat", "<|image_1|>\nRepresent the given image.", "fish", "horse"]
    folder = write_mmeb_dataset(tmp_path / "data", "VOC2007", rows)
    _expect_error(
        folder, tmp_path / "img", FileNotFoundError, "VOC2007", "row 1", "tgt_img_path[2]", "gone.png"
    )
    (tmp_path / "img" / "VOC2007" / "cat_0.png").unlink()
    _expect_error(
        folder, tmp_path / "img", FileNotFoundError, "VOC2007", "row 0", "qry_img_path", "cat_0.png"
    )


def test_placeholder_without_image_is_named(tmp_path):
    rows = classification_rows(tmp_path / "img", "GQA", 2)
    rows[1]["qry_img_path"] = ""
    folder = write_mmeb_dataset(tmp_path / "data", "GQA", rows)
    _expect_error(folder, tmp_path / "img", ValueError, "GQA", "row 1", "qry_img_path is empty")


def test_empty_dataset_folder_and_empty_parquet_are_named(tmp_path):
    (tmp_path / "data" / "OVEN").mkdir(parents=True)
    _expect_error(tmp_path / "data" / "OVEN", tmp_path, FileNotFoundError, "OVEN", "no .parquet")
    with pytest.raises(FileNotFoundError, match="EDIS"):
        load_mmeb(tmp_path / "data", tmp_path, ["EDIS"])
    empty = tmp_path / "data" / "NIGHTS"
    empty.mkdir()
    pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")}
    ).to_parquet(empty / "test.parquet")
    _expect_error(empty, tmp_path, ValueError, "NIGHTS", "no rows")


def test_absolute_image_paths_are_accepted(tmp_path):
    image = write_image(tmp_path / "elsewhere" / "cat_9.png")
    rows = [
        {
            "qry_text": "<|image_1|>\nWhat is it?",
            "qry_img_path": str(image),
            "tgt_text": ["cat", "dog"],
            "tgt_img_path": ["", ""],
        }
    ]
    folder = write_mmeb_dataset(tmp_path / "data", "ObjectNet", rows)
    assert score_mmeb_dataset(ConceptModel(), load_mmeb_dataset(folder, tmp_path / "unused")) == 100.0
