"""The search index: exact and approximate FAISS indexes, the checked folder, and the index / search commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from unime.cli import main
from unime.index import (
    AUTO_EXACT_LIMIT,
    IndexFileError,
    Item,
    build_index,
    choose_kind,
    folder_items,
    open_index,
    read_items,
    write_index,
)

pytest.importorskip("faiss")


def unit_rows(count: int, width: int, seed: int = 0, clusters: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, width)).astype(np.float32)
    if clusters:  # embeddings are clustered, not uniform: centres plus a smaller spread
        centres = rng.standard_normal((clusters, width)).astype(np.float32) * 3
        rows = rows + centres[rng.integers(0, clusters, count)]
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def mixed_items(count: int) -> list[Item]:
    # Every third item has a photo (the path is only recorded, never opened by write_index).
    return [Item(f"item-{i}", text=None if i % 3 == 0 else f"text {i}",
                 image=f"/photos/{i}.jpg" if i % 3 == 0 else None) for i in range(count)]


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors[allowed].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), allowed[order]


def test_flat_index_search_equals_brute_force_for_each_target(tmp_path: Path) -> None:
    vectors, items = unit_rows(300, 24), mixed_items(300)
    write_index(vectors, items, tmp_path / "idx", kind="flat", model_name="m")
    index = open_index(tmp_path / "idx")
    queries = unit_rows(5, 24, seed=1)
    images = np.arange(0, 300, 3)
    texts = np.setdiff1d(np.arange(300), images)
    for target, allowed in (("all", np.arange(300)), ("images", images), ("texts", texts)):
        hits = index.search(queries, k=7, target=target)
        scores, positions = brute_force(vectors, queries, 7, allowed)
        assert [[h.position for h in row] for row in hits] == positions.tolist(), target
        np.testing.assert_allclose([[h.score for h in row] for row in hits], scores, atol=1e-5)
        assert [h.rank for h in hits[0]] == list(range(1, 8))
    assert {h.item["kind"] for h in index.search(queries, 20, "images")[0]} == {"image"}
    # An excluded position (the query photo itself) never comes back.
    first = index.search(vectors[:1], k=1)[0][0]
    assert first.position == 0 and first.score == pytest.approx(1.0, abs=1e-5)
    assert index.search(vectors[:1], k=1, exclude=[0])[0][0].position != 0
    # k larger than the allowed set gives the whole set.
    assert len(index.search(queries[:1], k=1000, target="images")[0]) == len(images)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_nearly_what_the_exact_one_finds(tmp_path: Path, kind: str) -> None:
    vectors = unit_rows(4000, 32, clusters=40)
    items = [Item(str(i), text=f"t{i}") for i in range(4000)]
    write_index(vectors, items, tmp_path / "idx", kind=kind, model_name="m")
    index = open_index(tmp_path / "idx")
    assert index.manifest["index"]["kind"] == kind
    queries = unit_rows(50, 32, seed=3, clusters=40)
    exact = brute_force(vectors, queries, 10, np.arange(4000))[1]
    found = [[h.position for h in row] for row in index.search(queries, k=10)]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact.tolist(), strict=True)])
    assert recall >= 0.9, recall


def test_auto_picks_exact_below_the_limit() -> None:
    assert choose_kind("auto", 10) == "flat"
    assert choose_kind("auto", AUTO_EXACT_LIMIT) == "hnsw"
    assert choose_kind("ivf", 10) == "ivf"
    with pytest.raises(ValueError, match="--kind must be one of"):
        choose_kind("lsh", 10)


def test_open_names_the_file_that_does_not_match(tmp_path: Path) -> None:
    vectors, items = unit_rows(20, 8), mixed_items(20)
    folder = write_index(vectors, items, tmp_path / "idx", kind="flat", model_name="m")
    assert sorted(os.listdir(folder)) == ["index.faiss", "items.jsonl", "manifest.json"]
    items_file = folder / "items.jsonl"
    original = items_file.read_bytes()
    items_file.write_bytes(original.replace(b"item-1", b"item-X"))
    with pytest.raises(ValueError, match="items.jsonl: SHA-256 differs"):
        open_index(folder)
    items_file.write_bytes(original)
    vectors_file = folder / "index.faiss"
    vectors_file.write_bytes(vectors_file.read_bytes()[:-100])
    with pytest.raises(ValueError, match="index.faiss: .* bytes, but .* were written"):
        open_index(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(IndexFileError, match="manifest.json: missing"):
        open_index(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="manifest.json: not valid JSON"):
        open_index(folder)
    with pytest.raises(FileNotFoundError, match="no index folder"):
        open_index(tmp_path / "absent")


def test_manifest_that_disagrees_with_the_vectors_is_named(tmp_path: Path) -> None:
    folder = write_index(unit_rows(20, 8), mixed_items(20), tmp_path / "idx", kind="flat", model_name="m")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["count"] = 21
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="index.faiss: 20 vectors, the manifest says 21"):
        open_index(folder)


class FailingModel:
    def encode(self, inputs, batch_size=16, show_progress_bar=False):
        raise RuntimeError("the model failed half way")


def test_a_failed_build_leaves_the_previous_index_whole(tmp_path: Path) -> None:
    folder = write_index(unit_rows(20, 8), mixed_items(20), tmp_path / "idx", kind="flat", model_name="m")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    with pytest.raises(RuntimeError, match="half way"):
        build_index(FailingModel(), mixed_items(5), folder, model_name="m", overwrite=True)
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    with pytest.raises(ValueError, match="exists and is not empty"):
        write_index(unit_rows(20, 8), mixed_items(20), folder, model_name="m")
    # A rebuild over it replaces it whole, and no staging folder is left beside it.
    write_index(unit_rows(5, 8), mixed_items(5), folder, model_name="m", overwrite=True)
    assert len(open_index(folder)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_rows_are_checked_before_any_model_work(tmp_path: Path, images) -> None:
    images[0].save(tmp_path / "a.png")
    good = tmp_path / "rows.jsonl"
    good.write_text('{"id": "x", "text": "a dog", "meta": {"source": "web"}}\n{"image": "a.png"}\n')
    items = read_items(good)
    assert [i.id for i in items] == ["x", "2"]
    assert items[1].image == str((tmp_path / "a.png").resolve()) and items[0].meta == {"source": "web"}
    cases = {
        '{"text": "a", "caption": "b"}': "line 1: unknown keys \\['caption'\\]",
        '{"image": "missing.png"}': "line 1: image file not found",
        '{"instruction": "only"}': "line 1: a row needs a 'text' or an 'image'",
        '{"text": "a", "meta": 3}': "line 1: 'meta' must be an object",
        '{"text": 5}': "line 1: 'text' must be a string",
        "[1, 2]": "line 1: expected an object",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            read_items(bad)
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match="id 'a' appears twice \\(items 1 and 2\\)"):
        write_index(unit_rows(2, 4), read_items(twice), tmp_path / "idx", model_name="m")
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    images[1].save(tmp_path / "photos" / "sub" / "b.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    assert [i.id for i in folder_items(tmp_path / "photos")] == ["sub/b.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        folder_items(tmp_path / "empty")


# --- the commands, end to end on a tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def built(tiny_model_factory, tmp_path_factory, images):
    import unime

    root = tmp_path_factory.mktemp("index")
    (root / "photos").mkdir()
    for number, image in enumerate(images[:3]):
        image.save(root / "photos" / f"p{number}.png")
    rows = [{"id": "cap-a", "text": "a red square on a white wall"},
            {"id": "cap-b", "text": "two people walking a dog"},
            {"id": "both", "text": "this photo", "image": "photos/p0.png", "meta": {"n": 1}}]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model_dir = str(tiny_model_factory("qwen2_vl"))
    assert main(["index", "--model", model_dir, "--input", str(root / "rows.jsonl"), "--images",
                 str(root / "photos"), "--output", str(root / "idx"), "--dtype", "float32", "--no-progress"]) == 0
    return root, model_dir, unime.load(model_dir, dtype="float32")


def test_index_command_stores_the_model_embeddings(built) -> None:
    root, model_dir, model = built
    index = open_index(root / "idx")
    assert [item["id"] for item in index.items] == ["cap-a", "cap-b", "both", "p0.png", "p1.png", "p2.png"]
    assert index.manifest["model"] == model_dir and index.manifest["kinds"] == {"text": 2, "image+text": 1, "image": 3}
    photos = [str(root / "photos" / f"p{n}.png") for n in range(3)]
    expected = model.encode(["a red square on a white wall", "two people walking a dog",
                             {"text": "this photo", "image": photos[0]}, *({"image": p} for p in photos)],
                            show_progress_bar=False)
    stored = index.index.reconstruct_n(0, len(index))
    np.testing.assert_allclose(stored, expected, atol=1e-5)


def search_json(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(["search", *argv, "--json", "--dtype", "float32"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_search_command_text_to_images_image_to_texts_and_image_to_images(built, capsys) -> None:
    root, _, _ = built
    idx = str(root / "idx")
    hits = search_json(capsys, idx, "--text", "two people walking a dog", "-k", "3")
    assert hits[0]["id"] == "cap-b" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    photo = str(root / "photos" / "p2.png")
    same = search_json(capsys, idx, "--image", photo, "--target", "images", "-k", "10")
    assert same[0]["id"] == "p2.png" and same[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert {h["id"] for h in same} == {"both", "p0.png", "p1.png", "p2.png"}
    texts = search_json(capsys, idx, "--image", photo, "--target", "texts", "-k", "10")
    assert {h["id"] for h in texts} == {"cap-a", "cap-b"}
    assert all(-1.0 <= h["score"] <= 1.0 for h in texts)


def test_commands_refuse_bad_input_with_the_file_named(built, tmp_path, capsys) -> None:
    root, model_dir, _ = built
    assert main(["index", "--model", model_dir, "--output", str(tmp_path / "o")]) == 2
    assert "give --input rows.jsonl, --images FOLDER, or both" in capsys.readouterr().err
    assert main(["index", "--model", model_dir, "--images", str(root / "photos"), "--output", str(root / "idx")]) == 2
    assert "exists and is not empty (use --overwrite)" in capsys.readouterr().err
    assert main(["search", str(root / "idx")]) == 2
    assert "give a query" in capsys.readouterr().err
    assert main(["search", str(root / "idx"), "--image", str(tmp_path / "nope.png")]) == 2
    assert "nope.png: file not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("[]")
    assert main(["search", str(broken), "--text", "x"]) == 2
    assert f"{broken / 'manifest.json'}: not a unime index manifest" in capsys.readouterr().err


def test_index_from_a_bulk_job_holds_its_vectors_without_embedding_again(built, tmp_path, capsys) -> None:
    root, model_dir, _ = built
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "text": "a red square on a white wall"},
        {"id": "b", "image": str(root / "photos" / "p1.png")},
        {"id": "c", "text": "two people walking a dog", "image": str(root / "photos" / "p2.png")}]))
    bulk = tmp_path / "bulk"
    assert main(["encode", "--model", model_dir, "--input", str(rows), "--output", str(bulk), "--engine", "local",
                 "--shard-rows", "2", "--dtype", "float32", "--no-progress"]) == 0
    assert main(["index", "--embeddings", str(bulk), "--output", str(tmp_path / "idx")]) == 0
    from unime.bulk import read_embeddings

    index = open_index(tmp_path / "idx")
    assert [item["id"] for item in index.items] == ["a", "b", "c"]
    assert [item["kind"] for item in index.items] == ["text", "image", "image+text"]
    np.testing.assert_array_equal(index.index.reconstruct_n(0, 3), read_embeddings(bulk)[1])
    assert index.manifest["model"] == str(Path(model_dir).resolve())
    assert search_json(capsys, str(tmp_path / "idx"), "--text", "a red square on a white wall", "-k", "1")[0]["id"] == "a"
    # The input changed after the job: named, nothing written.
    rows.write_text(rows.read_text().replace("square", "circle"))
    assert main(["index", "--embeddings", str(bulk), "--output", str(tmp_path / "idx2")]) == 2
    assert f"{rows}: SHA-256 differs" in capsys.readouterr().err
    assert not (tmp_path / "idx2").exists()
    assert main(["index", "--embeddings", str(bulk), "--model", model_dir, "--output", str(tmp_path / "i3")]) == 2
    assert "drop --model" in capsys.readouterr().err
