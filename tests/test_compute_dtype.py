"""The one rule that picks the compute dtype from the device (unime.environment.compute_dtype), and
everything that follows it: --dtype of eval / encode / serve, a recipe's bf16, unime.load, unime env.

The CPU's bf16 kernels are faked by patching torch's own probes, so every case runs on any host;
one test runs the real probe in a process restricted to AVX2."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_fixtures import RandomModel, write_mmeb_suite

import unime
from unime import cli, environment
from unime.environment import compute_dtype, resolve_bf16, resolve_dtype
from unime.training.recipes import AlignRecipe, DistillRecipe, TuneRecipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(native, capability)``: a machine without a GPU whose CPU has (or lacks) native bf16 kernels."""

    def fake(native: bool, capability: str = "AVX2") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)

    return fake


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- the rule -------------------------------------------------------------------------------------


def test_a_cpu_with_native_bf16_kernels_computes_in_bf16(cpu):
    cpu(True, "AVX512")
    assert compute_dtype("cpu") == compute_dtype() == "bfloat16"


def test_an_avx2_cpu_without_bf16_kernels_computes_in_float32(cpu):
    cpu(False, "AVX2")
    assert compute_dtype("cpu") == compute_dtype() == "float32"


def test_a_cuda_gpu_with_native_bf16_computes_in_bf16_and_one_that_only_emulates_it_in_float32(cpu, monkeypatch):
    cpu(False, "AVX2")  # the host CPU does not matter for the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert compute_dtype("cuda") == compute_dtype("cuda:1") == compute_dtype() == "bfloat16"
    # A pre-Ampere GPU: bf16 "supported" only by emulation, which the rule does not count.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert compute_dtype("cuda") == "float32"
    assert compute_dtype("cpu") == "float32" and compute_dtype("mps") == "float32"


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64")
                    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="needs an x86 CPU with AVX2")
def test_the_real_probe_on_a_cpu_restricted_to_avx2_picks_float32_and_env_says_why():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "unime", "env"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert "cpu         capability AVX2; no native bf16 kernels" in done.stdout, done.stdout + done.stderr
    assert "dtype auto  float32" in done.stdout


# --- a --dtype choice -----------------------------------------------------------------------------


def test_dtype_auto_resolves_by_the_rule_and_explicit_choices_are_kept(cpu, caplog):
    cpu(True, "AVX512")
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    cpu(False)
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16" and resolve_dtype("float32", "cpu") == "float32"
    assert _warnings(caplog) == []
    with pytest.raises(ValueError, match="--dtype must be one of auto, bfloat16, float32, float16, got 'half'"):
        resolve_dtype("half", "cpu")


def test_explicit_bfloat16_on_a_cpu_without_bf16_kernels_warns_with_the_slowdown(cpu, caplog):
    cpu(False, "AVX2")
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    [message] = _warnings(caplog)
    assert "bf16 on this CPU has no native kernels (capability AVX2)" in message
    assert "about 80x slower than float32" in message and "use --dtype auto or float32" in message


def test_explicit_bfloat16_warns_neither_on_a_native_cpu_nor_for_a_gpu(cpu, caplog, monkeypatch):
    cpu(True, "AVX512")
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    cpu(False, "AVX2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("bfloat16", "cuda") == "bfloat16"
    assert _warnings(caplog) == []


def test_unime_load_dtype_auto_follows_the_rule(cpu, tiny_model_factory):
    path = str(tiny_model_factory("qwen2_vl"))
    cpu(True, "AVX512")
    assert unime.load(path, dtype="auto", device="cpu")[0].model.dtype == torch.bfloat16
    cpu(False)
    assert unime.load(path, dtype="auto", device="cpu")[0].model.dtype == torch.float32


# --- the commands ---------------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch):
    """Every ``unime.load`` call's keywords; the load returns ``RandomModel()`` (no model is read)."""
    from unime import model_names

    calls: list[dict] = []

    def load(*args, **kwargs):
        calls.append(kwargs)
        return RandomModel()

    monkeypatch.setattr(unime, "load", load)
    monkeypatch.setattr(model_names, "check_model_name", lambda *args, **kwargs: None)
    return calls


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_eval_mmeb_runs_and_records_the_dtype_auto_resolved_to(cpu, loads, tmp_path, native, expected):
    cpu(native)
    data_dir, image_dir = write_mmeb_suite(tmp_path)
    output = tmp_path / "mmeb.json"
    assert cli.main(["eval", "mmeb", "--model", "m", "--data-dir", str(data_dir), "--image-dir", str(image_dir),
                     "--datasets", "Custom", "--output", str(output), "--no-progress"]) == 0
    assert loads[0]["dtype"] == expected
    assert json.loads(output.read_text())["config"]["dtype"] == expected


def test_eval_records_an_explicit_bfloat16_and_warns_on_a_cpu_without_kernels(cpu, loads, tmp_path, caplog):
    cpu(False)
    data = tmp_path / "sts.jsonl"
    data.write_text("".join(json.dumps({"sentence1": f"a {c}", "sentence2": f"the {c}", "score": i}) + "\n"
                            for i, c in enumerate(["cat", "dog", "car"])))
    output = tmp_path / "sts.json"
    assert cli.main(["eval", "sts", "--model", "m", "--data", str(data), "--output", str(output),
                     "--dtype", "bfloat16", "--no-progress"]) == 0
    assert loads[0]["dtype"] == "bfloat16" and json.loads(output.read_text())["config"]["dtype"] == "bfloat16"
    assert any("no native kernels (capability AVX2)" in message for message in _warnings(caplog))


def test_encode_and_serve_load_the_model_in_the_dtype_auto_resolved_to(cpu, loads, tmp_path, monkeypatch):
    import numpy as np
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a red square"}\n')
    encode = ["encode", "--model", "m", "--input", str(rows), "--output", str(tmp_path / "o.npy"), "--no-progress"]
    cpu(True, "AVX512")
    assert cli.main(encode) == 0 and cli.main(["serve", "--model", "m"]) == 0
    cpu(False)
    assert cli.main(encode) == 0 and cli.main(["serve", "--model", "m", "--dtype", "float16"]) == 0
    assert [call["dtype"] for call in loads] == ["bfloat16", "bfloat16", "float32", "float16"]
    assert np.load(tmp_path / "o.npy").shape == (1, 16)


def test_unime_env_prints_the_capability_the_kernels_and_the_auto_dtype(cpu, capsys):
    cpu(False, "AVX2")
    cli.main(["env"])
    out = capsys.readouterr().out
    assert "cpu         capability AVX2; no native bf16 kernels" in out and "dtype auto  float32" in out
    cpu(True, "AVX512")
    cli.main(["env"])
    out = capsys.readouterr().out
    assert "cpu         capability AVX512; native bf16 kernels" in out and "dtype auto  bfloat16" in out
    summary = environment.device_summary()
    assert (summary["cpu_capability"], summary["cpu_bf16_native"], summary["auto_dtype"]) == ("AVX512", True,
                                                                                              "bfloat16")


# --- a recipe's bf16 ------------------------------------------------------------------------------


def test_recipe_bf16_is_auto_by_default_and_a_yaml_auto_is_accepted(tmp_path):
    assert DistillRecipe().bf16 == TuneRecipe().bf16 == AlignRecipe().bf16 == "auto"
    path = tmp_path / "r.yaml"
    path.write_text("model: m\nbf16: auto\n")
    assert DistillRecipe.from_yaml(path).bf16 == "auto"
    path.write_text("model: m\nbf16: false\n")
    assert DistillRecipe.from_yaml(path).bf16 is False


@pytest.mark.parametrize(("name", "expected"), [("distill-cpu", "auto"), ("tune-cpu", "auto"), ("align-smol", "auto"),
                                                ("distill-qwen2vl-2b", True), ("tune-qwen2vl-2b", True)])
def test_the_cpu_recipes_pick_bf16_by_the_rule_and_the_gpu_recipes_ask_for_it(name, expected):
    cls = {"distill": DistillRecipe, "tune": TuneRecipe, "align": AlignRecipe}[name.split("-")[0]]
    assert cls.from_yaml(name).bf16 == expected


@pytest.mark.parametrize("value", ['"yes please"', '"Auto"', "1", "[true]"])
def test_a_wrong_bf16_value_is_refused_naming_the_setting(tmp_path, value):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: m\nbf16: {value}\n")
    with pytest.raises(ValueError, match=r"r\.yaml: (setting )?bf16 must be (auto, true or false|one of auto, true, "
                                         r"false), got"):
        DistillRecipe.from_yaml(path)
    with pytest.raises(ValueError, match="bf16 must be auto, true or false, got 'on'"):
        TuneRecipe(bf16="on")


def test_recipe_bf16_resolves_by_the_rule_in_the_training_arguments(cpu, caplog, tmp_path):
    from unime.training.trainer import training_settings

    recipe = DistillRecipe(output_dir=str(tmp_path))
    cpu(True, "AVX512")
    assert training_settings(recipe)["bf16"] is True and resolve_bf16("auto", "cpu") is True
    cpu(False, "AVX2")
    assert training_settings(recipe)["bf16"] is False
    assert training_settings(recipe.override(bf16=False))["bf16"] is False
    assert _warnings(caplog) == []
    with caplog.at_level(logging.WARNING):
        assert training_settings(recipe.override(bf16=True))["bf16"] is True
    [message] = _warnings(caplog)
    assert "no native kernels (capability AVX2)" in message and "bf16: auto or false" in message
    with pytest.raises(ValueError, match="bf16 must be auto, true or false"):
        resolve_bf16("yes", "cpu")


def test_the_bf16_flag_takes_auto_true_false_and_refuses_anything_else(capsys):
    from unime.cli.stages import recipe_from_args

    parser = cli.build_parser()

    def bf16(*argv: str):
        return recipe_from_args(parser.parse_args(["distill", "--config", "distill-cpu", *argv])).bf16

    assert bf16() == "auto"  # the recipe's value
    assert (bf16("--bf16"), bf16("--bf16", "true"), bf16("--bf16", "false"), bf16("--no-bf16")) == (
        True, True, False, False)
    assert bf16("--no-bf16", "--bf16", "auto") == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--bf16", "maybe"])
    assert "--bf16 takes auto, true, false, got 'maybe'" in capsys.readouterr().err
