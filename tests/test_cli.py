"""The command line as a newcomer meets it: every command registered, the training stages sharing
their flags (derived from the recipe dataclasses), one spelling for outputs, help texts that name
what exists, and ``unime env`` naming known conflicts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unime import cli, environment
from unime.training.recipes import DistillRecipe, TrainRecipe, TuneRecipe, packaged_recipes

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = ("encode", "make-tiny", "data", "teacher-embed", "distill", "tune", "eval", "plot", "serve", "export",
              "demo", "env")
SHARED_FLAGS = ("--lora-r", "--lora-alpha", "--lora-dropout", "--warmup-steps", "--epochs",
                "--gradient-accumulation-steps", "--lr-scheduler", "--weight-decay", "--save-total-limit",
                "--mini-batch-size", "--max-steps", "--batch-size", "--learning-rate", "--seed", "--bf16",
                "--resume", "--trust-remote-code", "--output-dir", "--model", "--tuning", "--scope")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_documented_command_is_registered():
    assert set(DOCUMENTED) <= set(_subcommands())


def test_every_command_the_readme_runs_exists_and_parses():
    readme = (ROOT / "README.md").read_text()
    commands = _subcommands()
    lines = [line.split("#")[0].strip() for line in re.findall(r"^(?:\S.*&& )?(unime [^\n]+)$", readme, re.M)]
    assert len(lines) >= 10
    for line in lines:
        words = line.split()[1:]
        assert words[0] in commands, line
        # Every flag written in the README is one the command knows (parsing needs no files).
        parser = commands[words[0]]
        if words[0] in ("eval", "plot", "data", "export"):
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[words[1]]
        unknown = [w for w in words if w.startswith("--") and w not in _flags(parser)]
        assert not unknown, f"{line}: unknown flags {unknown}"


@pytest.mark.parametrize("command", ["distill", "tune"])
def test_training_stages_share_the_flags_a_user_expects(command):
    flags = _flags(_subcommands()[command])
    assert set(SHARED_FLAGS) <= flags, set(SHARED_FLAGS) - flags


@pytest.mark.parametrize(("command", "recipe_cls"), [("distill", DistillRecipe), ("tune", TuneRecipe)])
def test_every_recipe_field_is_a_flag_and_overrides_the_recipe(command, recipe_cls):
    flags = _flags(_subcommands()[command])
    for spec in dataclasses.fields(recipe_cls):
        assert "--" + spec.name.replace("_", "-") in flags, spec.name
        assert spec.metadata.get("help"), f"{recipe_cls.__name__}.{spec.name} has no help text"


def _recipe(command: str, argv: list[str]):
    from unime.cli import stages

    return stages.recipe_from_args(cli.build_parser().parse_args([command, *argv]))


@pytest.mark.parametrize("command", ["distill", "tune"])
def test_shared_flags_mean_the_same_in_both_stages(command):
    recipe = _recipe(command, ["--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.2", "--warmup-steps", "3",
                               "--epochs", "2", "--gradient-accumulation-steps", "2", "--lr-scheduler", "cosine",
                               "--weight-decay", "0.01", "--save-total-limit", "0", "--mini-batch-size", "0",
                               "--max-steps", "-1"])
    assert (recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.warmup_steps, recipe.epochs) == (4, 8, 0.2, 3, 2.0)
    assert (recipe.gradient_accumulation_steps, recipe.lr_scheduler, recipe.weight_decay) == (2, "cosine", 0.01)
    # 0 means "off" (null) for both GradCache and the checkpoint limit, in both stages.
    assert recipe.mini_batch_size is None and recipe.save_total_limit is None
    assert _recipe(command, ["--mini-batch-size", "4"]).mini_batch_size == 4


def test_tune_runs_without_config_on_the_default_recipe():
    recipe = _recipe("tune", ["--model", "m", "--data", "d", "--image-root", "i", "--output-dir", "o"])
    assert recipe == TuneRecipe(model="m", data="d", image_root="i", output_dir="o")
    with pytest.raises(ValueError, match="missing setting.*--data, --image-root"):
        from unime.training.tune import tune

        tune(_recipe("tune", ["--model", "m", "--output-dir", "o"]))


def test_datasets_take_one_format_everywhere():
    spaced = _recipe("tune", ["--datasets", "CIRR", "NIGHTS"]).datasets
    commas = _recipe("tune", ["--datasets", "CIRR,NIGHTS"]).datasets
    assert spaced == commas == ["CIRR", "NIGHTS"]
    weights = _recipe("tune", ["--dataset-weights", "CIRR=2", "NIGHTS=0.5"]).dataset_weights
    assert weights == {"CIRR": 2.0, "NIGHTS": 0.5}
    with pytest.raises(ValueError, match="--dataset-weights: expected NAME=WEIGHT"):
        _recipe("tune", ["--dataset-weights", "CIRR"])


def test_a_bad_flag_value_is_named():
    with pytest.raises(ValueError, match="lr_scheduler must be one of"):
        TrainRecipe(lr_scheduler="warp")
    with pytest.raises(ValueError, match="lora_r must be a positive integer"):
        _recipe("distill", ["--lora-r", "0"])


def test_the_lr_schedulers_offered_exist_in_transformers():
    from transformers import SchedulerType

    from unime.choices import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}


def test_old_spellings_still_work():
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "--out", "x"]).out == parser.parse_args(["demo", "--output-dir", "x"]).out
    assert parser.parse_args(["data", "synth", "--out", "x"]).out == "x"
    old = parser.parse_args(["teacher-embed", "--data", "a", "--output", "c"])
    new = parser.parse_args(["teacher-embed", "--data", "a", "--output-dir", "c"])
    assert old.output == new.output == "c"
    assert _recipe("distill", ["--include-diagonal"]).exclude_diagonal is False
    assert _recipe("distill", ["--no-merge"]).merge is False


def test_help_texts_name_recipes_that_exist_and_print_no_markup():
    names = set(packaged_recipes())
    commands = _subcommands()
    for name, parser in commands.items():
        text = parser.format_help()
        assert "``" not in text and ":class:" not in text and ":func:" not in text, name
        mentions = re.findall(r"(?<![\w-])((?:distill|tune|align|bank)-[a-z0-9.-]+[a-z0-9])\b", text)
        for mentioned in (m for m in mentions if m not in commands):  # e.g. the command tune-bank
            assert mentioned in names, f"unime {name} --help names the recipe {mentioned}, which does not exist"


def test_importing_the_library_prints_no_optional_library_noise():
    result = subprocess.run([sys.executable, "-c", "import unime.modeling"], capture_output=True, text=True,
                            timeout=120, check=True)
    assert "kernels-community" not in result.stderr and "gemm_4bit" not in result.stderr


# ----------------------------------------------------------------------------------------- unime env


def test_env_names_the_transformers_peft_conflict():
    versions = {"transformers": "5.24.0", "peft": "0.21.2", "sentence-transformers": "6.2.0"}
    problems = environment.known_conflicts(versions)
    assert len(problems) == 1
    assert "transformers 5.24.0 needs peft >= 0.22" in problems[0] and "transformers>=5.20,<5.24" in problems[0]
    assert environment.known_conflicts({**versions, "transformers": "5.23.0"}) == []
    assert environment.known_conflicts({**versions, "peft": "0.22.0"}) == []
    # A local build tag does not hide a version: 5.24.0+cu130 is 5.24.
    assert environment.known_conflicts({**versions, "transformers": "5.24.0+cu130"})


def test_env_passes_on_the_installed_stack_and_prints_every_package(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "transformers", "peft", "sentence-transformers", "accelerate", "bitsandbytes",
                 "deepspeed", "flash-attn", "device"):
        assert name in out
    assert "no known incompatibility" in out
    assert cli.main(["env", "--json"]) == 0
    assert "packages" in json.loads(capsys.readouterr().out)


def test_a_conflict_fails_env_and_the_training_stages_before_loading_anything(monkeypatch, capsys, tmp_path):
    real = environment.installed_versions

    def conflicting(packages=environment.PACKAGES):
        found = real(packages)
        return {**found, **{k: v for k, v in {"transformers": "5.24.0", "peft": "0.21.2"}.items() if k in found}}

    monkeypatch.setattr(environment, "installed_versions", conflicting)
    assert cli.main(["env"]) == 1
    assert "needs peft >= 0.22" in capsys.readouterr().out
    missing = str(tmp_path / "no-model")
    for argv in (["distill", "--model", missing, "--data", "x.txt", "--output-dir", str(tmp_path / "d")],
                 ["tune", "--model", missing, "--data", "x", "--image-root", "x", "--output-dir", str(tmp_path / "t")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "incompatible packages installed" in err and "transformers>=5.20,<5.24" in err, argv
        assert not (tmp_path / "d").exists() and not (tmp_path / "t").exists()


def test_demo_offers_the_library_presets_and_defaults_to_the_seeing_model():
    from unime.demo.run import DEFAULT_PRESET, PRESETS

    action = next(a for a in _subcommands()["demo"]._actions if "--preset" in a.option_strings)
    # "smol" is the llava-random preset's former name, still accepted (the command says so and runs it).
    assert set(action.choices) == set(PRESETS) | {"smol"} and "smol" not in PRESETS
    assert action.default == DEFAULT_PRESET == "seeing"
    assert cli.build_parser().parse_args(["demo"]).preset == "seeing"
