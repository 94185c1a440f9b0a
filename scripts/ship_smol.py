"""Write unime-smol's shipped weights and their provenance from the runs that trained it.

    python scripts/ship_smol.py lora runs/distill-smol        # stage 1: the LLM's LoRA (fp16)
    python scripts/ship_smol.py projector runs/bank-smol      # stage 2: the projector (fp32)

``lora`` takes the adapter of the run's last checkpoint (``checkpoints/checkpoint-N``; the run's merged
model cannot give it back), casts it to float16 and writes ``src/unime/weights/unime-smol-lora.safetensors``;
``unime build-default --stage distilled`` then merges it into the aligned base, which is the model stage 2
trains from (so the shipped model is exactly the trained one). ``projector`` copies the stage-2
projector. Each records in ``src/unime/weights/unime-smol.json`` the file's size and SHA-256 (checked by
``unime build-default``), the recipe, the data files with their SHA-256, the command and the loss (and,
for stage 2, recall) curves. Files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from unime.io.integrity import file_entry, sha256_file, write_json_atomic  # noqa: E402
from unime.models.default import SMOL_INFO, SMOL_LORA, SMOL_PROJECTOR  # noqa: E402


def _info() -> dict:
    return json.loads(SMOL_INFO.read_text()) if SMOL_INFO.is_file() else {"files": {}}


def _last_checkpoint(run: Path) -> Path:
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise SystemExit(f"{run}: no checkpoints/checkpoint-N folder")
    return checkpoints[-1]


def ship_lora(run: Path) -> None:
    checkpoint = _last_checkpoint(run)
    adapter = load_file(str(checkpoint / "adapter_model.safetensors"))
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    staging = SMOL_LORA.with_name(f".{SMOL_LORA.name}.tmp")
    save_file({name: tensor.half().contiguous() for name, tensor in adapter.items()}, str(staging),
              metadata={"format": "pt"})
    staging.replace(SMOL_LORA)
    recipe = yaml.safe_load((run / "unime_recipe.yaml").read_text()) if (run / "unime_recipe.yaml").is_file() else None
    from unime.training.text_data import data_fingerprint, read_sentences

    # Relative data paths are the run's own: from the folder the run was started in (the run folder's parent).
    paths = [p if Path(p).is_file() else str(run.parent / p) for p in (recipe or {}).get("data", [])]
    data = [{"path": name, "sha256": sha256_file(path)} for name, path in zip(recipe["data"], paths, strict=True)]
    sentences = read_sentences(paths)
    info = _info()
    info["files"][SMOL_LORA.name] = file_entry(SMOL_LORA)
    info["lora"] = {"r": config["r"], "alpha": config["lora_alpha"], "target_modules": config["target_modules"],
                    "dtype": "float16", "parameters": sum(t.numel() for t in adapter.values())}
    info["stage1"] = {"run": str(run), "checkpoint": checkpoint.name, "steps": state["global_step"],
                      "recipe": recipe, "data": data,
                      "sentences": {"unique": len(sentences), "fingerprint": data_fingerprint(sentences)},
                      "log_history": [e for e in state["log_history"] if "loss" in e or "train_loss" in e]}
    write_json_atomic(SMOL_INFO, info)
    print(f"wrote {SMOL_LORA} ({SMOL_LORA.stat().st_size / 1e6:.1f} MB) from {checkpoint}")


def ship_projector(run: Path) -> None:
    summary = json.loads((run / "tune_bank.json").read_text())
    staging = SMOL_PROJECTOR.with_name(f".{SMOL_PROJECTOR.name}.tmp")
    shutil.copyfile(run / "projector.safetensors", staging)
    staging.replace(SMOL_PROJECTOR)
    log = [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]
    info = _info()
    info["files"][SMOL_PROJECTOR.name] = file_entry(SMOL_PROJECTOR)
    info["stage2"] = {"run": str(run), **summary, "log_history": [e for e in log if "loss" in e]}
    write_json_atomic(SMOL_INFO, info)
    print(f"wrote {SMOL_PROJECTOR} ({SMOL_PROJECTOR.stat().st_size / 1e6:.1f} MB) from {run}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("lora", "projector"))
    parser.add_argument("run", type=Path, help="the output folder of the run (unime distill / unime tune-bank)")
    args = parser.parse_args()
    (ship_lora if args.part == "lora" else ship_projector)(args.run)


if __name__ == "__main__":
    main()
