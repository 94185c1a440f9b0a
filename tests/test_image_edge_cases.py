"""Awkward image files, decoded the same way (or refused naming the file) on every path that reads
images: ``model.encode`` / ``unime encode``, stage-2 training rows, MMEB evaluation and the server.

Each case below is a file on disk; ``expected`` is either the RGB pixels every path must produce
(``unime.io.images.decode_rgb``, checked against hand-made truths: EXIF orientation turned, first
GIF frame, 16-bit scaled, alpha dropped) or the ``kind`` of :class:`unime.io.images.ImageDecodeError`
every path must refuse it with.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unime
from unime.cli import main
from unime.inputs import load_image
from unime.io.images import CORRUPT, TOO_MANY_PIXELS, UNREADABLE, ImageDecodeError, decode_rgb, header_problem
from unime.serve.errors import APIError
from unime.serve.images import load_request_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height RGB pixels, with one tiny (wrong) IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b""))


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _halves(size: tuple[int, int], first: tuple[int, int, int], second: tuple[int, int, int]) -> Image.Image:
    """Left half ``first``, right half ``second``."""
    width, height = size
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = first
    array[:, width // 2 :] = second
    return Image.fromarray(array)


RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _cases() -> dict[str, tuple[bytes, object]]:
    """name -> (file bytes, expected RGB array or refusal kind)."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    jpeg = _save(photo, "JPEG", quality=90)
    cases: dict[str, tuple[bytes, object]] = {}
    cases["truncated.jpg"] = (jpeg[: len(jpeg) // 2], CORRUPT)
    cases["not_an_image.png"] = (b"GIF89a but not really" + bytes(range(40)), UNREADABLE)
    cases["empty.png"] = (b"", UNREADABLE)
    png = _save(photo, "PNG")
    cases["png_bytes_named.jpg"] = (png, np.asarray(photo))
    cmyk = Image.fromarray(rng.integers(0, 255, (24, 32, 4), dtype=np.uint8), "CMYK")
    cmyk_bytes = _save(cmyk, "JPEG", quality=95)
    cases["cmyk.jpg"] = (cmyk_bytes, np.asarray(Image.open(io.BytesIO(cmyk_bytes)).convert("RGB")))
    wide = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 256)  # 0..65280: >> 8 gives 0..255
    cases["grey16.png"] = (_save(Image.fromarray(wide), "PNG"),
                           np.repeat((wide >> 8).astype(np.uint8)[..., None], 3, axis=2))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    palette.paste(1, (0, 0, 4, 8))  # left half index 1 (blue), right half index 0 (red, transparent)
    expected_palette = np.asarray(_halves((8, 8), BLUE, RED))
    cases["palette_transparent.png"] = (_save(palette, "PNG", transparency=0), expected_palette)
    grey = Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8), "L")
    cases["grey_L.png"] = (_save(grey, "PNG"), np.repeat(np.asarray(grey)[..., None], 3, axis=2))
    alpha = Image.fromarray(np.zeros((20, 30), dtype=np.uint8), "L")
    cases["grey_LA.png"] = (_save(Image.merge("LA", (grey, alpha)), "PNG"),
                            np.repeat(np.asarray(grey)[..., None], 3, axis=2))
    rgba = Image.merge("RGBA", (*photo.split(), Image.new("L", photo.size, 0)))
    cases["rgba_transparent.png"] = (_save(rgba, "PNG"), np.asarray(photo))  # alpha dropped, colour kept
    cases["one_pixel.png"] = (_save(Image.new("RGB", (1, 1), GREEN), "PNG"), np.array([[GREEN]], dtype=np.uint8))
    # Stored 64 wide x 32 high, left red / right blue; orientation 6 means "turn 90 degrees clockwise
    # to view": the viewer sees 32 wide x 64 high, red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = _halves((64, 32), RED, BLUE)
    cases["exif_rotated.jpg"] = (_save(stored, "JPEG", quality=95, exif=exif.tobytes()),
                                 np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), BLUE)]
    cases["animated.gif"] = (_save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
                             np.asarray(frames[0]))
    cases["bomb.png"] = (_bomb_png(200_000, 200_000), TOO_MANY_PIXELS)  # PIL's own guard (> 2x its limit)
    cases["large_header.png"] = (_bomb_png(10_000, 10_000), TOO_MANY_PIXELS)  # above the limit, below 2x
    return cases


# The 10,000 x 10,000 header is above PIL's limit, below twice it: PIL only warns, the decoder refuses.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

CASES = _cases()
GOOD = sorted(name for name, (_, expected) in CASES.items() if isinstance(expected, np.ndarray))
BAD = sorted(name for name in CASES if name not in GOOD)
LOSSY = {"exif_rotated.jpg"}  # JPEG blocks blur the edge between the halves


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("edge-images")
    for name, (data, _) in CASES.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def model(tiny_model_factory, one_thread):
    return unime.load(str(tiny_model_factory("llava")), mode="joint")


def _check_pixels(name: str, image: Image.Image) -> None:
    expected = CASES[name][1]
    assert image.mode == "RGB"
    got = np.asarray(image)
    assert got.shape == expected.shape, name
    if name in LOSSY:
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 8, name
    else:
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("name", GOOD)
def test_the_shared_decoder_gives_the_expected_pixels(image_dir, name):
    _check_pixels(name, decode_rgb(image_dir / name, "x"))
    assert header_problem(image_dir / name) is None


@pytest.mark.parametrize("name", BAD)
def test_the_shared_decoder_refuses_naming_the_file(image_dir, name):
    with pytest.raises(ImageDecodeError, match=rf"row 7: cannot read image .*{name}") as caught:
        decode_rgb(image_dir / name, "row 7")
    assert caught.value.kind == CASES[name][1]
    # The header check of the training readers refuses what the header shows (not a truncation).
    problem = header_problem(image_dir / name)
    if CASES[name][1] == CORRUPT:
        assert problem is None
    else:
        assert problem is not None and name in problem


@pytest.mark.parametrize("name", GOOD)
def test_encode_path_training_rows_and_server_decode_identically(image_dir, name):
    from unime.training.mmeb_data import MMEBTrainCollator

    path = image_dir / name
    reference = np.asarray(decode_rgb(path))
    _check_pixels(name, load_image(path, "encode"))  # model.encode and unime encode
    row = {"query": {"text": "<|image_1|> q", "image": str(path)}, "positive": {"text": "p", "image": ""},
           "row": "dataset D, train.jsonl line 1"}
    np.testing.assert_array_equal(np.asarray(MMEBTrainCollator.inputs(row)["query"].image), reference)
    served = load_request_image(base64.b64encode(path.read_bytes()).decode(), param="input[0].image",
                                max_bytes=1 << 24, max_pixels=Image.MAX_IMAGE_PIXELS, fetch_remote=None)
    np.testing.assert_array_equal(np.asarray(served), reference)


@pytest.mark.parametrize("name", BAD)
def test_encode_training_rows_and_server_refuse_identically(image_dir, name):
    from unime.training.mmeb_data import MMEBTrainCollator

    path = image_dir / name
    kind = CASES[name][1]
    with pytest.raises(ImageDecodeError, match=rf"input 3: cannot read image .*{name}") as caught:
        load_image(path, "input 3")
    assert caught.value.kind == kind
    row = {"query": {"text": "<|image_1|> q", "image": str(path)}, "positive": {"text": "p", "image": ""},
           "row": "dataset D, train.jsonl line 4"}
    with pytest.raises(ValueError, match=rf"dataset D, train.jsonl line 4: cannot read image .*{name}"):
        MMEBTrainCollator.inputs(row)
    with pytest.raises(APIError) as served:
        load_request_image(base64.b64encode(path.read_bytes()).decode() or "AAAA", param="input[0].image",
                           max_bytes=1 << 24, max_pixels=Image.MAX_IMAGE_PIXELS, fetch_remote=None)
    assert served.value.status == (413 if kind == TOO_MANY_PIXELS else 400)
    assert "input[0].image" in str(served.value)


def test_the_server_pixel_limit_refuses_with_its_own_setting(image_dir):
    data = base64.b64encode((image_dir / "png_bytes_named.jpg").read_bytes()).decode()
    with pytest.raises(APIError, match=r"image is 64x48 = 3072 pixels; the limit is max_image_pixels=1000") as caught:
        load_request_image(data, param="input[0].image", max_bytes=1 << 24, max_pixels=1000, fetch_remote=None)
    assert caught.value.status == 413


def test_model_encode_embeds_each_file_as_its_decoded_image(model, image_dir):
    paths = [str(image_dir / name) for name in GOOD]
    by_path = model.encode([{"image": p} for p in paths], batch_size=4)
    by_pixels = model.encode([decode_rgb(p) for p in paths], batch_size=4)
    np.testing.assert_allclose(by_path, by_pixels, atol=1e-5)
    assert np.isfinite(by_path).all()
    for name in BAD:
        with pytest.raises(ValueError, match=rf"cannot read image .*{name}"):
            model.encode([{"image": str(image_dir / name)}])


def test_unime_encode_cli_handles_and_refuses_like_the_library(tiny_model_factory, model, image_dir, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"image": str(image_dir / name)}) + "\n" for name in GOOD))
    out = tmp_path / "emb.npy"
    model_dir = str(tiny_model_factory("llava"))
    assert main(["encode", "--model", model_dir, "--input", str(rows), "--output", str(out),
                 "--mode", "joint", "--dtype", "float32", "--no-progress"]) == 0
    expected = model.encode([decode_rgb(image_dir / name) for name in GOOD], batch_size=4)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"image": str(image_dir / "truncated.jpg")}) + "\n")
    capsys.readouterr()
    assert main(["encode", "--model", model_dir, "--input", str(bad), "--output", str(tmp_path / "x.npy"),
                 "--no-progress"]) != 0
    assert "truncated.jpg" in capsys.readouterr().err


def test_training_data_skips_and_counts_refused_images(image_dir, tmp_path):
    from unime.training.mmeb_data import MMEBTrainCollator, load_mmeb_train

    data = tmp_path / "D.jsonl"
    data.write_text("".join(json.dumps({"qry": "<|image_1|> q", "qry_image_path": name, "pos_text": f"p {name}"}) + "\n"
                            for name in sorted(CASES)))
    with pytest.raises(ValueError, match=r"dataset D, D.jsonl line \d+: cannot read image .*(bomb|empty)\.png"):
        load_mmeb_train(data, image_dir)
    loaded = load_mmeb_train(data, image_dir, skip_bad_rows=True)
    header_refused = [name for name in BAD if CASES[name][1] != CORRUPT]
    assert loaded.skipped == {"D": len(header_refused)}
    collator = MMEBTrainCollator(preprocess_fn=lambda inputs, **_: {"n": len(inputs)}, skip_bad_rows=True)
    features = list(loaded.datasets["D"])
    kept = [collator.inputs(feature) for feature in features if "truncated" not in feature["query"]["image"]]
    assert len(kept) == len(GOOD)
    for feature in features:  # the truncated file passed the header check and fails when batched
        if "truncated" in feature["query"]["image"]:
            with pytest.raises(ValueError, match=r"truncated.jpg"):
                MMEBTrainCollator.inputs(feature)


def test_mmeb_eval_encodes_good_images_and_names_a_refused_one(model, image_dir, tmp_path):
    import pandas as pd

    from unime.evaluation.mmeb import evaluate_mmeb, load_mmeb_dataset

    good = tmp_path / "Good"
    good.mkdir()
    pd.DataFrame({"qry_text": [f"find {name}" for name in GOOD], "qry_img_path": [""] * len(GOOD),
                  "tgt_text": [["<|image_1|>", "<|image_1|>"] for _ in GOOD],
                  "tgt_img_path": [[name, GOOD[(i + 1) % len(GOOD)]] for i, name in enumerate(GOOD)]}
                 ).to_parquet(good / "test.parquet")
    metrics = evaluate_mmeb(model, [load_mmeb_dataset(good, image_dir)], batch_size=4)
    assert 0.0 <= metrics["mmeb/Good/precision@1"] <= 100.0
    for name in BAD:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        pd.DataFrame({"qry_text": ["q"], "qry_img_path": [""], "tgt_text": [["<|image_1|>"]],
                      "tgt_img_path": [[name]]}).to_parquet(folder / "test.parquet")
        with pytest.raises(ValueError, match=rf"cannot read image .*{name}"):
            evaluate_mmeb(model, [load_mmeb_dataset(folder, image_dir)], batch_size=4)
