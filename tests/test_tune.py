"""Stage 2 (``unime tune``): recipes, refusals, an end-to-end CLI run and resume on a tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from training_helpers import stop_at

import unime
from unime.training.recipes import TrainRecipe, resolve_recipe
from unime.training.tune import GRADCACHE_DEEPSPEED_ERROR, TuneRecipe, resolve_deepspeed, tune

PAPER_RECIPES = ["tune-phi35v", "tune-llava16", "tune-llava-onevision-7b", "tune-qwen2vl-2b", "tune-qwen2vl-7b"]
MMEB_TRAIN_20 = {"ImageNet_1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA",
                 "InfographicsVQA", "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
                 "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "MSCOCO"}

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_hold_the_papers_settings(name):
    recipe = TuneRecipe.from_yaml(name)
    assert (recipe.image_size, recipe.batch_size, recipe.max_steps, recipe.warmup_steps) == (336, 1024, 2000, 200)
    assert (recipe.temperature, recipe.num_hard_negatives, recipe.false_negative_margin) == (0.02, 8, 0.1)
    assert (recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout) == (
        "lora", "all", 16, 64, 0.1)
    assert (recipe.learning_rate, recipe.lr_scheduler, recipe.bf16, recipe.negatives) == (1e-4, "linear", True, "hard")
    assert recipe.mini_batch_size is not None and recipe.batch_size // 8 % recipe.mini_batch_size == 0
    assert set(recipe.datasets) == MMEB_TRAIN_20 and recipe.max_rows_per_dataset == 50_000
    assert recipe.split == "original" and recipe.deepspeed is None
    assert recipe.model.startswith("runs/distill-")  # stage 2 starts from the stage-1 output


def test_cpu_and_deepspeed_recipes_load():
    cpu = TuneRecipe.from_yaml("tune-cpu")
    assert cpu.batch_size % cpu.mini_batch_size == 0 and cpu.scope == "all"
    zero2 = TuneRecipe.from_yaml("tune-qwen2vl-2b-zero2")
    assert zero2.mini_batch_size is None and zero2.tuning == "full"
    config = json.loads(Path(resolve_deepspeed(zero2.deepspeed)).read_text())
    assert config["zero_optimization"]["stage"] == 2
    assert resolve_recipe("tune-cpu").parent == resolve_recipe("distill-cpu").parent
    with pytest.raises(FileNotFoundError, match="packaged: deepspeed-zero2"):
        resolve_deepspeed("zero9")


def test_defaults_are_the_papers_and_bad_settings_name_the_setting():
    assert TuneRecipe().to_dict() == TuneRecipe.from_yaml("tune-llava16").to_dict() | {
        "model": "", "data": "", "image_root": "", "output_dir": "", "datasets": None, "split": None,
        "trust_remote_code": False, "save_steps": 200, "save_total_limit": 2, "mini_batch_size": 2,
        "bf16": "auto"}  # the default: bf16 where the device has native kernels; the paper's recipes ask for bf16
    assert issubclass(TuneRecipe, TrainRecipe)
    for settings, message in [
        ({"negatives": "hardest"}, "negatives must be one of hard, random, easy, all"),
        ({"temperature": 0}, "temperature must be positive"),
        ({"num_hard_negatives": 0}, "num_hard_negatives must be a positive integer"),
        ({"image_size": -3}, "image_size must be a positive integer"),
        ({"sampling": "random"}, "sampling must be one of proportional, round_robin"),
        ({"dataset_weights": {"A": 2}, "sampling": "round_robin"}, "dataset_weights need sampling 'proportional'"),
        ({"dataset_weights": {"A": -1}}, "dataset_weights must map"),
        ({"datasets": []}, "datasets must be a non-empty list"),
        ({"deepspeed": "deepspeed-zero2"}, "cannot run under DeepSpeed"),
        ({"mini_batch": 4}, "unknown setting"),
    ]:
        with pytest.raises(ValueError, match=message):
            TuneRecipe.from_dict(settings, source="test.yaml")
    with pytest.raises(ValueError, match="missing setting.*--model, --data, --image-root, --output-dir"):
        TuneRecipe().check_runnable()


def test_deepspeed_launch_with_gradcache_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    recipe = TuneRecipe(model=str(tmp_path / "none"), data=str(tmp_path / "none"), image_root=str(tmp_path),
                        output_dir=str(tmp_path / "out"), mini_batch_size=4)
    with pytest.raises(ValueError) as info:
        tune(recipe)
    assert str(info.value) == GRADCACHE_DEEPSPEED_ERROR and "no_sync" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_one_rule_for_gradcache_with_deepspeed_at_every_moment():
    recipe = TuneRecipe(mini_batch_size=4)
    recipe.check_gradcache_deepspeed()  # no DeepSpeed anywhere
    with pytest.raises(ValueError, match="no_sync"):  # what a launch or a built trainer reports
        recipe.check_gradcache_deepspeed(deepspeed=True)
    TuneRecipe(mini_batch_size=None).check_gradcache_deepspeed(deepspeed=True)  # no GradCache: fine
    with pytest.raises(ValueError, match="no_sync"):  # the recipe's own DeepSpeed config
        TuneRecipe(mini_batch_size=4, deepspeed="deepspeed-zero2")


def _cli_args(argv: list[str]) -> argparse.Namespace:
    from unime.cli import stages as tune_cli

    parser = argparse.ArgumentParser()
    tune_cli.register(parser.add_subparsers())
    return parser.parse_args(["tune", *argv])


def test_flags_override_the_recipe():
    from unime.cli.stages import recipe_from_args

    recipe = recipe_from_args(_cli_args([
        "--config", "tune-llava16", "--model", "m", "--mini-batch-size", "0", "--batch-size", "64",
        "--datasets", "CIRR, NIGHTS", "--no-bf16", "--negatives", "random", "--false-negative-margin", "0.2",
        "--num-hard-negatives", "4", "--resume", "--skip-bad-rows", "--image-size", "224", "--tuning", "qlora",
        "--no-exclude-duplicates",
    ]))
    assert recipe.exclude_duplicates is False
    assert recipe_from_args(_cli_args(["--config", "tune-llava16"])).exclude_duplicates is True
    assert (recipe.model, recipe.mini_batch_size, recipe.batch_size, recipe.datasets) == ("m", None, 64, ["CIRR", "NIGHTS"])
    assert (recipe.bf16, recipe.negatives, recipe.false_negative_margin, recipe.num_hard_negatives) == (
        False, "random", 0.2, 4)
    assert (recipe.resume, recipe.skip_bad_rows, recipe.image_size, recipe.tuning) == (True, True, 224, "qlora")
    assert recipe.temperature == 0.02  # not given: the recipe's value
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        recipe_from_args(_cli_args(["--config", "tune-llava16", "--batch-size", "-2"]))


# ----------------------------------------------------------------------------- runs on a tiny model


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def mmeb_train(tmp_path) -> tuple[Path, Path]:
    """Two MMEB-train data sets of 8 rows: VQA (image query -> answer) and T2I (caption -> image, with
    an explicit negative image)."""
    images, data = tmp_path / "images", tmp_path / "data"
    for i in range(8):
        _png(images / "train" / f"{i}.png", i)
    vqa = [{"qry": f"<|image_1|>\nRepresent the given image with the following question: what is {i}?\n",
            "qry_image_path": f"train/{i}.png", "pos_text": f"answer {i}", "pos_image_path": ""} for i in range(8)]
    (data / "VQA").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(vqa), data / "VQA" / "train.parquet")
    t2i = [{"qry": f"Find me an everyday image that matches the given caption: picture {i}\n", "qry_image_path": "",
            "pos_text": "<|image_1|>\nRepresent the given image.\n", "pos_image_path": f"train/{i}.png",
            "neg_text": "<|image_1|>\nRepresent the given image.\n", "neg_image_path": f"train/{(i + 3) % 8}.png"}
           for i in range(8)]
    (data / "T2I").mkdir()
    (data / "T2I" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in t2i))
    return data, images


@pytest.fixture
def stage1_model(tiny_model_factory, tmp_path) -> Path:
    """A stage-1 output: a tiny Qwen2-VL with an unmerged LoRA adapter on its LLM, stage "distill"."""
    from unime.modeling import build_model
    from unime.training.adapters import apply_tuning

    model = build_model(str(tiny_model_factory("qwen2_vl")))
    torch.manual_seed(1)
    apply_tuning(model, "lora", "llm", lora_r=4, lora_alpha=8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    model[0].unime_config.stages.append("distill")
    model.save(str(tmp_path / "stage1"))
    return tmp_path / "stage1"


def _tiny_flags(data: Path, images: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--image-root", str(images), "--output-dir", str(out), "--batch-size", "4",
            "--mini-batch-size", "2", "--num-hard-negatives", "2", "--image-size", "32", "--max-steps", "4",
            "--save-steps", "2", "--no-bf16", "--explicit-negatives"]


def test_cli_tunes_a_stage1_model_end_to_end(stage1_model, mmeb_train, tmp_path, capsys):
    import unime.cli as cli

    data, images = mmeb_train
    out = tmp_path / "tuned"
    assert cli.main(["tune", "--config", "tune-cpu", "--model", str(stage1_model), *_tiny_flags(data, images, out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = unime.load(str(out))
    config = model.unime_config
    assert (config.mode, config.image_size, config.stages) == ("joint", 32, ["distill", "tune"])
    assert not (out / "adapter_config.json").exists()  # merged: loads without the base model
    summary = json.loads((out / "tune_data.json").read_text())
    assert summary["datasets"]["T2I"] == {"rows": 8, "skipped": 0, "explicit_negatives": True}
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    steps = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4]
    for entry in steps:  # every step logs the loss, the gradient norm and the mining statistics
        assert {"grad_norm", "false_negative_rate", "negative_similarity"} <= set(entry)
        assert 0.0 <= entry["false_negative_rate"] <= 1.0 and entry["grad_norm"] > 0
    # The runner writes the same log history beside the model, as for every stage.
    beside = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [entry for entry in beside if "loss" in entry] == steps
    embeddings = model.encode([{"text": "<|image_1|>\nRepresent the given image.", "image": str(images / "train/1.png")},
                               "answer 1"])
    assert embeddings.shape[0] == 2 and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_cli_reports_a_bad_row_naming_it(stage1_model, mmeb_train, tmp_path, capsys):
    import unime.cli as cli

    data, images = mmeb_train
    (images / "train" / "5.png").unlink()
    argv = ["tune", "--config", "tune-cpu", "--model", str(stage1_model), *_tiny_flags(data, images, tmp_path / "o")]
    assert cli.main(argv) == 2
    assert "dataset T2I, train.jsonl line 3: image file not found" in capsys.readouterr().err



def test_resume_gives_the_same_model_as_an_uninterrupted_run(tiny_model_factory, mmeb_train, tmp_path):
    data, images = mmeb_train

    def recipe(out: str, **changes) -> TuneRecipe:
        return TuneRecipe(model=str(tiny_model_factory("qwen2_vl")), data=str(data), image_root=str(images),
                          output_dir=str(tmp_path / out), batch_size=4, mini_batch_size=2, num_hard_negatives=2,
                          image_size=32, max_steps=4, warmup_steps=1, save_steps=2, logging_steps=1,
                          bf16=False, **changes)

    whole = load_file(str(tune(recipe("whole")) / "model.safetensors"))
    tune(recipe("parts"), callbacks=[stop_at(2)])
    assert sorted(p.name for p in (tmp_path / "parts" / "checkpoints").iterdir()) == ["checkpoint-2"]
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run; pass --resume"):
        tune(recipe("parts"))  # a new run would mix its checkpoints with the earlier run's
    resumed = load_file(str(tune(recipe("parts", resume=True)) / "model.safetensors"))
    assert resumed.keys() == whole.keys()
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    logs = [json.loads((tmp_path / run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
            for run in ("whole", "parts")]
    steps = [[e for e in log if "loss" in e] for log in logs]
    assert [e["loss"] for e in steps[1]] == pytest.approx([e["loss"] for e in steps[0]], rel=1e-5)
    # Steps 2 to 4 trained (warm-up is 1 step): the equality above is not that of an idle model.
    assert len(steps[0]) == 4 and all(e["learning_rate"] > 0 and e["grad_norm"] > 0 for e in steps[0][1:])


@pytest.mark.parametrize("tuning", ["qlora", "full"])
def test_qlora_and_full_tuning_run_and_save_a_loadable_model(tuning, tiny_model_factory, mmeb_train, tmp_path):
    data, images = mmeb_train
    recipe = TuneRecipe(model=str(tiny_model_factory("qwen2_vl")), data=str(data), image_root=str(images),
                        output_dir=str(tmp_path / tuning), tuning=tuning, batch_size=4, mini_batch_size=2,
                        num_hard_negatives=2, image_size=32, max_steps=1, warmup_steps=0, bf16=False)
    out = tune(recipe)
    model = unime.load(str(out))
    assert model.unime_config.stages == ["tune"] and not (out / "adapter_config.json").exists()
    assert model.encode(["answer 3"]).shape[0] == 1
    # The step trained: the saved weights differ from the base model's, in the language model
    # (QLoRA: its LoRA update merged into full-precision weights) and nowhere outside the scope.
    base = unime.load(str(tiny_model_factory("qwen2_vl")))
    before = {k: v for k, v in base.state_dict().items()}
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("language_model" in k and "q_proj.weight" in k for k in changed), changed
    assert all(before[k].dtype == after[k].dtype for k in before)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_a_lora_step_on_qwen3_vl_trains_its_language_model(family, tiny_model_factory, mmeb_train, tmp_path):
    """Qwen3-VL (DeepStack vision features, interleaved M-RoPE; MoE: fused experts): one LoRA step of
    stage 2 on the whole model (scope "all": every linear layer), merged and saved: the decoder's and
    the vision tower's linear layers changed, the token embeddings (no LoRA there) did not."""
    data, images = mmeb_train
    folder = tiny_model_factory(family)
    recipe = TuneRecipe(model=str(folder), data=str(data), image_root=str(images), output_dir=str(tmp_path / "q3"),
                        tuning="lora", scope="all", batch_size=4, mini_batch_size=2, num_hard_negatives=2,
                        image_size=32, max_steps=1, warmup_steps=0, bf16=False)
    out = tune(recipe)
    model = unime.load(str(out))
    assert model.backbone.family == family and model.unime_config.stages == ["tune"]
    assert not (out / "adapter_config.json").exists()
    state = json.loads((out / "checkpoints" / "checkpoint-1" / "trainer_state.json").read_text())
    (step,) = [entry for entry in state["log_history"] if "loss" in entry]
    assert np.isfinite(step["loss"]) and step["grad_norm"] > 0
    before = unime.load(str(folder)).state_dict()
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("language_model" in k and "q_proj.weight" in k for k in changed), changed
    assert any(".visual.blocks." in k and "attn.qkv.weight" in k for k in changed), changed
    assert not any("embed_tokens" in k for k in changed), changed
    embeddings = model.encode([{"text": "<|image_1|>\nRepresent the given image.", "image": str(images / "train/1.png")},
                               "answer 1"])
    assert embeddings.shape == (2, 64) and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- UniME-V2: judge-file training


@pytest.fixture
def judge_rows(tmp_path) -> tuple[Path, Path]:
    """A scored judge file of 8 rows (image query -> answer, 2 hard negatives each, one of them an image)."""
    images = tmp_path / "images"
    for i in range(8):
        _png(images / f"{i}.png", 10 + i)
    rows = [{"query_text": f"<|image_1|>\nRepresent the given image with the following question: what is {i}?",
             "query_image": f"{i}.png", "pos_text": f"answer {i}", "pos_image": "", "query_pos_scores": 0.9,
             "hard_negatives": [[f"answer {(i + 1) % 8}", ""], ["", f"{(i + 2) % 8}.png"]],
             "hard_negatives_scores": [0.3 + 0.05 * i, 0.1]} for i in range(8)]
    path = tmp_path / "judged.json"
    path.write_text(json.dumps(rows))
    return path, images


def _judge_flags(judge: Path, images: Path, out: Path, loss: str) -> list[str]:
    return ["--loss", loss, "--judge-file", str(judge), "--judge-negatives", "2", "--image-root", str(images),
            "--output-dir", str(out), "--batch-size", "4", "--mini-batch-size", "2", "--num-hard-negatives", "2",
            "--image-size", "32", "--max-steps", "2", "--save-steps", "2", "--no-bf16"]


@pytest.mark.parametrize("loss", ["unime-v2", "both"])
def test_cli_tunes_on_a_judge_file_with_the_soft_label_loss(stage1_model, judge_rows, tmp_path, capsys, loss):
    from unime import cli

    judge, images = judge_rows
    out = tmp_path / loss
    assert cli.main(["tune", "--config", "tune-cpu", "--model", str(stage1_model),
                     *_judge_flags(judge, images, out, loss)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert unime.load(str(out)).unime_config.stages == ["distill", "tune"]
    summary = json.loads((out / "tune_data.json").read_text())
    assert summary["datasets"]["judge"] == {"rows": 8, "skipped": 0, "hard_negatives": 2, "judge_scores": True}
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    for entry in steps:
        assert entry["soft_label_kl"] > 0 and ("infonce" in entry) == (loss == "both")
        if loss == "unime-v2":
            assert entry["loss"] == pytest.approx(entry["soft_label_kl"], rel=1e-3)


def test_the_collator_gives_the_judge_scores_as_labels(judge_rows):
    from unime.training.judge_data import judge_row_inputs, load_judge_train

    judge, images = judge_rows
    data = load_judge_train(judge, images, negatives=2)
    row = judge_row_inputs(data.datasets["judge"][3])
    assert list(row) == ["query", "positive", "negative_1", "negative_2", "label"]
    assert row["label"] == pytest.approx([0.9, 0.45, 0.1])
    assert row["negative_2"].image is not None and row["negative_1"].text == "answer 4"


def test_judge_training_refuses_what_it_cannot_train_on(judge_rows, tmp_path):
    from unime.training.judge_data import load_judge_train

    judge, images = judge_rows
    with pytest.raises(ValueError, match="loss unime-v2 trains on judge scores: give judge_file"):
        TuneRecipe(loss="unime-v2")
    with pytest.raises(ValueError, match="judge_file is read by loss unime-v2 or both"):
        TuneRecipe(judge_file=str(judge))
    with pytest.raises(ValueError, match="loss must be one of"):
        TuneRecipe(loss="v3", judge_file=str(judge))
    with pytest.raises(ValueError, match=r"row 0: 2 hard negatives, fewer than the 3 asked"):
        load_judge_train(judge, images, negatives=3)
    rows = json.loads(judge.read_text())
    del rows[5]["query_pos_scores"]
    unscored = tmp_path / "unscored.json"
    unscored.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="row 5: no judge scores .* unime judge first"):
        load_judge_train(unscored, images, negatives=2)
    assert load_judge_train(unscored, images, negatives=2, skip_bad_rows=True).skipped == {"judge": 1}
    (images / "0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"row 0: image .*0.png not found"):
        load_judge_train(judge, images, negatives=2)


def test_matryoshka_dims_train_and_are_recorded_with_the_model(stage1_model, mmeb_train, tmp_path, capsys):
    from unime import cli

    data, images = mmeb_train
    out = tmp_path / "mrl"
    assert cli.main(["tune", "--config", "tune-cpu", "--model", str(stage1_model), *_tiny_flags(data, images, out),
                     "--matryoshka-dims", "16", "64", "--max-steps", "2"]) == 0
    model = unime.load(str(out))
    assert model.unime_config.matryoshka_dims == [64, 16]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trained size: no warning
        model.set_dimensions(16)
    assert model.encode(["a dog"]).shape == (1, 16)
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert all("false_negative_rate" in entry for entry in state["log_history"] if "loss" in entry)
    with pytest.raises(ValueError, match="matryoshka_dims must be distinct positive integers"):
        TuneRecipe(matryoshka_dims=[64, 64])
    assert cli.main(["tune", "--config", "tune-cpu", "--model", str(stage1_model),
                     *_tiny_flags(data, images, tmp_path / "bad"), "--matryoshka-dims", "128"]) == 2
    assert "128 exceeds the model's embedding size 64" in capsys.readouterr().err
