"""Checking a model name before anything loads: a local folder, or a hub id that can be fetched.

``unime encode --model does/not/exist`` used to answer with huggingface_hub's "Repo id must be in
the form 'repo_name' or 'namespace/repo_name'", and a folder without weights with a traceback from
transformers. :func:`check_model_name` tells the cases apart and names what is wrong: a path that
does not exist, a file or a folder that is not a model folder (and which files it lacks), a
malformed hub id, or a hub id that cannot be fetched (offline: that hub ids need the network or
the local hub cache). The errors are :class:`ModelNotFoundError`, a ``FileNotFoundError``, which
the command line prints without a traceback (exit code 2).

Light on purpose (no torch, no transformers): the command line checks its ``--model`` before it
reads any data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["ModelNotFoundError", "check_model_files", "check_model_name", "check_teacher_name", "hub_offline"]

# What a loadable folder holds. Weights: transformers' single or sharded files; a LoRA adapter
# folder holds adapter weights and names its base model instead.
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.gguf")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

MLLM = "model"
SENTENCE_TRANSFORMER = "sentence-transformers model"


class ModelNotFoundError(FileNotFoundError):
    """A model name that names no loadable model; the message says why."""


def hub_offline() -> bool:
    """Whether huggingface_hub will not use the network: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set,
    now or when huggingface_hub was imported (it reads the variable once)."""
    if any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in _OFFLINE_VARIABLES):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(name: str) -> bool:
    """A name only a path can be: ``./x``, ``../x``, ``/x``, ``~/x``, ``C:\\x``, or more than one ``/``."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or name.count("/") > 1
        or name.endswith("/")
    )


def _hub_id_problem(name: str) -> str | None:
    """Why ``name`` is not a valid hub repository id, or None when it is one."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover
        return None
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        return str(error).split(". Use `repo_type`", 1)[0]
    return None


def _offline_note() -> str:
    variable = next((v for v in _OFFLINE_VARIABLES if os.environ.get(v)), "HF_HUB_OFFLINE")
    return f"{variable}={os.environ.get(variable, '1')} is set, so hub ids cannot be fetched"


def check_model_name(name: str, *, option: str = "--model", kind: str = MLLM, files: bool = True) -> None:
    """Raise :class:`ModelNotFoundError` unless ``name`` names a loadable local folder or a hub id
    that is in the local hub cache or can be fetched.

    Args:
        name: what the user gave.
        option: how the user gave it (``--model``, ``--teacher``), named in the message.
        kind: ``"model"`` (an MLLM, a unime model or a LoRA adapter folder) or
            ``"sentence-transformers model"`` (a teacher), which decides what a folder must hold.
        files: also require weights and processor files beside a folder's config.json (False:
            only the config; the loader checks the files after the config's model type, see
            :func:`check_model_files`).
    """
    where = f"{option} {name}"
    if not name or not str(name).strip():
        raise ModelNotFoundError(f"{option}: empty model name")
    name = str(name)
    path = Path(name).expanduser()
    if path.is_dir():
        _check_folder(path, where, kind, files)
        return
    if path.exists():
        raise ModelNotFoundError(f"{where}: is a file, not a model folder (give the folder that holds config.json)")
    if _looks_like_path(name):
        raise ModelNotFoundError(f"{where}: model path not found (no such file or folder)")
    problem = _hub_id_problem(name)
    if problem is not None:
        raise ModelNotFoundError(
            f"{where}: no such local folder, and not a hub id either (hub ids are 'name' or 'namespace/name': {problem})"
        )
    _check_hub_id(name, where, kind)


def _check_folder(path: Path, where: str, kind: str, files_too: bool = True) -> None:
    files = {entry.name for entry in path.iterdir()}
    if kind == SENTENCE_TRANSFORMER:
        if not files & {"modules.json", "config.json"}:
            raise ModelNotFoundError(f"{where}: not a sentence-transformers model folder (no modules.json or config.json)")
        return
    adapter = path / "adapter_config.json"
    if adapter.is_file() and "config.json" not in files:
        if not files & set(_ADAPTER_WEIGHTS):
            raise ModelNotFoundError(f"{where}: a LoRA adapter folder without its weights (no {' or '.join(_ADAPTER_WEIGHTS)})")
        try:
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(f"{where}: adapter_config.json cannot be read ({error})") from None
        if not base:
            raise ModelNotFoundError(f"{adapter}: no base_model_name_or_path, cannot find the base model")
        check_model_name(str(base), option=f"{where}: its base model", files=files_too)
        return
    if "config.json" not in files:
        raise ModelNotFoundError(
            f"{where}: not a model folder (no config.json"
            + (", the folder is empty)" if not files else f"; it holds {_listing(files)})")
        )
    if files_too:
        _check_files(path, where)


def check_model_files(name: str, *, option: str = "--model") -> None:
    """For a local model folder with a config.json: refuse it unless weights and processor (or
    tokenizer) files are beside it. Hub ids and LoRA adapter folders pass."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        _check_files(path, f"{option} {name}")


def _check_files(path: Path, where: str) -> None:
    files = {entry.name for entry in path.iterdir()}
    adapter = path / "adapter_config.json"
    has_weights = any(next(path.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)
    if not has_weights and not files & set(_ADAPTER_WEIGHTS):
        raise ModelNotFoundError(
            f"{where}: a model folder without weights (no model.safetensors, pytorch_model.bin or their sharded "
            "index)"
        )
    if not files & set(_PROCESSOR_FILES) and not adapter.is_file():
        raise ModelNotFoundError(
            f"{where}: a model folder without processor or tokenizer files (none of {', '.join(_PROCESSOR_FILES)})"
        )


def _listing(files: set[str], limit: int = 5) -> str:
    names = sorted(files)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_hub_id(name: str, where: str, kind: str) -> None:
    """A well-formed hub id: in the local hub cache, or fetchable (its config.json)."""
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    probe = "modules.json" if kind == SENTENCE_TRANSFORMER else "config.json"
    for filename in dict.fromkeys((probe, "config.json")):
        if isinstance(try_to_load_from_cache(name, filename), str):
            return
    if hub_offline():
        raise ModelNotFoundError(
            f"{where}: no such local folder, and as a hub id it is not in the local hub cache; {_offline_note()} "
            "(give a local model folder, or fetch it once with network)"
        )
    try:
        hf_hub_download(name, "config.json")
    except hub_errors.LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{where}: no such local folder, and the hub id could not be fetched (no network?) and is not in the "
            "local hub cache; hub ids cannot be fetched without network (give a local model folder; HF_HUB_OFFLINE=1 "
            "skips the attempts)"
        ) from None
    except hub_errors.GatedRepoError:
        raise ModelNotFoundError(f"{where}: the hub repository is gated; accept its terms and log in first") from None
    except hub_errors.RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{where}: no such local folder, and no such hub repository (or it is private: log in first)"
        ) from None
    except (hub_errors.EntryNotFoundError, getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError)):
        if kind == SENTENCE_TRANSFORMER:
            return
        raise ModelNotFoundError(f"{where}: the hub repository has no config.json (not a model repository)") from None
    except (hub_errors.HfHubHTTPError, OSError) as error:
        raise ModelNotFoundError(f"{where}: no such local folder, and the hub id could not be fetched: {error}") from None


def check_teacher_name(name: str, option: str = "--teacher") -> None:
    """:func:`check_model_name` for a stage-1 teacher given as a folder or hub id; the presets
    (``minilm``, ``nv-embed-v2``) are left to :func:`unime.teachers.resolve_teacher`."""
    from unime.teachers import resolve_teacher

    if resolve_teacher(name).model in (name, str(Path(name).resolve())):
        check_model_name(name, option=option, kind=SENTENCE_TRANSFORMER)
