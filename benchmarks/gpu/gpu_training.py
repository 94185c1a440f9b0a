"""The training parts of the GPU benchmark: a stage-1 step with the teacher cache and stage-2 steps
with and without GradCache, each through the library's losses and adapters and the step of
benchmarks/gradcache_memory.py; an out-of-memory error is a result, not a failure.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from gpu_run import Run, benchmark, timed


def train_setting(run: Run, model: Any, loss: Any, features: list[dict], warm: list[dict], labels: Any = None,
                  warm_labels: Any = None, steps: int = 1) -> dict[str, Any]:
    """One warm-up step on the small ``warm`` batch (the same mini-batch shapes), then the fastest of
    ``steps`` timed steps and the peak memory over them; an out-of-memory error is a result."""
    gradcache = benchmark("gradcache_memory")
    result: dict[str, Any] = {}
    run.reset_peak()
    try:
        gradcache.make_step(model, loss, warm, warm_labels, run.autocast)()
        step = gradcache.make_step(model, loss, features, labels, run.autocast)
        run.sync()
        result["allocated_before_gib"] = run.allocated_gib()
        run.reset_peak()
        result["step_s"] = min(timed(run, step) for _ in range(steps))
        result["peak_gib"] = run.peak_gib()
    except torch.cuda.OutOfMemoryError:
        result = {"oom": True, "peak_gib": run.peak_gib()}
    model.zero_grad(set_to_none=True)
    run.free()
    return result


def _on_device(run: Run, features: list[dict]) -> list[dict]:
    from sentence_transformers.util import batch_to_device

    return [batch_to_device(f, run.device) for f in features]


def measure_stage1(run: Run, model: Any, recipe: Any, cfg: dict[str, Any], deadline: float) -> dict[str, Any]:
    """A stage-1 step (SimilarityKLLoss, the recipe's LoRA and GradCache chunks) on text rows, the
    teacher embeddings a random cache of NV-Embed-v2's 4096 dims in the recipe's precision."""
    from unime.losses import SimilarityKLLoss
    from unime.training.adapters import apply_tuning

    batch = run.preset.get("stage1_batch", recipe.batch_size)
    mini = run.preset.get("stage1_mini_batch", recipe.mini_batch_size)
    apply_tuning(model, recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                 recipe.lora_target_regex, recipe.modules_to_save)
    model.train()
    texts = benchmark("encode_throughput").sample_inputs(batch, 0, 8, seed=1)["text"]
    dtype = torch.float16 if recipe.cache_dtype == "float16" else torch.float32
    teacher = torch.nn.functional.normalize(torch.randn(batch, 4096), dim=-1).to(run.device, dtype)
    warm_rows = min(batch, 2 * (mini or 8))
    loss = SimilarityKLLoss(model, temperature=recipe.temperature, direction=recipe.direction,
                            exclude_diagonal=recipe.exclude_diagonal, mini_batch_size=mini)
    features = _on_device(run, [model.preprocess(texts)])
    warm = _on_device(run, [model.preprocess(texts[:warm_rows])])
    result = train_setting(run, model, loss, features, warm, teacher, teacher[:warm_rows], steps=cfg["steps"])
    tokens = int(features[0]["attention_mask"].sum()) / batch
    return {**result, "batch": batch, "mini_batch": mini, "teacher_dim": 4096, "tokens_per_item": tokens,
            "lora_r": recipe.lora_r, "scope": recipe.scope}


def stage2_plan(cfg: dict[str, Any], recipe: Any) -> list[tuple[int, int | None, str]]:
    """(global batch, mini-batch or None, role) in the order they run: the recipe's own mini-batch
    first (the basis of the projection), then the grid, largest batches last."""
    plan = [(cfg["recipe_batch"], min(recipe.mini_batch_size or 1, cfg["recipe_batch"]), "recipe")]
    for batch in cfg["batches"]:
        plan += [(batch, None, "grid")] + [(batch, mini, "grid") for mini in cfg["mini_batches"]]
    return plan


class StepModel:
    """Predicts a stage-2 step's time and peak memory from what ran before, to skip what cannot fit.

    Time: GradCache costs about 4 inference forwards a row (one without gradient, then forward and
    backward), no GradCache about 3; the per-row cost starts at the encode section's bare forward of
    one image and one text and is replaced by the last measured step. Memory: what was allocated
    before the step plus activations proportional to the rows embedded at once (the mini-batch, or
    the whole batch without GradCache), per row as the last measured step used.
    """

    def __init__(self, rates: dict[str, Any], memory_gib: float | None) -> None:
        self.per_row = sum(1 / rates[k]["bare_items_per_s"] for k in ("image", "text") if k in rates) or None
        self.memory_gib = memory_gib
        self.base_gib: float | None = None
        self.activation_gib_per_row: float | None = None
        self.failed: list[tuple[int, int]] = []  # (rows at once, global batch) that ran out of memory

    def known_oom(self, batch: int, mini: int | None) -> tuple[int, int] | None:
        """A smaller or equal setting that already ran out of memory (memory only grows from it)."""
        at_once = mini or batch
        return next(((m, b) for m, b in self.failed if m <= at_once and b <= batch), None)

    def peak_gib(self, batch: int, mini: int | None) -> float | None:
        if self.activation_gib_per_row is None or self.base_gib is None:
            return None
        return self.base_gib + self.activation_gib_per_row * (mini or batch)

    def seconds(self, batch: int, mini: int | None) -> float:
        if self.per_row is None:
            return 0.0
        full = (4.0 if mini else 3.0) * self.per_row * (batch + 2 * (mini or 16))
        peak = self.peak_gib(batch, mini)
        if peak and self.memory_gib and peak > self.memory_gib:
            # Bound to run out of memory: with GradCache after the gradient-free pass (a quarter of the
            # step), without it early in the forward pass.
            return (0.3 if mini else 0.15) * full
        return full

    def update(self, batch: int, mini: int | None, result: dict[str, Any]) -> None:
        if result.get("oom"):
            self.failed.append((mini or batch, batch))
            return
        self.per_row = result["step_s"] / batch / (4.0 if mini else 3.0)
        self.base_gib = result["allocated_before_gib"]
        self.activation_gib_per_row = max(result["peak_gib"] - self.base_gib, 0.0) / (mini or batch)


def measure_stage2(run: Run, model: Any, recipe: Any, cfg: dict[str, Any], rates: dict[str, Any],
                   deadline: float) -> dict[str, Any]:
    """Stage-2 steps (HardNegativeInfoNCELoss, LoRA on the whole MLLM) on (image query, text positive)
    rows: with GradCache at each mini-batch and without it, where it fits (gradcache_memory.py)."""
    from unime.training.adapters import apply_tuning, merge_adapter
    from unime.training.tune import WHOLE_MODEL_TARGETS, build_loss, prepare_model

    gradcache = benchmark("gradcache_memory")
    merge_adapter(model)  # stage 2 starts from the stage-1 model, its adapter folded in
    prepare_model(model, recipe)  # what unime tune sets before the adapter: joint mode, image size
    apply_tuning(model, recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                 recipe.lora_target_regex or WHOLE_MODEL_TARGETS, recipe.modules_to_save)
    model.train()
    image_size = run.preset["image_size"]
    predict = StepModel(rates, run.results["environment"].get("device_memory_gib"))
    settings: list[dict[str, Any]] = []
    features: dict[int, list[dict]] = {}
    tokens: dict[str, float] = {}
    for batch, mini, role in stage2_plan(cfg, recipe):
        row: dict[str, Any] = {"batch": batch, "mini_batch": mini, "role": role}
        failed = predict.known_oom(batch, mini)
        seconds = predict.seconds(batch, mini)
        if failed:
            row["skipped"] = f"out of memory already at batch {failed[1]} with {failed[0]} rows at once"
        elif seconds > run.clock.left(deadline):
            row["skipped"] = f"predicted {seconds:.0f} s, {max(run.clock.left(deadline), 0):.0f} s left"
        if "skipped" in row:
            print(f"stage2 {run.model_key} batch {batch}, mini-batch {mini or 'none'}: {row['skipped']}", flush=True)
            settings.append(row)
            continue
        row["predicted_peak_gib"] = predict.peak_gib(batch, mini)
        if batch not in features:
            features.clear()
            run.free()
            features[batch] = _on_device(run, gradcache.stage2_features(model, batch, image_size))
            tokens = {name: int(f["attention_mask"].sum()) / batch
                      for name, f in zip(("query", "positive"), features[batch], strict=True)}
        warm_rows = min(batch, 2 * (mini or 16))
        warm = _on_device(run, gradcache.stage2_features(model, warm_rows, image_size, seed=1))
        loss = build_loss(model, dataclasses.replace(recipe, mini_batch_size=mini))
        result = train_setting(run, model, loss, features[batch], warm, steps=1)
        predict.update(batch, mini, result)
        settings.append({**row, **result})
        print(f"stage2 {run.model_key} batch {batch}, mini-batch {mini or 'none'}: {result}", flush=True)
        run.results["stage2"][run.model_key] = {"settings": settings}
        run.save()
    features.clear()
    return {"settings": settings, "tokens_per_item": tokens, "lora_r": recipe.lora_r, "scope": recipe.scope,
            "recipe_mini_batch": recipe.mini_batch_size,
            "input_format": getattr(getattr(model[0], "input_format", None), "style", "prompted")}
