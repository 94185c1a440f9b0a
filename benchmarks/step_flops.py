"""A stage-2 step's achieved FLOP/s against the same cores' matmul throughput, per image size, in one run.

The seeing default (``unime build-default``, built once into a temporary folder, or ``--model DIR``)
is prepared as ``unime tune`` prepares it (joint mode, the recipe's image size and input format,
LoRA r16 on the whole model, the hard-negative InfoNCE, GradCache chunks: the ``tune-cpu`` recipe),
its MobileNetV2 tower fed N x N pixels as ``build-default --image-size N`` would, and trained for
warm-up + N real steps per image size through the stage-2 trainer on Flickr8k image-to-caption pairs
of the shipped subset (``Flickr8k_i2t``: the query is a photo with MSCOCO's instruction, the positive
its caption). Per timed step it records:

- the wall time between consecutive optimiser steps (benchmarks/step_timer.py; data included), split
  into preprocessing (the collator: image decoding, resizing, the processor), forward + backward
  (trainer callback ``on_step_begin`` to ``on_pre_optimizer_step``, gradient clipping included) and
  the optimiser (to ``on_step_end``);
- its FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` (plus the CPU attention kernel,
  which it does not know) over the forward + backward of that very batch, replayed through
  ``trainer.training_step`` after the timing: FLOPs depend only on the shapes, so the replay counts
  what the timed step ran (both GradCache passes, the padding, LoRA, attention, the frozen tower's
  convolutions; the optimiser runs no matmul). An analytic figure for the LLM's linears alone
  (2 x parameters x tokens per pass) is given beside it, over the real, run and padded tokens;
- the matmul ceiling, measured right after the timed steps: ``F.linear`` throughput at the shapes of
  one decoder layer's own linears (q, k, v, o, gate, up, down) with as many rows as one forward call
  of the step has tokens (image side and text side, weighted by their FLOPs), median of repeats after
  warm-up, in float32 and, where oneDNN has native kernels, bfloat16; the ratio is against the dtype
  the step runs in. A 2048^3 matmul beside it shows how fast the cores are at that moment;
- unless ``--no-profile``: one more replay under ``torch.profiler``, its time split by kind of op.

    python benchmarks/step_flops.py --steps 3 --output step_flops.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/step_flops.py --image-sizes 224,96 --steps 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from step_timer import StepTimer
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from unime.training.mmeb_data import MMEBTrainCollator

DATASET = "Flickr8k_i2t"
DEFAULT_SIZES = "224,160,128,96"
GIGA = 1e9


# ---------------------------------------------------------------------------------------------
# The cores: CPU description and matmul throughput at the model's own linear shapes


def cpu_info() -> dict[str, Any]:
    """Model name and the bf16 / AMX flags of this CPU (lscpu), and what torch dispatches to here."""
    from unime.environment import cpu_bf16_native, cpu_capability

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), []))
    return {"model_name": name, "avx512_bf16": "avx512_bf16" in flags,
            "amx": sorted(flag for flag in flags if flag.startswith("amx")),
            "torch_threads": torch.get_num_threads(), "cpu_capability": cpu_capability(),
            "bf16_native": cpu_bf16_native(),
            "env": {key: os.environ[key] for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")
                    if key in os.environ}}


def _median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_throughput(shapes: list[tuple[int, int]], tokens: int, dtype: torch.dtype, *, warmup: int = 3,
                      repeats: int = 15) -> dict[str, Any]:
    """``F.linear`` of ``tokens`` rows through each (in, out) weight shape: median seconds per shape
    and the FLOP-weighted GFLOP/s of the set (the time the whole set takes at these speeds)."""
    generator = torch.Generator().manual_seed(0)
    per_shape, flops, seconds = [], 0.0, 0.0
    for d_in, d_out in shapes:
        x = torch.randn(tokens, d_in, generator=generator).to(dtype)
        w = torch.randn(d_out, d_in, generator=generator).to(dtype)
        t = _median_seconds(lambda x=x, w=w: F.linear(x, w), warmup, repeats)
        f = 2.0 * tokens * d_in * d_out
        per_shape.append({"shape": f"{tokens}x{d_in} @ {d_in}x{d_out}", "seconds": t, "gflops": f / t / GIGA})
        flops, seconds = flops + f, seconds + t
    return {"tokens": tokens, "dtype": str(dtype).removeprefix("torch."), "gflops": flops / seconds / GIGA,
            "shapes": per_shape}


def peak_matmul(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of one large square matmul: the cores' best case, for reference."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2.0 * n**3 / _median_seconds(lambda: a @ b, 2, repeats) / GIGA


def matmul_dtypes(step_dtype: torch.dtype) -> list[torch.dtype]:
    """float32 always; bfloat16 where oneDNN has native kernels, or where the step runs in it."""
    from unime.environment import cpu_bf16_native

    return [torch.float32] + ([torch.bfloat16] if cpu_bf16_native() or step_dtype == torch.bfloat16 else [])


def decoder_linear_shapes(model: Any) -> list[tuple[int, int]]:
    """(in, out) of every linear of the language model's first decoder layer (the base weights)."""
    llm = model[0].model.get_decoder() if hasattr(model[0].model, "get_decoder") else model[0].model
    layer = next(module for name, module in llm.named_modules() if re.search(r"layers\.0$", name))
    return [(module.in_features, module.out_features) for name, module in layer.named_modules()
            if isinstance(module, torch.nn.Linear) and "lora_" not in name]


def llm_linear_params(model: Any) -> int:
    """Weights of the language model's linears (LoRA and lm_head excluded): what each token touches."""
    llm = model[0].model.get_decoder() if hasattr(model[0].model, "get_decoder") else model[0].model
    return sum(module.weight.numel() for name, module in llm.named_modules()
               if isinstance(module, torch.nn.Linear) and "lora_" not in name and "lm_head" not in name)


# ---------------------------------------------------------------------------------------------
# The stage-2 run: data, model, trainer, timing callbacks


def write_pairs(folder: Path, rows: int, photos: Path | None = None) -> tuple[Path, Path]:
    """Flickr8k image-to-caption pairs in the MMEB-train layout (one caption per image), as
    ``unime demo`` writes them; returns (data folder, image folder)."""
    from unime.data.captions import read_caption_pairs, write_train_pairs
    from unime.data.photos import find_photos

    photos = find_photos(photos)
    images = photos / "images"
    pairs = [(str(images / image), caption) for image, caption in read_caption_pairs(photos / "train.csv", images)]
    counts = write_train_pairs(pairs, folder, "Flickr8k", captions_per_image=1, max_images=rows)
    if counts[DATASET] < rows:
        raise ValueError(f"{photos}: {counts[DATASET]} train images, the run needs {rows} (fewer --steps or a "
                         "smaller --batch-size)")
    return folder, images


@dataclass
class TimedCollator(MMEBTrainCollator):
    """The stage-2 collator, recording when each call started, how long it took and the batch it made."""

    calls: list[tuple[float, float]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        start = time.perf_counter()
        batch = super().__call__(features)
        self.calls.append((start, time.perf_counter() - start))
        self.batches.append(copy.copy(batch))
        return batch


class PhaseTimer(StepTimer):
    """StepTimer plus the start of each step's forward (after its batch is fetched) and of its optimiser step."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.begins: list[float] = []
        self.optimizer_begins: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_begins.append(time.perf_counter())


def stage2_recipe(model: str, image_size: int, args: argparse.Namespace, data: Path, images: Path,
                  output_dir: str) -> Any:
    """``tune-cpu`` with this run's model, data, image size, batch, GradCache chunk and precision."""
    from unime.training.tune import TuneRecipe

    recipe = TuneRecipe.from_yaml(args.recipe).override(
        model=model, data=str(data), image_root=str(images), output_dir=output_dir, datasets=[DATASET],
        image_size=image_size, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size or None,
        max_steps=args.warmup + args.steps, explicit_negatives=False, bf16=args.bf16, logging_steps=10_000,
        save_steps=10_000, max_rows_per_dataset=args.batch_size * (args.warmup + args.steps + 1), warmup_steps=0)
    return replace(recipe, mini_batch_size=None) if args.mini_batch_size == 0 else recipe


def set_tower_input(model: Any, image_size: int) -> None:
    """Feed the MobileNetV2 tower ``image_size`` pixels: the image processor ``unime build-default
    --image-size N`` writes (the weights do not depend on N; the processor expands the image token
    into (N / 32)^2 tokens from the pixel size, and neither FastVLM nor MobileNetV2 reads N)."""
    from unime.models.default import TOWER_STRIDE, check_image_size, imagenet_image_processor

    if model[0].backbone.family != "fast_vlm":
        raise ValueError(f"--image-sizes: only a fast_vlm model's tower input can be resized here, not "
                         f"{model[0].backbone.family}; give no --image-sizes to measure it at its own size")
    check_image_size(image_size)
    model[0].processor.image_processor = imagenet_image_processor(image_size)
    config = model[0].model.config
    config.vision_config.image_size = image_size
    config.image_seq_length = (image_size // TOWER_STRIDE) ** 2


def stage2_trainer(recipe: Any, callbacks: list[Any], tower_size: int | None = None) -> tuple[Any, TimedCollator]:
    """The trainer ``unime.training.tune.tune`` builds (same loading, joint mode, adapter and loss),
    with the timed collator; ``tune`` itself would also save the model, which is not timed here.
    ``tower_size``: see :func:`set_tower_input`."""
    from transformers.trainer_callback import ProgressCallback

    from unime.training.adapters import apply_tuning, load_for_tuning
    from unime.training.mmeb_data import load_mmeb_train
    from unime.training.trainer import seed_everything
    from unime.training.tune import WHOLE_MODEL_TARGETS, build_trainer, prepare_model

    data = load_mmeb_train(recipe.data, recipe.image_root, datasets=recipe.datasets,
                           max_rows_per_dataset=recipe.max_rows_per_dataset, explicit_negatives=False)
    model = load_for_tuning(recipe.model, method=recipe.tuning, scope=recipe.scope)
    prepare_model(model, recipe)
    if tower_size is not None:
        set_tower_input(model, tower_size)
    seed_everything(recipe.seed)
    targets = recipe.lora_target_regex or (WHOLE_MODEL_TARGETS if recipe.scope == "all" else None)
    apply_tuning(model, recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                 targets, recipe.modules_to_save)
    trainer = build_trainer(model, data, recipe, callbacks)
    trainer.remove_callback(ProgressCallback)
    plain = trainer.data_collator
    collator = TimedCollator(**{f.name: getattr(plain, f.name) for f in fields(plain) if f.init})
    trainer.data_collator = collator
    return trainer, collator


# ---------------------------------------------------------------------------------------------
# FLOPs: FlopCounterMode over a step's forward + backward, by where they ran


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels only: without these the CPU's fused attention
# (forward and backward) would count zero. Same formulas as torch's for the CUDA kernels.
CPU_ATTENTION = {packet: formula for name, formula in (
    ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward))
    if (packet := getattr(torch.ops.aten, name, None)) is not None}
_MATMULS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm")


def _matmul_dims(name: str, args: tuple) -> set[int]:
    tensors = [a for a in args if torch.is_tensor(a)]
    if name in ("aten.addmm", "aten.baddbmm"):
        tensors = tensors[1:]
    return {int(d) for t in tensors[:2] for d in t.shape[-2:]}


def flop_category(module: str, op: str, lora: bool) -> str:
    """Where a counted op belongs: ``module`` is the innermost module FlopCounterMode's tracker saw
    running, ``lora`` whether the matmul has the LoRA rank as a dimension (in the backward pass the
    tracker does not always tell a LoRA-wrapped linear's base weight from its adapter)."""
    if "convolution" in op:
        return "vision tower"
    if "scaled_dot_product" in op or "attention" in op:
        return "attention"
    # Not by module name: in the backward pass the tracker often still names the adapter's dropout
    # while the base weight's gradient runs. The adapter's matmuls are the ones with the rank as a dimension.
    if lora and any(part in module for part in ("language_model", "multi_modal_projector")):
        return "LoRA"
    for part, category in (("vision_tower", "vision tower"), ("multi_modal_projector", "projector"),
                           ("lm_head", "lm_head")):
        if part in module:
            return category
    if "language_model" in module:
        return "LLM linears" if op in _MATMULS else "LLM other"
    return "other (loss, pooling)"


class StepFlopCounter(FlopCounterMode):
    """FlopCounterMode with the CPU attention kernels, adding each op also to the innermost module
    running when it ran (the stock counts add it to every enclosing module, and in the backward pass
    the enclosing set is not always complete, so subtracting children from parents does not work)."""

    def __init__(self, lora_rank: int | None = None) -> None:
        super().__init__(display=False, custom_mapping=CPU_ATTENTION)
        self.lora_rank = lora_rank
        self.leaf_counts: dict[tuple[str, str, bool], int] = defaultdict(int)

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            count = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            parents = getattr(getattr(self, "mod_tracker", None), "parents", None) or {"Global"}
            name = str(func_packet)
            lora = name in _MATMULS and self.lora_rank in _matmul_dims(name, args)
            self.leaf_counts[(max(parents, key=lambda p: (p.count("."), p)), name, lora)] += count
        return super()._count_flops(func_packet, out, args, kwargs)

    def categories(self) -> dict[str, int]:
        result: dict[str, int] = defaultdict(int)
        for (module, op, lora), count in self.leaf_counts.items():
            result[flop_category(module, op, lora)] += count
        return dict(result)


def count_step_flops(trainer: Any, batch: dict[str, Any], lora_rank: int | None = None) -> tuple[int, dict[str, int]]:
    """FLOPs of one training step's forward + backward on ``batch`` (replayed through the trainer's
    own ``training_step``), in total and by category; the gradients are dropped afterwards."""
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    counter = StepFlopCounter(lora_rank)
    with counter:
        trainer.training_step(model, copy.copy(batch))
    trainer.model.zero_grad(set_to_none=True)
    return counter.get_total_flops(), counter.categories()


def time_category(name: str, shapes: list, lora_rank: int | None) -> str:
    """Where a profiled op's own CPU time goes (the same split as :func:`flop_category`, by op)."""
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
        dims = {int(d) for shape in shapes[-2:] if len(shape) >= 2 for d in shape[-2:]}
        return "LoRA matmuls" if lora_rank in dims else "other matmuls (linears, projector)"
    if "scaled_dot_product" in name or "attention" in name:
        return "attention"
    if "conv" in name:
        return "convolutions (tower)"
    if name in ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"):
        return "copies and casts"
    return "everything else (elementwise, norms, dropout, autograd)"


def profile_step(trainer: Any, batch: dict[str, Any], lora_rank: int | None = None) -> dict[str, float]:
    """Seconds of one replayed forward + backward by kind of op (torch.profiler, own CPU time of each
    op on the calling thread), and the wall time of the profiled replay."""
    from torch.profiler import ProfilerActivity, profile

    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        trainer.training_step(model, copy.copy(batch))
        wall = time.perf_counter() - start
    trainer.model.zero_grad(set_to_none=True)
    seconds: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for event in prof.events():
        seconds[time_category(event.name, event.input_shapes or [], lora_rank)] += event.self_cpu_time_total / 1e6
        by_op[event.name] += event.self_cpu_time_total / 1e6
    top = dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:15])
    return {"wall": wall, **dict(sorted(seconds.items(), key=lambda kv: -kv[1])), "top_ops": top}


def batch_tokens(batch: dict[str, Any], chunk: int | None) -> dict[str, dict[str, int]]:
    """Per column (query: image side, positive: text side): rows, padded length, real (non-padding)
    tokens, padded tokens of the collated batch, and the tokens the model ran: GradCache cuts the
    batch into chunks of ``chunk`` rows and drops each chunk's trailing padding columns."""
    result = {}
    for column in ("query", "positive"):
        mask = batch.get(f"{column}_attention_mask")
        if mask is None:
            continue
        rows, width = mask.shape
        run = rows * width
        if chunk:
            run = 0
            for begin in range(0, rows, chunk):
                part = mask[begin:begin + chunk]
                active = part.bool().any(dim=0).nonzero()
                run += part.shape[0] * (int(active.max()) + 1 if len(active) else width)
        result[column] = {"rows": int(rows), "length": int(width), "tokens": int(mask.sum()),
                          "padded_tokens": int(mask.numel()), "run_tokens": int(run)}
    return result


# ---------------------------------------------------------------------------------------------
# One image size


def _assign_calls(calls: list[tuple[float, float]], ends: list[float]) -> list[float]:
    """Collator seconds that fell inside each step interval (ends[i], ends[i + 1]] by start time."""
    spent = [0.0] * (len(ends) - 1)
    for start, seconds in calls:
        for i in range(len(spent)):
            if ends[i] <= start < ends[i + 1]:
                spent[i] += seconds
                break
    return spent


def measure(model_dir: str, image_size: int, args: argparse.Namespace, work: Path,
            callbacks: list[Any] | None = None, resize: bool = True) -> dict[str, Any]:
    """Train warm-up + ``args.steps`` stage-2 steps at ``image_size`` (``resize``: set the tower's
    input to it, else the model's own), measure the matmul ceiling at the step's token counts right
    after, then count each timed step's FLOPs; returns the row (all figures, per-step lists)."""
    from unime.environment import default_device, resolve_bf16

    # One batch more than the steps: the dataloader collates one batch ahead, and in a long run the
    # last timed step fetches the next batch too.
    rows = args.batch_size * (args.warmup + args.steps + 1)
    data, images = write_pairs(work / f"data-{image_size}", rows, args.photos)
    recipe = stage2_recipe(model_dir, image_size, args, data, images, str(work / f"run-{image_size}"))
    timer = PhaseTimer()
    trainer, collator = stage2_trainer(recipe, [timer, *(callbacks or [])], image_size if resize else None)
    trainer.train()
    bf16 = resolve_bf16(recipe.bf16, default_device())
    step_dtype = torch.bfloat16 if bf16 else torch.float32

    steps = timer.step_times()
    preprocess = _assign_calls(collator.calls, timer.ends)
    timed = range(args.warmup, len(steps))
    forward_backward = [timer.optimizer_begins[i] - timer.begins[i] for i in timed]
    optimizer = [timer.ends[i + 1] - timer.optimizer_begins[i] for i in timed]
    step_seconds = [steps[i] for i in timed]
    pre_seconds = [preprocess[i] for i in timed]

    model = trainer.model
    tokens = [batch_tokens(collator.batches[i], recipe.mini_batch_size) for i in timed]

    # The matmul ceiling at the rows one forward call of the step has: the tokens of a GradCache chunk
    # (its trailing padding dropped), or of the whole batch, per side.
    calls = -(-args.batch_size // (recipe.mini_batch_size or args.batch_size))
    side_tokens = {column: statistics.median(t[column]["run_tokens"] for t in tokens) / calls for column in tokens[0]}
    shapes = decoder_linear_shapes(model)
    ceilings = {}
    for dtype in matmul_dtypes(step_dtype):
        per_side = {column: matmul_throughput(shapes, int(n), dtype, repeats=args.matmul_repeats)
                    for column, n in side_tokens.items()}
        # FLOP-weighted over the sides: each side's linears at its measured speed.
        weights = {column: n for column, n in side_tokens.items()}
        seconds = sum(weights[c] / per_side[c]["gflops"] for c in per_side)
        ceilings[per_side["query"]["dtype"]] = {"gflops": sum(weights.values()) / seconds, "per_side": per_side,
                                                "peak_gflops": peak_matmul(dtype)}
    step_key = str(step_dtype).removeprefix("torch.")

    # FLOPs of each timed step, replayed after the timing (and the ceiling, measured right after it).
    flops, categories = [], defaultdict(int)
    for i in timed:
        total, by_category = count_step_flops(trainer, collator.batches[i], recipe.lora_r)
        flops.append(total)
        for key, value in by_category.items():
            categories[key] += value
    categories = {key: value / len(flops) for key, value in sorted(categories.items(), key=lambda kv: -kv[1])}
    profiled = profile_step(trainer, collator.batches[args.warmup], recipe.lora_r) if args.profile else None

    params = llm_linear_params(model)
    passes = 3 if recipe.mini_batch_size else 2  # GradCache: forward without grad, forward again, backward
    real, run_tokens, padded = (statistics.median(sum(c[key] for c in t.values()) for t in tokens)
                                for key in ("tokens", "run_tokens", "padded_tokens"))
    achieved = [f / s / GIGA for f, s in zip(flops, step_seconds, strict=True)]
    achieved_compute = [f / s / GIGA for f, s in zip(flops, forward_backward, strict=True)]
    ceiling = ceilings[step_key]["gflops"]
    image_tokens = int(model[0].model.config.image_seq_length) if hasattr(model[0].model.config,
                                                                          "image_seq_length") else None
    return {
        "image_size": image_size, "image_tokens": image_tokens, "step_dtype": step_key,
        "batch_size": args.batch_size, "mini_batch_size": recipe.mini_batch_size,
        "warmup_steps": args.warmup, "timed_steps": len(step_seconds),
        "seq_len": {column: statistics.median(t[column]["length"] for t in tokens) for column in tokens[0]},
        "tokens_per_step": {"real": real, "run": run_tokens, "padded": padded},
        "step_seconds": {"median": statistics.median(step_seconds), "min": min(step_seconds),
                         "max": max(step_seconds), "all": step_seconds},
        "phase_seconds": {"preprocess": statistics.median(pre_seconds),
                          "forward_backward": statistics.median(forward_backward),
                          "optimizer": statistics.median(optimizer),
                          "other": statistics.median(s - p - c - o for s, p, c, o in
                                                     zip(step_seconds, pre_seconds, forward_backward, optimizer,
                                                         strict=True))},
        "flops": {"counter": "torch.utils.flop_counter.FlopCounterMode (forward + backward of each timed step)",
                  "per_step": flops, "median": statistics.median(flops), "by_category": categories,
                  "analytic_llm_linears": {"params": params, "passes": passes, "real_tokens": 2 * params * real * passes,
                                           "run_tokens": 2 * params * run_tokens * passes,
                                           "padded_tokens": 2 * params * padded * passes}},
        "profile_seconds": profiled,
        "achieved_gflops": statistics.median(achieved),
        "achieved_gflops_forward_backward": statistics.median(achieved_compute),
        "matmul_gflops": {dtype: value["gflops"] for dtype, value in ceilings.items()},
        "matmul": ceilings,
        "ratio": statistics.median(achieved) / ceiling,
        "ratio_forward_backward": statistics.median(achieved_compute) / ceiling,
        "ratio_vs_fp32": statistics.median(achieved) / ceilings["float32"]["gflops"],
        "tokens": tokens,
    }


# ---------------------------------------------------------------------------------------------
# Output


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| image px | image tokens | seq len (image side, text side) | tokens / step (real, run, padded) | "
             "step s median (min-max) | preprocess / fwd+bwd / optimizer s | GFLOP / step | "
             "achieved GFLOP/s (fwd+bwd only) | matmul GFLOP/s at its linears (square 2048) | ratio (fwd+bwd only) |", "|" + "---|" * 10]
    for r in rows:
        s, p, t = r["step_seconds"], r["phase_seconds"], r["tokens_per_step"]
        mm = ", ".join(f"{v['gflops']:.0f} {k} (square: {v['peak_gflops']:.0f})" for k, v in r["matmul"].items())
        lines.append(
            f"| {r['image_size']} | {r['image_tokens']} | {r['seq_len']['query']:.0f}, {r['seq_len']['positive']:.0f} | "
            f"{t['real']:.0f}, {t['run']:.0f}, {t['padded']:.0f} | "
            f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | "
            f"{p['preprocess']:.2f} / {p['forward_backward']:.2f} / {p['optimizer']:.2f} | "
            f"{r['flops']['median'] / GIGA:.0f} | {r['achieved_gflops']:.1f} ({r['achieved_gflops_forward_backward']:.1f}) | "
            f"{mm} | {100 * r['ratio']:.0f}% ({100 * r['ratio_forward_backward']:.0f}%) |")
    return "\n".join(lines)


def breakdown(rows: list[dict[str, Any]]) -> str:
    order = ["LLM linears", "LoRA", "attention", "vision tower", "projector", "lm_head", "LLM other",
             "other (loss, pooling)"]
    found = {k for r in rows for k in r["flops"]["by_category"]}
    keys = [k for k in order if k in found] + sorted(found - set(order))
    lines = ["| image px | " + " | ".join(keys) + " | analytic LLM linears, real / run / padded tokens |",
             "|" + "---|" * (len(keys) + 2)]
    for r in rows:
        f = r["flops"]
        cells = [f"{100 * f['by_category'].get(k, 0) / f['median']:.1f}%" for k in keys]
        a = f["analytic_llm_linears"]
        lines.append(f"| {r['image_size']} | " + " | ".join(cells)
                     + f" | {a['real_tokens'] / GIGA:.0f} / {a['run_tokens'] / GIGA:.0f} / {a['padded_tokens'] / GIGA:.0f} GFLOP |")
    return "\n".join(lines)


def profile_table(rows: list[dict[str, Any]]) -> str:
    rows = [r for r in rows if r.get("profile_seconds")]
    if not rows:
        return ""
    order = ["other matmuls (linears, projector)", "LoRA matmuls", "attention", "convolutions (tower)",
             "copies and casts", "everything else (elementwise, norms, dropout, autograd)"]
    found = {k for r in rows for k in r["profile_seconds"] if k not in ("wall", "top_ops")}
    keys = [k for k in order if k in found] + sorted(found - set(order))
    lines = ["| image px | profiled fwd+bwd s | " + " | ".join(keys) + " | linears' GFLOP/s inside the step |",
             "|" + "---|" * (len(keys) + 3)]
    for r in rows:
        prof, flops = r["profile_seconds"], r["flops"]["by_category"]
        base = flops.get("LLM linears", 0) + flops.get("projector", 0)
        inside = base / prof.get("other matmuls (linears, projector)", float("nan")) / GIGA
        lines.append(f"| {r['image_size']} | {prof['wall']:.2f} | "
                     + " | ".join(f"{prof.get(k, 0):.2f} ({100 * prof.get(k, 0) / prof['wall']:.0f}%)" for k in keys)
                     + f" | {inside:.0f} |")
    return "\n".join(lines)


def model_image_size(model_dir: str) -> int | None:
    """The vision tower's input size in the model's config (None where it gives none)."""
    size = json.loads(Path(model_dir, "config.json").read_text()).get("vision_config", {}).get("image_size")
    return int(size) if isinstance(size, int) else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a unime model folder (default: the seeing default, built once into a "
                        "temporary folder)")
    parser.add_argument("--image-sizes", help=f"comma-separated tower input sizes, multiples of 32 (default: "
                        f"{DEFAULT_SIZES}, or the --model's own size)")
    parser.add_argument("--batch-size", type=int, default=16, help="image-caption pairs per step")
    parser.add_argument("--mini-batch-size", type=int, help="GradCache chunk (0: off; default: the recipe's)")
    parser.add_argument("--bf16", choices=("auto", "true", "false"), default=None,
                        help="bf16 autocast (default: the recipe's, auto: where the CPU has native kernels)")
    parser.add_argument("--recipe", default="tune-cpu", help="the stage-2 recipe the settings come from")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per image size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--matmul-repeats", type=int, default=15)
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the profiled replay of the first timed step (seconds by kind of op)")
    parser.add_argument("--photos", help="a Flickr8k folder (default: the subset shipped with unime)")
    parser.add_argument("--output", help="write every figure as JSON here")
    args = parser.parse_args(argv)
    if args.bf16 is not None:
        args.bf16 = {"true": True, "false": False}.get(args.bf16, args.bf16)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def run(args: argparse.Namespace, callbacks: list[Any] | None = None) -> dict[str, Any]:
    from unime.models.default import build_default

    result: dict[str, Any] = {"cpu": cpu_info(), "torch": torch.__version__, "args": {
        k: v for k, v in vars(args).items() if k != "output"}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="step-flops-") as folder:
        work = Path(folder)
        # One model for every size: built once (at the first size) unless given.
        sizes = [int(size) for size in (args.image_sizes or DEFAULT_SIZES).split(",")]
        model_dir = args.model
        if model_dir is None:
            model_dir = str(build_default(work / "model", stage="base", image_size=sizes[0]))
        own = model_image_size(model_dir)
        if args.model and args.image_sizes is None:
            if own is None:
                raise ValueError(f"--model {model_dir}: its config gives no vision image_size; pass --image-sizes")
            sizes = [own]
        for size in sizes:
            result["rows"].append(measure(model_dir, size, args, work, callbacks,
                                          resize=own is not None and size != own))
    result["peak_matmul_gflops"] = {str(d).removeprefix("torch."): peak_matmul(d)
                                    for d in matmul_dtypes(torch.float32)}
    return result


def main(argv: list[str] | None = None, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run, print the tables, write the JSON; ``callbacks`` (trainer callbacks) join every run."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args, callbacks)
    cpu = result["cpu"]
    print(f"\n{cpu['model_name']} ({cpu['torch_threads']} threads, ATen {cpu['cpu_capability']}, avx512_bf16 "
          f"{cpu['avx512_bf16']}, amx {','.join(cpu['amx']) or 'no'}, oneDNN bf16 native {cpu['bf16_native']}"
          f"{', env ' + ' '.join(f'{k}={v}' for k, v in cpu['env'].items()) if cpu['env'] else ''}); batch "
          f"{args.batch_size} pairs, {result['rows'][0]['timed_steps']} timed steps after {args.warmup} warm-up, "
          f"step dtype {result['rows'][0]['step_dtype']}, GradCache chunk {result['rows'][0]['mini_batch_size']}; "
          f"peak square matmul: " + ", ".join(f"{v:.0f} GFLOP/s {k}" for k, v in result["peak_matmul_gflops"].items())
          + "\n")
    print(table(result["rows"]))
    print("\nFLOPs per step by where they ran (FlopCounterMode):\n")
    print(breakdown(result["rows"]))
    profiled = profile_table(result["rows"])
    if profiled:
        print("\nWhere one replayed forward + backward spends its time (torch.profiler, own CPU time by op):\n")
        print(profiled)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
