"""Bad model names, in every command that takes one (issue 14, part 5).

``unime encode --model does/not/exist`` used to answer with huggingface_hub's "Repo id must be in the
form 'repo_name' or 'namespace/repo_name'", and a folder without weights with a traceback from
transformers. Every command that takes ``--model`` (or ``--teacher``) now names what is wrong (a
missing path, a file, a folder without model files and which, a malformed hub id, a hub id that
cannot be fetched, offline or not) with exit code 2 and no traceback, before it reads any data:
the data arguments below name files that do not exist. The commands run in-process
(``unime.cli.main``); nothing here touches the network (the online cases patch the download).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from unime import cli
from unime.model_names import ModelNotFoundError, check_model_name

# Each command that takes a model, with MODEL where the name goes; the other files need not exist.
COMMANDS: dict[str, list[str]] = {
    "encode": ["encode", "--model", "MODEL", "--input", "rows.jsonl", "--output", "out.npy"],
    "caption": ["caption", "photo.jpg", "--model", "MODEL"],
    "eval mmeb": ["eval", "mmeb", "--model", "MODEL", "--data-dir", "mmeb", "--image-dir", "img", "--output", "o.json"],
    "eval mmeb-v2": ["eval", "mmeb-v2", "--model", "MODEL", "--data-dir", "d", "--config", "image.yaml",
                     "--output", "o.json"],
    "eval retrieval": ["eval", "retrieval", "--model", "MODEL", "--data", "karpathy.json"],
    "eval sugarcrepe": ["eval", "sugarcrepe", "--model", "MODEL", "--data-dir", "sc", "--image-dir", "img"],
    "eval sts": ["eval", "sts", "--model", "MODEL", "--data", "sick.jsonl"],
    "plot similarity": ["plot", "similarity", "--model", "MODEL", "--retrieval-data", "k.json", "--output", "s.png"],
    "plot similarity (second model)": ["plot", "similarity", "--model", "GOOD", "--model", "MODEL",
                                       "--retrieval-data", "k.json", "--output", "s.png"],
    "serve": ["serve", "--model", "MODEL"],
    "index": ["index", "--model", "MODEL", "--images", "img", "--output", "idx"],
    "search": ["search", "idx", "--model", "MODEL", "--text", "a dog"],
    "export vllm": ["export", "vllm", "exported", "--model", "MODEL"],
    "judge": ["judge", "--model", "MODEL", "--data", "rows.json", "--output", "o.json"],
    "mine": ["mine", "--model", "MODEL", "--judge", "GOOD", "--data", "rows.json", "--output", "o.json"],
    "distill": ["distill", "--model", "MODEL", "--data", "nli.csv", "--output-dir", "out"],
    "distill (recipe)": ["distill", "--config", "RECIPE", "--data", "nli.csv", "--output-dir", "out"],
    "tune": ["tune", "--model", "MODEL", "--data", "mmeb-train", "--image-root", "img", "--output-dir", "out"],
    "tune (recipe)": ["tune", "--config", "RECIPE", "--data", "mmeb-train", "--image-root", "img", "--output-dir", "o"],
    "align": ["align", "--model", "MODEL", "--data", "captions.csv", "--output-dir", "out"],
    "align (recipe)": ["align", "--config", "RECIPE", "--data", "captions.csv", "--output-dir", "out"],
    "tune-bank": ["tune-bank", "--model", "MODEL", "--data", "captions.csv", "--output-dir", "out"],
    "tune-bank (recipe)": ["tune-bank", "--config", "RECIPE", "--data", "captions.csv", "--output-dir", "out"],
    "teacher-embed": ["teacher-embed", "--teacher", "MODEL", "--data", "nli.csv", "--output-dir", "cache"],
    "distill --teacher": ["distill", "--model", "GOOD", "--teacher", "MODEL", "--data", "nli.csv", "--output-dir", "o"],
}
TEACHER_COMMANDS = ("teacher-embed", "distill --teacher")


def _touch(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _model_folder(path: Path) -> Path:
    """A folder with what a model folder holds (the checks read names and the model type, no weights)."""
    for name in ("model.safetensors", "tokenizer.json"):
        _touch(path / name)
    _touch(path / "config.json", json.dumps({"model_type": "qwen2_vl"}))
    return path


def _bad_name(kind: str, tmp: Path) -> tuple[str, str]:
    """A bad model name of ``kind`` (created under ``tmp``) and a phrase its error must contain."""
    if kind == "missing relative path":
        return "does/not/exist", "does/not/exist: model path not found"
    if kind == "missing ./ path":
        return "./missing-model", "./missing-model: model path not found"
    if kind == "missing absolute path":
        return str(tmp / "absent" / "model"), "model path not found"
    if kind == "empty folder":
        (tmp / "empty").mkdir()
        return str(tmp / "empty"), "not a model folder (no config.json, the folder is empty)"
    if kind == "folder of other files":
        _touch(tmp / "notes" / "readme.txt")
        return str(tmp / "notes"), "not a model folder (no config.json; it holds readme.txt)"
    if kind == "a file":
        _touch(tmp / "weights.safetensors")
        return str(tmp / "weights.safetensors"), "is a file, not a model folder"
    if kind == "folder without weights":
        folder = _model_folder(tmp / "noweights")
        (folder / "model.safetensors").unlink()
        return str(folder), "a model folder without weights"
    if kind == "folder without processor":
        folder = _model_folder(tmp / "noprocessor")
        (folder / "tokenizer.json").unlink()
        return str(folder), "without processor or tokenizer files"
    if kind == "adapter with a missing base":
        _touch(tmp / "adapter" / "adapter_config.json", json.dumps({"base_model_name_or_path": str(tmp / "gone")}))
        _touch(tmp / "adapter" / "adapter_model.safetensors")
        return str(tmp / "adapter"), f"its base model {tmp / 'gone'}: model path not found"
    if kind == "hub id offline":
        return "some-org/some-model", "HF_HUB_OFFLINE=1 is set, so hub ids cannot be fetched"
    if kind == "malformed hub id (three parts)":
        return "a/b/c", "a/b/c: model path not found"
    if kind == "malformed hub id (characters)":
        return "org/na me", "not a hub id either (hub ids are 'name' or 'namespace/name'"
    raise AssertionError(kind)


KINDS = ("missing relative path", "missing ./ path", "missing absolute path", "empty folder",
         "folder of other files", "a file", "folder without weights", "folder without processor",
         "adapter with a missing base", "hub id offline", "malformed hub id (three parts)",
         "malformed hub id (characters)")
# What a sentence-transformers teacher folder must hold differs (modules.json or config.json).
TEACHER_EXPECTED = {"empty folder": "not a sentence-transformers model folder",
                    "folder of other files": "not a sentence-transformers model folder",
                    "adapter with a missing base": "not a sentence-transformers model folder"}
NOT_FOR_TEACHERS = ("folder without weights", "folder without processor")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _argv(command: str, name: str, tmp: Path) -> list[str]:
    good = str(_model_folder(tmp / "good-model"))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(f"model: {json.dumps(name)}\n")
    return [good if w == "GOOD" else name if w == "MODEL" else str(recipe) if w == "RECIPE" else w
            for w in COMMANDS[command]]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


# A teacher is a sentence-transformers folder, which needs only modules.json or config.json: the
# kinds of NOT_FOR_TEACHERS are no bad name for it, so those pairs are not generated (not skipped).
COMMAND_KINDS = [(command, kind) for command in COMMANDS for kind in KINDS
                 if not (command in TEACHER_COMMANDS and kind in NOT_FOR_TEACHERS)]


@pytest.mark.parametrize(("command", "kind"), COMMAND_KINDS)
def test_every_command_names_a_bad_model_name(command: str, kind: str, tmp_path: Path, offline: None,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name, expected = _bad_name(kind, tmp_path)
    if command in TEACHER_COMMANDS:
        expected = TEACHER_EXPECTED.get(kind, expected)
    code, err = _run(_argv(command, name, tmp_path), capsys)
    assert code == 2, err
    assert expected in err, err
    option = "--teacher" if command in TEACHER_COMMANDS else "--model"
    assert f"error: {option} " in err, err
    assert "Traceback" not in err and "Repo id must be in the form" not in err, err


def _online(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[str]:
    """No HF_HUB_OFFLINE, and a hub download that fails with ``error`` (no network is used)."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    tried: list[str] = []

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        tried.append(f"{repo_id}/{filename}")
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return tried


def _hub_response() -> Any:
    """A 404 from the hub, of the HTTP library huggingface_hub's errors are built on."""
    import importlib

    from huggingface_hub import errors

    http = importlib.import_module(errors.Response.__module__.split(".")[0])
    url = "https://huggingface.co/some-org/some-model/resolve/main/config.json"
    return http.Response(404, request=http.Request("HEAD", url))


def _hub_errors() -> dict[str, tuple[Exception, str]]:
    from huggingface_hub import errors

    response = _hub_response()
    return {
        "no network": (errors.LocalEntryNotFoundError("cannot reach the hub"),
                       "hub ids cannot be fetched without network"),
        "no such repository": (errors.RepositoryNotFoundError("404", response=response),
                               "no such hub repository"),
        "gated": (errors.GatedRepoError("403", response=response), "the hub repository is gated"),
        "no config.json": (errors.RemoteEntryNotFoundError("404", response=response),
                           "has no config.json (not a model repository)"),
    }


@pytest.mark.parametrize("case", ["no network", "no such repository", "gated", "no config.json"])
@pytest.mark.parametrize("command", ["encode", "eval sts", "serve", "tune", "align", "caption", "plot similarity"])
def test_a_hub_id_that_cannot_be_fetched_online_is_named(command: str, case: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    error, expected = _hub_errors()[case]
    tried = _online(monkeypatch, error)
    code, err = _run(_argv(command, "some-org/some-model", tmp_path), capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert tried == ["some-org/some-model/config.json"]


def test_a_teacher_hub_repository_without_config_json_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import errors

    _online(monkeypatch, errors.RemoteEntryNotFoundError("404", response=_hub_response()))
    check_model_name("some-org/static-embedder", option="--teacher", kind="sentence-transformers model")


def test_the_commands_above_are_every_command_that_takes_a_model() -> None:
    """A new command with --model or --teacher joins COMMANDS (and so this check)."""

    def walk(parser: argparse.ArgumentParser, prefix: str) -> dict[str, set[str]]:
        found = {prefix: {o for a in parser._actions for o in a.option_strings}}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.update(walk(sub, f"{prefix} {name}".strip()))
        return found

    taking = {name for name, flags in walk(cli.build_parser(), "").items() if flags & {"--model", "--teacher"}}
    covered = {command.split(" (")[0].split(" --")[0] for command in COMMANDS}
    assert taking == covered


def test_teacher_presets_are_not_checked_as_paths(tmp_path: Path, offline: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--teacher minilm`` is a preset (the wheel), not a folder named minilm: the command goes on
    to read its data, whose absence is what it reports."""
    code, err = _run(["teacher-embed", "--teacher", "minilm", "--data", str(tmp_path / "absent.csv"),
                      "--output-dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and "absent.csv" in err and "--teacher" not in err, err


# --- the library --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unime_load_names_a_bad_model_name(kind: str, tmp_path: Path, offline: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import unime

    monkeypatch.chdir(tmp_path)
    name, expected = _bad_name(kind, tmp_path)
    with pytest.raises(ModelNotFoundError) as caught:
        unime.load(name)
    assert expected in str(caught.value) and str(caught.value).startswith(f"model {name}")
    assert isinstance(caught.value, FileNotFoundError)  # what callers caught before


def test_good_names_pass(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch,
                         tiny_model_factory: Any) -> None:
    """A model folder, a LoRA adapter folder on an existing base, a unime-style folder, and a hub
    id that is in the local hub cache (offline) all pass."""
    from huggingface_hub import constants

    check_model_name(str(tiny_model_factory("qwen2_vl")))
    base = _model_folder(tmp_path / "base")
    _touch(tmp_path / "adapter" / "adapter_config.json", json.dumps({"base_model_name_or_path": str(base)}))
    _touch(tmp_path / "adapter" / "adapter_model.safetensors")
    check_model_name(str(tmp_path / "adapter"))
    sharded = tmp_path / "sharded"
    for name in ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                 "preprocessor_config.json"):
        _touch(sharded / name)
    check_model_name(str(sharded))
    cache = tmp_path / "hub"
    snapshot = cache / "models--some-org--cached" / "snapshots" / ("0" * 40)
    _touch(snapshot / "config.json")
    _touch(cache / "models--some-org--cached" / "refs" / "main", "0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    check_model_name("some-org/cached")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE=1 is set"):
        check_model_name("some-org/not-cached")


def test_the_library_teacher_loader_names_a_bad_teacher(tmp_path: Path, offline: None) -> None:
    from unime.training.teacher_cache import load_teacher, resolve_teacher

    with pytest.raises(ModelNotFoundError, match="teacher does/not/exist: model path not found"):
        load_teacher(resolve_teacher("does/not/exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a sentence-transformers model folder"):
        load_teacher(resolve_teacher(str(tmp_path / "empty")))


def test_a_distill_teacher_is_checked_only_while_its_cache_is_to_be_built(tmp_path: Path, offline: None) -> None:
    """A teacher cache that exists already is matched against the teacher by the cache itself, so a
    teacher folder that has gone since does not stop a resumed run."""
    from unime.training.recipes import DistillRecipe

    recipe = DistillRecipe(model=str(_model_folder(tmp_path / "student")), data=["nli.csv"],
                           output_dir=str(tmp_path / "out"), teacher=str(tmp_path / "gone-teacher"))
    with pytest.raises(ModelNotFoundError, match="--teacher .*gone-teacher: model path not found"):
        recipe.check_model()
    (tmp_path / "out" / "teacher-cache").mkdir(parents=True)
    recipe.check_model()
