"""The final save of a training stage: the model, its recipe and its stage, written atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from unime.environment import rank_and_world_size
from unime.training.adapters import has_adapter, is_quantized, merge_adapter
from unime.training.recipes import RECIPE_FILE, TrainRecipe

logger = logging.getLogger(__name__)


def save_final(model: Any, output_dir: str | Path, stage_name: str, recipe: TrainRecipe | None = None) -> Path:
    """Save a trained model as a UniME model, record the stage, and write the recipe beside it.

    The stage joins ``model.unime_config.stages``. With ``recipe.merge`` (the default) an adapter
    is folded into the weights first (a 4-bit model is reloaded unquantised for that). Everything is
    written into a temporary folder beside ``output_dir`` and moved in, ``modules.json`` last: a
    folder that loads is a complete one, also when the run is killed during the save (whose temporary
    folder the next save removes). Checkpoints in
    ``output_dir/checkpoints`` are left alone. Only the main process writes.
    """
    output_dir = Path(output_dir)
    if recipe is not None and recipe.merge and has_adapter(model):
        if is_quantized(model):
            model = _merged_copy(model)
        else:
            merge_adapter(model)
    stages = model.unime_config.stages
    if stages[-1:] != [stage_name]:
        model.update_config(stages=[*stages, stage_name])
    if rank_and_world_size()[0] != 0:
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.parent.glob(f".{output_dir.name}.*"):
        if stale.is_dir():  # the staging folder of a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save(str(staging))
        if recipe is not None:
            (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        # A weights file of an earlier save that this one lacks (adapter vs merged) would mislead loading.
        written = {p.name for p in staging.iterdir()}
        for stale in [output_dir / "modules.json", *output_dir.glob("adapter_*"), *output_dir.glob("model*.safetensors*")]:
            if stale.is_file() and (stale.name == "modules.json" or stale.name not in written):
                stale.unlink()
        entries = sorted(staging.iterdir(), key=lambda p: p.name == "modules.json")
        for entry in entries:
            target = output_dir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved the %s model to %s", stage_name, output_dir)
    return output_dir


def _merged_copy(model: Any) -> Any:
    """A 4-bit model's adapter merged into an unquantised reload of its base weights."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from unime.modeling import load_model

    adapter_state = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model.hf_model).items()}
    peft_config = model.hf_model.peft_config["default"]
    base = model.hf_model.config._name_or_path
    fresh = load_model(base, trust_remote_code=bool(model.trust_remote_code))
    fresh.unime_config = model.unime_config
    fresh.add_adapter(peft_config)
    set_peft_model_state_dict(fresh.hf_model, adapter_state)
    merge_adapter(fresh)
    return fresh
