"""The synthetic benchmark: determinism, layouts, truth of positives and negatives, OOD hold-out, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unime.synth import SynthConfig, generate
from unime.synth.corpora import sts_score
from unime.synth.language import Caption, Clause, Desc, describe, paraphrase
from unime.synth.mmeb import EVAL_COLUMNS, TRAIN_COLUMNS
from unime.synth.perturb import SUGARCREPE_SPLITS, negative_caption, sample_edit, weaken
from unime.synth.questions import count_questions, referring_expressions, spatial_questions
from unime.synth.scenes import Scene, SceneObject, all_pairs, render, sample_scene

SMALL = SynthConfig(
    seed=3,
    train_per_dataset=12,
    eval_queries=8,
    eval_candidates=10,
    retrieval_images=6,
    captions_per_image=3,
    sugarcrepe_per_split=10,
    nli_rows=20,
    sts_pairs=20,
)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth") / "out"
    generate(folder, SMALL)
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _scenes(out: Path) -> dict[str, dict]:
    lines = (out / "scenes.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["image"]: r for r in map(json.loads, lines)}


def _tables(out: Path, kind: str) -> dict[str, pa.Table]:
    name = "train.parquet" if kind == "mmeb_train" else "test.parquet"
    return {p.parent.name: pq.read_table(p) for p in sorted((out / kind).glob(f"*/{name}"))}


# A hand-made scene: a large red circle top left, a small blue square top right, a small green
# star at the bottom left.
RED = SceneObject("red", "circle", "large", 0, 0)
BLUE = SceneObject("blue", "square", "small", 0, 2)
GREEN = SceneObject("green", "star", "small", 2, 0)
HAND = Scene((RED, BLUE, GREEN))


def test_same_seed_gives_identical_files_and_another_seed_different_ones(out: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", SMALL)
    assert _digests(tmp_path / "again") == _digests(out)
    generate(tmp_path / "other", SynthConfig(**{**SMALL.to_dict(), "seed": 4}))
    first, other = _digests(out), _digests(tmp_path / "other")
    # Scenes differ in object counts, so the crops written differ too: compare the shared files.
    shared = [k for k in first if k in other]
    assert len(shared) > 0.8 * len(first)
    assert sum(first[k] != other[k] for k in shared) > 0.95 * len(shared)
    assert all(first[k] != other[k] for k in shared if k.endswith(".parquet"))


def test_train_parquet_has_mmeb_columns_and_images_that_open(out: Path) -> None:
    scenes = _scenes(out)
    tables = _tables(out, "mmeb_train")
    assert len(tables) == 13
    for name, table in tables.items():
        assert tuple(table.column_names) == TRAIN_COLUMNS, name
        assert all(field.type == pa.string() for field in table.schema), name
        assert table.num_rows == SMALL.train_per_dataset
        for row in table.to_pylist():
            for text, image in (
                ("qry", "qry_image_path"),
                ("pos_text", "pos_image_path"),
                ("neg_text", "neg_image_path"),
            ):
                assert ("<|image_1|>" in row[text]) == bool(row[image]), (name, row)
                if row[image]:
                    assert row[image] in scenes, (name, row[image])
                    with Image.open(out / "images" / row[image]) as im:
                        assert im.size == (SMALL.image_size, SMALL.image_size)


def test_eval_lists_start_with_the_positive_and_have_no_duplicates(out: Path) -> None:
    splits = json.loads((out / "mmeb_eval" / "splits.json").read_text())
    tables = _tables(out, "mmeb_eval")
    assert set(splits) == set(tables)
    by_task: dict[str, set[str]] = {}
    referenced: set[str] = set()
    for name, info in splits.items():
        by_task.setdefault(info["meta_task"], set()).add(info["split"])
        assert name.endswith("-" + info["split"])
    assert by_task == {t: {"IND", "OOD"} for t in ("classification", "vqa", "retrieval", "grounding")}
    for name, table in tables.items():
        assert tuple(table.column_names) == EVAL_COLUMNS
        assert table.schema.field("tgt_text").type == pa.list_(pa.string())
        assert table.num_rows == SMALL.eval_queries
        for row in table.to_pylist():
            pairs = list(zip(row["tgt_text"], row["tgt_img_path"], strict=True))
            assert len(set(pairs)) == len(pairs) >= 2, name
            referenced.update(p for p in [row["qry_img_path"], *row["tgt_img_path"]] if p)
            if splits[name]["meta_task"] == "classification":
                assert all(img == "" for img in row["tgt_img_path"])
            else:
                assert len(pairs) <= SMALL.eval_candidates + 1
    for image in sorted(referenced):
        with Image.open(out / "images" / image) as im:
            assert im.size == (SMALL.image_size, SMALL.image_size), image


def test_eval_positives_are_true_for_the_query_image(out: Path) -> None:
    scenes = _scenes(out)
    tables = _tables(out, "mmeb_eval")
    for split in ("IND", "OOD"):
        for row in tables[f"SynthColorShape-{split}"].to_pylist():
            (obj,) = scenes[row["qry_img_path"]]["objects"]
            assert row["tgt_text"][0] == f"{obj['colour']} {obj['shape']}"
            assert len(row["tgt_text"]) == len(all_pairs())
        for row in tables[f"SynthCount-{split}"].to_pylist():
            count = len(scenes[row["qry_img_path"]]["objects"])
            assert row["tgt_text"][0] == ["one", "two", "three", "four"][count - 1]
        for row in tables[f"SynthShape-{split}"].to_pylist():
            (large,) = [o for o in scenes[row["qry_img_path"]]["objects"] if o["size"] == "large"]
            assert row["tgt_text"][0] == large["shape"]
        for row in tables[f"SynthGround-{split}"].to_pylist():
            label = row["qry_text"].rsplit(": ", 1)[1].strip()
            crops = [scenes[p]["object"] for p in row["tgt_img_path"]]
            assert f"{crops[0][0]} {crops[0][1]}" == label
            assert all(f"{c[0]} {c[1]}" != label for c in crops[1:])
            assert scenes[row["tgt_img_path"][0]]["source"] == row["qry_img_path"]


def test_held_out_pairs_never_appear_in_training_images_or_text(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    held = {tuple(p) for p in manifest["held_out_pairs"]}
    assert len(held) == SMALL.ood_pairs
    for record in _scenes(out).values():
        if record["image"].startswith("train/") and record["kind"] == "scene":
            assert not {(o["colour"], o["shape"]) for o in record["objects"]} & held
    texts = [v for t in _tables(out, "mmeb_train").values() for row in t.to_pylist() for v in row.values()]
    texts += (out / "text" / "nli.csv").read_text().split(",")
    for colour, shape in held:
        assert not any(f"{colour} {shape}" in text for text in texts)
    # Every OOD query is about a held-out pair: the classification labels say so directly.
    for row in _tables(out, "mmeb_eval")["SynthColorShape-OOD"].to_pylist():
        assert tuple(row["tgt_text"][0].split()) in held


def test_sugarcrepe_negatives_differ_and_are_of_their_kind(out: Path) -> None:
    for split in SUGARCREPE_SPLITS:
        items = json.loads((out / "sugarcrepe" / f"{split}.json").read_text())
        assert len(items) == SMALL.sugarcrepe_per_split
        for item in items.values():
            assert (out / "images" / item["filename"]).is_file()
            words, negative = item["caption"].split(), item["negative_caption"].split()
            assert words != negative
            if split.startswith("swap"):
                assert sorted(words) == sorted(negative)
            elif split.startswith("replace"):
                assert len(words) == len(negative) or split == "replace_rel"
            else:
                assert len(negative) > len(words)


def test_karpathy_and_text_files_follow_their_layouts(out: Path) -> None:
    data = json.loads((out / "retrieval" / "synth_karpathy.json").read_text())
    assert len(data["images"]) == SMALL.retrieval_images
    for entry in data["images"]:
        assert (out / "images" / entry["filepath"] / entry["filename"]).is_file()
        raws = [s["raw"] for s in entry["sentences"]]
        assert len(set(raws)) == len(raws) == SMALL.captions_per_image
    with (out / "text" / "nli.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == SMALL.nli_rows and list(rows[0]) == ["sent0", "sent1", "hard_neg"]
    assert all(len({r["sent0"], r["sent1"], r["hard_neg"]}) == 3 for r in rows)
    sts = [json.loads(line) for line in (out / "text" / "sts.jsonl").read_text().splitlines()]
    assert len(sts) == SMALL.sts_pairs and all(0 <= r["score"] <= 5 for r in sts)


def test_captions_are_checked_against_the_scene() -> None:
    left = Caption((Clause(Desc("circle", "red", "large"), "left of", Desc("square", "blue")),))
    assert left.text() == "a large red circle to the left of a blue square"
    assert left.true_in(HAND)
    assert (
        Caption(tuple(c.inverted() for c in left.clauses)).text()
        == "a blue square to the right of a large red circle"
    )
    assert not Caption((Clause(Desc("circle", "red"), "below", Desc("square", "blue")),)).true_in(HAND)
    assert Caption((Clause(Desc("star", "green"), "below", Desc("circle")),)).true_in(HAND)
    assert Caption((Clause(Desc("star", "green"), cell=(2, 0)),)).text() == "a green star at the bottom left"
    assert not Caption((Clause(Desc("star", "green", "large")),)).true_in(HAND)


def test_questions_and_references_on_a_hand_made_scene() -> None:
    rng = random.Random(0)
    answers = {q.question: q.answer for q in count_questions(HAND)}
    assert answers["How many circles are there?"] == "one"
    assert answers["How many small objects are there?"] == "two"
    assert answers["How many hexagons are there?"] == "zero"
    spatial = {
        (q.kind, q.answer) for q in spatial_questions(HAND, rng) if q.question.startswith("What is below")
    }
    assert spatial == {("what_rel", "a small green star")}  # the only object below another one
    refs = {
        r.text: r.target
        for r in referring_expressions(HAND, rng)
        if r.text.startswith("the object to the right")
    }
    assert refs and set(refs.values()) == {1}  # only the blue square is right of something


def test_render_puts_each_colour_at_its_box() -> None:
    image = render(HAND, 64)
    for obj in HAND.objects:
        x0, y0, x1, y1 = HAND.box(obj, 64)
        pixel = image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2 + 2))
        expected = {"red": (214, 39, 40), "blue": (31, 90, 220), "green": (44, 160, 44)}[obj.colour]
        assert max(abs(a - b) for a, b in zip(pixel, expected, strict=True)) < 20, obj


def test_paraphrases_stay_true_and_negatives_are_false_on_random_scenes() -> None:
    rng = random.Random(7)
    for _ in range(60):
        scene = sample_scene(rng, all_pairs(), rng.randint(2, 4))
        caption = describe(scene, rng)
        assert caption.true_in(scene) and paraphrase(caption, rng).true_in(scene)
        for split in SUGARCREPE_SPLITS:
            base = weaken(caption, rng) if split == "add_att" else caption
            negative = negative_caption(split, base, scene, rng)
            assert negative is None or (base.true_in(scene) and not negative.true_in(scene))
        edit = sample_edit(scene, rng, all_pairs())
        assert edit is not None and edit[1].layout_signature() != scene.layout_signature()


def test_sts_score_on_hand_computed_cases() -> None:
    a = Clause(Desc("circle", "red", "large"), "left of", Desc("square", "blue", "small"))
    assert sts_score(a, a) == 5.0
    assert sts_score(a, a.inverted()) == 5.0  # "B right of A" says the same thing
    assert sts_score(a, Clause(a.subject, "right of", a.other)) == round(5 * 6 / 7, 3)
    assert sts_score(a, Clause(Desc("circle", "green", "large"), "left of", a.other)) == round(5 * 6 / 7, 3)
    # Nothing shared in order; matched the other way round, the two sizes agree: 2 of 7 fields.
    crossed = Clause(Desc("star", "pink", "small"), "above", Desc("hexagon", "black", "large"))
    assert sts_score(a, crossed) == round(5 * 2 / 7, 3)
    unrelated = Clause(Desc("star", "pink", "large"), "above", Desc("hexagon", "black", "large"))
    assert sts_score(a, unrelated) == round(5 * 1 / 7, 3)


def test_config_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(ValueError, match="image_size"):
        SynthConfig(image_size=8)
    with pytest.raises(ValueError, match="ood_pairs"):
        SynthConfig(ood_pairs=7)
    with pytest.raises(ValueError, match="eval_queries"):
        SynthConfig(eval_queries=1)


def test_cli_refuses_a_non_empty_folder_and_writes_with_overwrite(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import unime.cli

    monkeypatch.setattr(unime.cli, "_COMMANDS", ("data",))
    (tmp_path / "notes.txt").write_text("keep me")
    small = [
        "--train-per-dataset",
        "2",
        "--eval-queries",
        "2",
        "--retrieval-images",
        "2",
        "--sugarcrepe-per-split",
        "2",
    ]
    small += ["--nli-rows", "2", "--sts-pairs", "2", "--no-real-images", "--no-progress"]
    assert unime.cli.main(["data", "synth", "--out", str(tmp_path), *small]) == 2
    assert "not empty" in capsys.readouterr().err
    assert unime.cli.main(["data", "synth", "--out", str(tmp_path), "--image-size", "8", *small]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert unime.cli.main(["data", "synth", "--out", str(tmp_path), "--overwrite", *small]) == 0
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (
        manifest["counts"]["mmeb_train"]["SynthT2I"] == 2 and "Digits" not in manifest["counts"]["mmeb_train"]
    )


def test_default_benchmark_generates_within_twenty_cpu_seconds(tmp_path: Path) -> None:
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    manifest = generate(tmp_path / "default", SynthConfig())
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    # CPU time, not wall time: the test machines are shared and wall time depends on neighbours.
    assert cpu < 20, f"default generation took {cpu:.1f} s of CPU ({wall:.1f} s wall)"
    assert sum(manifest["counts"]["mmeb_train"].values()) == 13 * 200
