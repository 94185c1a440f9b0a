"""`unime tune-bank`: the bank loss equals the formula on hand-computed cases and the in-batch UniME loss
when the bank is the batch; only the projector learns, so text embeds bit-identically; the bank is
cached and reused; resume is exact; held-out images are scored; bad settings and overlapping eval
images are named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import accelerate  # noqa: F401  (the Trainer needs it: a missing install step fails here, not deep in a run)
import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import stop_at

import unime
from unime.cli import main
from unime.losses.hard_negative import hard_negative_infonce
from unime.training.align import PROJECTOR_FILE
from unime.training.bank import BANK_DIR, SUMMARY_FILE, CaptionBank, bank_losses, run_tune_bank
from unime.training.caption_data import CaptionRow
from unime.training.recipes import BankTuneRecipe
from unime.training.stage import TRAINING_LOG

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "cyan": (30, 220, 220), "magenta": (220, 30, 220)}


def _write_image(path: Path, rgb: tuple[int, int, int], seed: int) -> None:
    noise = np.random.default_rng(seed).integers(-20, 20, (40, 40, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def pairs(tmp_path) -> tuple[Path, Path, Path]:
    """train.csv: 4 images, 2 captions each (one caption shared by two images); dev.csv: 2 other images."""
    images = tmp_path / "images"
    train, dev = ["image,caption"], ["image,caption"]
    for i, (name, rgb) in enumerate(COLOURS.items()):
        _write_image(images / f"{name}.jpg", rgb, i)
        rows = train if i < 4 else dev
        rows += [f"{name}.jpg,a {name} square", f"{name}.jpg,all {name} and nothing else"]
    train.append("red.jpg,a coloured square")
    train.append("blue.jpg,a coloured square")
    (tmp_path / "train.csv").write_text("\n".join(train) + "\n")
    (tmp_path / "dev.csv").write_text("\n".join(dev) + "\n")
    return tmp_path / "train.csv", tmp_path / "dev.csv", images


def _recipe(model: Path, pairs: tuple[Path, Path, Path], out: Path, **settings) -> BankTuneRecipe:
    train, dev, images = pairs
    base = dict(model=str(model), data=[str(train)], image_root=str(images), output_dir=str(out), batch_size=4,
                max_steps=4, save_steps=2, logging_steps=1, warmup_steps=1, bf16=False, num_hard_negatives=3)
    return BankTuneRecipe(**{**base, **settings})



def _losses(out: Path) -> list[float]:
    entries = [json.loads(line) for line in (out / TRAINING_LOG).read_text().splitlines()]
    return [entry["loss"] for entry in entries if "loss" in entry]


# ------------------------------------------------------------------------------------ the loss


def test_the_bank_groups_captions_by_image_and_shares_a_caption_two_images_have():
    rows = [CaptionRow("a.jpg", "x", "f: line 2"), CaptionRow("a.jpg", "y", "f: line 3"),
            CaptionRow("b.jpg", "x", "f: line 4"), CaptionRow("b.jpg", "z", "f: line 5")]
    bank = CaptionBank.from_rows(rows)
    assert bank.images == ["a.jpg", "b.jpg"] and bank.texts == ["x", "y", "z"]
    assert bank.image_texts == [[0, 1], [0, 2]] and bank.where == ["f: line 2", "f: line 4"]
    assert bank.row_text.tolist() == [0, 1, 0, 2] and bank.row_image.tolist() == [0, 0, 1, 1]
    assert bank.membership(torch.tensor([1, 0])).tolist() == [[True, False, True], [True, True, False]]


def test_the_loss_is_the_formula_on_a_hand_computed_case():
    # Unit 2-d vectors: image 0 (captions 0, 1) and image 1 (caption 2); a bank of 4 captions.
    angle = lambda degrees: [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]  # noqa: E731
    images = torch.tensor([angle(0), angle(90)])
    bank = torch.tensor([angle(10), angle(30), angle(80), angle(50)])
    captions_of = torch.tensor([[True, True, False, False], [False, False, True, False]])
    positives = torch.tensor([0, 2])
    tau = 0.1
    i2t, t2i, stats = bank_losses(images, torch.tensor([0, 1]), positives, bank, captions_of, temperature=tau,
                                  num_negatives=1, false_negative_margin=0.1)
    cos = lambda a, b: math.cos(math.radians(a - b))  # noqa: E731
    # Image 0: positive caption 0 (10 deg); caption 1 is its own, never a negative; the hardest of 2, 3 is 3 (50 deg).
    expected_0 = -math.log(math.exp(cos(0, 10) / tau) / (math.exp(cos(0, 10) / tau) + math.exp(cos(0, 50) / tau)))
    # Image 1: positive caption 2 (80 deg); caption 3 (50) scores above 80's cos + 0.1? cos(40)=0.766 vs cos(10)+0.1: no.
    # The hardest non-own candidate is caption 3 (cos 40 deg) before caption 1 (cos 60) and caption 0 (cos 80).
    expected_1 = -math.log(math.exp(cos(90, 80) / tau) / (math.exp(cos(90, 80) / tau) + math.exp(cos(90, 50) / tau)))
    assert i2t.tolist() == pytest.approx([expected_0, expected_1], rel=1e-5)
    # Text to image: caption 0 against images 0 (positive) and 1; caption 2 against 1 (positive) and 0.
    t2i_0 = -math.log(math.exp(cos(10, 0) / tau) / (math.exp(cos(10, 0) / tau) + math.exp(cos(10, 90) / tau)))
    t2i_1 = -math.log(math.exp(cos(80, 90) / tau) / (math.exp(cos(80, 90) / tau) + math.exp(cos(80, 0) / tau)))
    assert t2i.tolist() == pytest.approx([t2i_0, t2i_1], rel=1e-5, abs=1e-6)
    assert stats["positive_similarity"] == pytest.approx((cos(0, 10) + cos(90, 80)) / 2, rel=1e-5)


def test_the_margin_drops_a_caption_far_above_the_positive():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])  # caption 1 is closer to image 0 than its positive
    captions_of = torch.tensor([[True, False, False], [False, False, True]])
    i2t, _, stats = bank_losses(images, torch.tensor([0, 1]), torch.tensor([0, 2]), bank, captions_of,
                                temperature=0.5, num_negatives=2, false_negative_margin=0.1)
    # Row 0: caption 1 (cos 1.0 > 0.6 + 0.1) is dropped, caption 2 (cos 0) is the negative.
    assert float(i2t[0]) == pytest.approx(-math.log(math.exp(0.6 / 0.5) / (math.exp(0.6 / 0.5) + math.exp(0.0))))
    assert stats["false_negative_rate"] == pytest.approx(1 / 4)


def test_with_the_batch_as_the_bank_image_to_text_is_the_in_batch_unime_loss():
    torch.manual_seed(0)
    images, captions = torch.randn(6, 8), torch.randn(6, 8)
    i2t, _, _ = bank_losses(images, torch.arange(6), torch.arange(6), torch.nn.functional.normalize(captions, dim=-1),
                            torch.eye(6, dtype=torch.bool), temperature=0.05, num_negatives=3,
                            false_negative_margin=0.1)
    expected = hard_negative_infonce(images, captions, temperature=0.05, num_hard_negatives=3,
                                     false_negative_margin=0.1)
    assert float(i2t.mean()) == pytest.approx(float(expected), rel=1e-5)


def test_a_caption_two_batch_images_share_is_never_the_other_images_negative():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[0.6, 0.8], [1.0, 0.0]])  # caption 0 describes both images
    captions_of = torch.tensor([[True, True], [True, False]])
    _, t2i, _ = bank_losses(images, torch.tensor([0, 1]), torch.tensor([1, 0]), bank, captions_of,
                            temperature=0.5, num_negatives=1, false_negative_margin=math.inf)
    # Caption 0 is image 1's positive; image 0 is also described by it: no negative left, loss 0.
    assert float(t2i[1]) == 0.0 and float(t2i[0]) > 0


# ------------------------------------------------------------------------------------ the run


def test_only_the_projector_learns_text_embeds_bit_identically_and_dev_is_scored(tiny_model_factory, pairs, tmp_path):
    model = tiny_model_factory("fast_vlm")
    before = unime.load(str(model))
    texts = ["a red square", "all blue and nothing else"]
    text_before = before.encode(texts)
    state_before = before[0].model.state_dict()
    recipe = _recipe(model, pairs, tmp_path / "out", max_steps=6, eval_data=str(pairs[1]), eval_steps=3,
                     learning_rate=1e-2)
    out = run_tune_bank(recipe)
    after = unime.load(str(out))
    assert after.unime_config.stages[-1] == "tune-bank"
    np.testing.assert_array_equal(after.encode(texts), text_before)
    state_after = after[0].model.state_dict()
    changed = {name for name in state_before if not torch.equal(state_before[name], state_after[name])}
    assert changed and all(name.startswith("multi_modal_projector.") for name in changed)
    info = json.loads((out / SUMMARY_FILE).read_text())
    assert (info["steps"], info["bank_captions"], info["data"]["images"]) == (6, 9, 4)
    assert [entry["step"] for entry in info["recall"]] == [3, 6]
    assert set(info["recall"][0]) >= {"eval_i2t_R@1", "eval_t2i_R@1", "images_seen"}
    # Two held-out images: R@1 is 0, 50 or 100.
    assert info["recall"][-1]["eval_i2t_R@1"] in (0.0, 50.0, 100.0)
    assert len(_losses(out)) == 6 and all(loss > 0 for loss in _losses(out))
    from safetensors.torch import load_file

    projector = load_file(str(out / PROJECTOR_FILE))
    assert all(torch.equal(t, state_after[f"multi_modal_projector.{k}"]) for k, t in projector.items())


def test_the_bank_is_embedded_once_and_resume_gives_the_uninterrupted_projector(tiny_model_factory, pairs, tmp_path):
    from safetensors.torch import load_file

    model = tiny_model_factory("fast_vlm")
    whole = load_file(str(run_tune_bank(_recipe(model, pairs, tmp_path / "whole")) / PROJECTOR_FILE))
    parts = _recipe(model, pairs, tmp_path / "parts")
    run_tune_bank(parts, callbacks=[stop_at(2)])
    cache = tmp_path / "parts" / BANK_DIR / "train.safetensors"
    stamp = cache.stat().st_mtime_ns
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        run_tune_bank(parts)
    resumed = load_file(str(run_tune_bank(parts.override(resume=True)) / PROJECTOR_FILE))
    assert cache.stat().st_mtime_ns == stamp  # reused, not embedded again
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    assert _losses(tmp_path / "parts") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-5)


def test_the_cli_runs_and_bad_settings_are_named(tiny_model_factory, pairs, tmp_path, capsys):
    train, dev, images = pairs
    model = tiny_model_factory("fast_vlm")
    out = tmp_path / "cli"
    assert main(["tune-bank", "--model", str(model), "--data", str(train), "--image-root", str(images),
                 "--output-dir", str(out), "--batch-size", "4", "--max-steps", "1", "--no-bf16"]) == 0
    assert unime.load(str(out)).unime_config.stages[-1] == "tune-bank"
    # Held-out images that are training images are refused, naming one.
    assert main(["tune-bank", "--model", str(model), "--data", str(train), "--image-root", str(images),
                 "--output-dir", str(tmp_path / "x"), "--eval-data", str(train), "--batch-size", "4",
                 "--no-bf16"]) == 2
    assert "also training images" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lora_r does not apply to tune-bank"):
        BankTuneRecipe(model="m", data=["d.csv"], output_dir="o", lora_r=8)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        BankTuneRecipe(model="m", data=["d.csv"], output_dir="o", batch_size=1)
    with pytest.raises(ValueError, match="text_to_image_weight"):
        BankTuneRecipe(model="m", data=["d.csv"], output_dir="o", text_to_image_weight=-1)
