"""`unime align`: the projector learns from the captioning loss, everything else stays bit-identical;
labels cover the caption alone; resume is exact; bad caption rows are named; the CLI writes the
model and the projector with its provenance."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import accelerate  # noqa: F401  (the Trainer needs it: a missing install step fails here, not deep in a run)
import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import stop_at

import unime
from unime.cli import main
from unime.config import UniMEConfig
from unime.training.align import PROJECTOR_FILE, PROJECTOR_INFO, run_align
from unime.training.caption_data import read_caption_data
from unime.training.captioning import (
    IGNORE_INDEX,
    PROJECTOR,
    CaptionCollator,
    caption_format,
    generate_captions,
    load_captioner,
)
from unime.training.recipes import AlignRecipe
from unime.training.stage import TRAINING_LOG

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
CHATML_JOINT = "<|im_start|>user\n<content><|im_end|>\n<|im_start|>assistant\n"


def _write_image(path: Path, rgb: tuple[int, int, int], seed: int) -> None:
    noise = np.random.default_rng(seed).integers(-20, 20, (40, 40, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def captions(tmp_path) -> tuple[Path, Path]:
    """A CSV of 8 captions of 4 images (2 each) in tmp/images."""
    rows = ["image,caption"]
    for i, (name, rgb) in enumerate(COLOURS.items()):
        _write_image(tmp_path / "images" / f"{name}.jpg", rgb, i)
        rows += [f"{name}.jpg,a {name} square", f'{name}.jpg,"all {name}, nothing else"']
    path = tmp_path / "captions.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, tmp_path / "images"


def _recipe(model: Path, data: Path, images: Path, out: Path, **settings) -> AlignRecipe:
    base = dict(model=str(model), data=[str(data)], image_root=str(images), output_dir=str(out), batch_size=4,
                max_steps=4, save_steps=2, logging_steps=1, warmup_steps=1, bf16=False)
    return AlignRecipe(**{**base, **settings})



def _record_modes(seen: dict[str, set[bool]]):
    """A callback recording, at every forward during training, which parts run in training mode."""
    from transformers import TrainerCallback

    class RecordModes(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for name in ("vision_tower", PROJECTOR, "language_model"):
                module = model.model.get_submodule(name)
                module.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, set()).add(m.training))

    return RecordModes()


def _losses(out: Path) -> list[float]:
    entries = [json.loads(line) for line in (out / TRAINING_LOG).read_text().splitlines()]
    return [entry["loss"] for entry in entries if "loss" in entry]


# ------------------------------------------------------------------------------------ the batches


def test_labels_cover_the_caption_and_its_end_token_alone(tiny_model_factory, captions):
    captioner = load_captioner(tiny_model_factory("llava"))
    fmt = captioner.caption_format()
    assert fmt.prompt == "USER: <image>\nDescribe the image in one sentence. ASSISTANT:"
    assert (fmt.separator, fmt.end_token) == (" ", "</s>")
    collator = CaptionCollator(captioner.processor, fmt, max_caption_tokens=64)
    rows = read_caption_data([captions[0]], captions[1]).rows
    batch = collator([rows[0], rows[1]])  # "a red square", "all red, nothing else"
    tokenizer = captioner.tokenizer
    for i, caption in enumerate(["a red square", "all red, nothing else"]):
        kept = batch["labels"][i] != IGNORE_INDEX
        assert tokenizer.decode(batch["labels"][i][kept]) == f" {caption}</s>"
        # The labelled tokens are the last real ones: the prompt before them is unlabelled, padding after.
        real = batch["attention_mask"][i].bool()
        assert torch.equal(batch["input_ids"][i][kept], batch["input_ids"][i][real][-int(kept.sum()):])
        prompt = tokenizer.decode(batch["input_ids"][i][real][: -int(kept.sum())])
        assert prompt.replace("<image>" * 16, "<image>") == fmt.prompt
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # right padded
    assert batch["pixel_values"].shape[0] == 2
    short = CaptionCollator(captioner.processor, fmt, max_caption_tokens=2)(rows[1:2])
    assert (short["labels"] != IGNORE_INDEX).sum() == 3 and short["labels"][0][-1] == tokenizer.eos_token_id


def test_a_chatml_model_ends_the_caption_with_im_end(tiny_model_factory):
    tokenizer = load_captioner(tiny_model_factory("llava")).tokenizer  # has <|im_start|>, <|im_end|>
    config = UniMEConfig(family="fast_vlm", text_prompt="<sent>", image_prompt="<image>", joint_prompt=CHATML_JOINT)
    fmt = caption_format(config, "<image>", tokenizer, "Describe the image in one sentence.")
    assert fmt.text("A dog runs.") == ("<|im_start|>user\n<image>\nDescribe the image in one sentence.<|im_end|>\n"
                                       "<|im_start|>assistant\nA dog runs.<|im_end|>")


def test_a_tied_head_is_the_embedding_matrix_and_a_lost_untied_head_is_refused(tiny_model_factory, tmp_path):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    source = tiny_model_factory("llava")
    config = LlavaConfig.from_pretrained(source)
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "tied-hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        shutil.copy(source / name, tmp_path / "tied-hf" / name)
    unime.load(str(tmp_path / "tied-hf")).save(str(tmp_path / "tied"))  # a unime save drops the head
    captioner = load_captioner(tmp_path / "tied")
    head, embeddings = captioner.model.lm_head.weight, captioner.model.get_input_embeddings().weight
    assert head.data_ptr() == embeddings.data_ptr() and torch.equal(head, embeddings)
    # The embedding model and the captioner are one set of weights.
    assert captioner.embedder[0].model is captioner.model.model
    unime.load(str(source)).save(str(tmp_path / "untied"))
    with pytest.raises(ValueError, match="no language-model head"):
        load_captioner(tmp_path / "untied")


# ------------------------------------------------------------------------------------ training


def test_only_the_projector_learns_and_the_loss_falls_on_a_few_pairs(tiny_model_factory, captions, tmp_path):
    model = tiny_model_factory("llava")
    before = unime.load(str(model))[0].model.state_dict()
    recipe = _recipe(model, *captions, tmp_path / "out", batch_size=8, max_steps=20, save_steps=100,
                     learning_rate=3e-2, warmup_steps=2, lr_scheduler="constant_with_warmup")
    modes: dict[str, set[bool]] = {}
    after = unime.load(str(run_align(recipe, callbacks=[_record_modes(modes)])))[0].model.state_dict()
    # Frozen parts run as at inference (a tower's BatchNorm statistics must not move), the projector trains.
    assert modes == {"vision_tower": {False}, PROJECTOR: {True}, "language_model": {False}}
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.startswith(f"{PROJECTOR}.")}
    # The batch is the whole data: each logged loss is the loss of the current projector.
    losses = _losses(tmp_path / "out")
    assert len(losses) == 20 and losses[-1] < losses[0] - 0.1
    assert all(later <= earlier + 1e-4 for earlier, later in zip(losses[2:], losses[3:], strict=False))


def test_resuming_after_a_stop_at_step_2_gives_the_projector_of_an_uninterrupted_run(
        tiny_model_factory, captions, tmp_path):
    from safetensors.torch import load_file

    model = tiny_model_factory("llava")
    whole = load_file(str(run_align(_recipe(model, *captions, tmp_path / "whole")) / PROJECTOR_FILE))
    parts = _recipe(model, *captions, tmp_path / "parts")
    run_align(parts, callbacks=[stop_at(2)])
    assert sorted(p.name for p in parts.checkpoint_dir().iterdir()) == ["checkpoint-2"]
    assert sorted(p.name for p in (parts.checkpoint_dir() / "checkpoint-2").glob("*.safetensors")) == [PROJECTOR_FILE]
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        run_align(parts)
    resumed = load_file(str(run_align(parts.override(resume=True)) / PROJECTOR_FILE))
    assert resumed.keys() == whole.keys()
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    assert _losses(tmp_path / "parts") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-5)


def test_the_cli_writes_the_model_the_projector_and_its_provenance(tiny_model_factory, captions, tmp_path):
    data, images = captions
    data.write_text(data.read_text() + "missing.jpg,a photo that is not there\n")
    out = tmp_path / "aligned"
    code = main(["align", "--model", str(tiny_model_factory("llava")), "--data", str(data), "--image-root",
                 str(images), "--output-dir", str(out), "--batch-size", "4", "--max-steps", "2", "--skip-bad-rows",
                 "--logging-steps", "1", "--image-size", "32"])
    assert code == 0
    model = unime.load(str(out))
    assert model.unime_config.stages[-1] == "align" and model.unime_config.image_size == 32
    assert model.encode([{"image": str(images / "red.jpg")}]).shape == (1, 64)
    from safetensors.torch import load_file

    projector = load_file(str(out / PROJECTOR_FILE))
    expected = model[0].model.get_submodule(PROJECTOR).state_dict()
    assert projector.keys() == expected.keys() and all(torch.equal(projector[k], expected[k]) for k in expected)
    info = json.loads((out / PROJECTOR_INFO).read_text())
    assert info["data"]["files"] == [{"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                                      "rows": 8, "skipped": 1}]
    assert "line 10" in info["data"]["skipped_reasons"][0] and "missing.jpg" in info["data"]["skipped_reasons"][0]
    assert (info["steps"], info["stage"], info["recipe"]["max_steps"]) == (2, "align", 2)
    assert info["final_loss"] > 0 and info["wall_time_s"] >= 0 and "lora_r" not in info["recipe"]
    assert len(_losses(out)) == 2


def test_captions_are_generated_greedily_one_per_image(tiny_model_factory, captions):
    captioner = load_captioner(tiny_model_factory("llava"))
    images = [captions[1] / "red.jpg", captions[1] / "blue.jpg", captions[1] / "green.jpg"]
    first = generate_captions(captioner, images, max_new_tokens=5, batch_size=2)
    assert len(first) == 3 and all(isinstance(c, str) for c in first)
    assert generate_captions(captioner, images[:1], max_new_tokens=5) == first[:1]


# ------------------------------------------------------------------------------------ bad data


@pytest.mark.parametrize(("name", "text", "message"), [
    ("f.csv", "image,text\nred.jpg,a\n", r"f\.csv: line 1: missing column\(s\) caption"),
    ("f.csv", "image,caption\nred.jpg,a\nred.jpg,\n", r"f\.csv: line 3: column 'caption' is empty"),
    ("f.csv", "image,caption\nred.jpg,a\ngone.jpg,b\n", r"f\.csv: line 3: column 'image': image file not found"),
    ("f.csv", "image,caption\nnot-an-image.jpg,a\n", r"f\.csv: line 2: column 'image': cannot read image"),
    ("f.csv", "", r"f\.csv: empty file"),
    ("f.csv", "image,caption\n", r"f\.csv: no image-caption rows"),
    ("f.jsonl", '{"image": "red.jpg", "caption": "a"}\n{"image": "red.jpg"\n', r"f\.jsonl: line 2: not valid JSON"),
    ("f.jsonl", '{"image": "red.jpg", "caption": "a"}\n\n{"image": "red.jpg"}\n',
     r"f\.jsonl: line 3: column 'caption' is missing"),
    ("f.jsonl", '{"image": "red.jpg", "caption": 3}\n', r"f\.jsonl: line 1: column 'caption' must be a string"),
    ("f.txt", "red.jpg a\n", r"f\.txt: unsupported caption file type"),
])
def test_a_bad_row_is_named_by_file_line_and_column(captions, name, text, message):
    images = captions[1]
    (images / "not-an-image.jpg").write_text("text, not a JPEG")
    path = images.parent / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_caption_data([path], images)


def test_skipped_rows_are_counted_per_file_and_the_caps_apply_in_file_order(captions, tmp_path):
    data, images = captions
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"image": "red.jpg", "caption": "a third red"}\nnot json\n'
                     '{"image": "gone.jpg", "caption": "x"}\n{"image": "blue.jpg", "caption": "a third blue"}\n')
    with pytest.raises(ValueError, match="more.jsonl: line 2"):
        read_caption_data([data, jsonl], images)
    read = read_caption_data([data, jsonl], images, skip_bad_rows=True)
    assert [(f.rows, f.skipped) for f in read.files] == [(8, 0), (2, 2)]
    assert read.summary()["skipped"] == 2 and len(read.summary()["skipped_reasons"]) == 2
    one = read_caption_data([data, jsonl], images, captions_per_image=1, skip_bad_rows=True)
    assert [row.caption for row in one.rows] == [f"a {name} square" for name in COLOURS]
    assert [row.caption for row in read_caption_data([data], images, max_rows=3).rows] == [
        "a red square", "all red, nothing else", "a green square"]
    assert read.rows[0].image == str(images / "red.jpg") and read.rows[0].where == f"{data}: line 2"


def test_an_image_that_fails_to_decode_is_named_or_skipped_while_batching(tiny_model_factory, captions):
    data, images = captions
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "red.png")
    whole = (images / "red.png").read_bytes()
    (images / "red.jpg").write_bytes(whole[: len(whole) // 2])  # the header reads, the pixels do not
    rows = read_caption_data([data], images).rows
    captioner = load_captioner(tiny_model_factory("llava"))
    collator = CaptionCollator(captioner.processor, captioner.caption_format())
    with pytest.raises(ValueError, match=r"captions\.csv: line 2: cannot read image"):
        collator(rows[:3])
    collator.skip_bad_rows = True
    assert collator(rows[:3])["input_ids"].shape[0] == 1 and collator.skipped == 2


# ------------------------------------------------------------------------------------ the recipe


def test_the_recipe_refuses_settings_that_do_not_apply_and_the_cli_has_no_flag_for_them():
    with pytest.raises(ValueError, match="align trains the projector alone"):
        AlignRecipe(tuning="lora")
    with pytest.raises(ValueError, match="lora_r does not apply to align"):
        AlignRecipe.from_dict({"lora_r": 8})
    with pytest.raises(ValueError, match="max_caption_tokens"):
        AlignRecipe(max_caption_tokens=0)
    recipe = AlignRecipe.from_yaml("align-smol")
    assert (recipe.model, recipe.output_dir, recipe.learning_rate, recipe.bf16) == ("unime-smol", "runs/align-smol",
                                                                                    1e-3, "auto")
    assert recipe.data == ["../shared/data/flickr8k/train.csv"] and recipe.image_root.endswith("flickr8k/images")
    with pytest.raises(SystemExit):
        main(["align", "--lora-r", "8"])
    from unime.cli import build_parser

    args = build_parser().parse_args(["align", "--config", "align-smol", "--image-size", "0", "--max-rows", "100"])
    from unime.cli.stages import recipe_from_args

    derived = recipe_from_args(args)
    assert (derived.image_size, derived.max_rows, derived.batch_size) == (None, 100, recipe.batch_size)
