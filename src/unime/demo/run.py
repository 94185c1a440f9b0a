"""The whole UniME recipe in miniature, offline on a CPU: ``unime demo``.

Generates the synthetic benchmark, builds a model, evaluates it zero-shot, runs stage 1
(distillation from the MiniLM teacher), stage 2 (hard-negative instruction tuning) after stage 1
and alone, the negative-type ablations (``all`` in-batch negatives as VLM2Vec, ``easy``,
``random``), evaluates every model on the same sets, and writes the paper-style tables, the
cross-modal similarity matrix and the negative-type training curves.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unime.data.photos import RETRIEVAL_FILE, PhotoSizes, find_photos, photo_examples, prepare_photos
from unime.demo.report import REFERENCE_MODEL

logger = logging.getLogger(__name__)

# Runs in the order they are trained; each starts from the model named by its ``start``.
STAGE_RUNS = (
    # name, start, negatives
    ("stage 1+2", "stage 1", "hard"),
    ("stage 2", "base", "hard"),
    ("stage 1+2, all negatives", "stage 1", "all"),
    ("stage 1+2, random negatives", "stage 1", "random"),
    ("stage 1+2, easy negatives", "stage 1", "easy"),
)


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run (see :data:`PRESETS`)."""

    name: str
    model: str  # "tiny" (random Qwen2-VL), "llava-random" (SmolLM2 LLaVA, random CLIP) or "seeing" (the FastVLM default)
    image_size: int | None  # None: the processor's own (the seeing default's 224 px)
    synth: dict[str, Any]
    distill_steps: int
    distill_batch: int
    distill_lr: float
    tune_steps: int
    tune_batch: int
    tune_mini_batch: int | None
    tune_lr: float
    ablation_steps: int
    eval_batch: int = 32
    # Ablation runs are evaluated on these only (all runs keep their training curves).
    ablation_eval: tuple[str, ...] = ("mmeb", "sugarcrepe")
    # bf16 autocast for training and evaluation: auto where the CPU has native bf16 kernels (about 2x faster
    # than fp32 with AVX512-BF16), fp32 elsewhere (emulated bf16 is about 80x slower; unime.environment).
    bf16: bool | str = False
    # What learns in stage 2: the tiny model is small enough to tune in full; the llava-random model's vision
    # tower and projector start random, so they train in full beside the LoRA adapter.
    tune_tuning: str = "lora"
    tune_full_modules: tuple[str, ...] = ()
    # Real photos (Flickr8k; the shipped subset unless --photos names a folder, unime.data.photos).
    photos: PhotoSizes | None = None
    # The MMEB-style sets scored (None: every set generated).
    mmeb_datasets: tuple[str, ...] | None = None


PRESETS: dict[str, DemoPreset] = {
    "tiny": DemoPreset(
        name="tiny", model="tiny", image_size=32,
        synth=dict(train_per_dataset=48, eval_queries=12, eval_candidates=8, retrieval_images=24,
                   captions_per_image=2, sugarcrepe_per_split=16, nli_rows=300, sts_pairs=80, image_size=32),
        distill_steps=15, distill_batch=32, distill_lr=1e-3,
        tune_steps=15, tune_batch=32, tune_mini_batch=16, tune_lr=1e-3, ablation_steps=10,
        ablation_eval=("sugarcrepe",), tune_tuning="full",
    ),
    # 32 px images through patch-8 CLIP: 16 image tokens per image, so the 135M language model
    # dominates the cost (about 5 s per stage-1 step of 32 sentences and 6 s per stage-2 step of 16
    # pairs in bf16 on 2 cores); sizes chosen to finish within 15 minutes on 2 idle cores.
    "llava-random": DemoPreset(
        name="llava-random", model="llava-random", image_size=32,
        synth=dict(train_per_dataset=64, eval_queries=8, eval_candidates=8, retrieval_images=24,
                   captions_per_image=2, sugarcrepe_per_split=16, nli_rows=400, sts_pairs=80, image_size=32),
        distill_steps=20, distill_batch=32, distill_lr=2e-4,
        tune_steps=12, tune_batch=16, tune_mini_batch=None, tune_lr=2e-4, ablation_steps=6, bf16="auto",
        ablation_eval=("sugarcrepe",), tune_full_modules=("vision_tower", "multi_modal_projector"),
    ),
    # The seeing default (SmolLM2-135M + ImageNet MobileNetV2 + the shipped aligned projector) at
    # 224 px: 49 image tokens per image, so an image costs about what a 60-token text does, and the
    # real Flickr8k photos (unime.data.photos) join the synthetic sets.
    "seeing": DemoPreset(
        name="seeing", model="seeing", image_size=None,
        synth=dict(train_per_dataset=32, eval_queries=4, eval_candidates=4, retrieval_images=8,
                   captions_per_image=2, sugarcrepe_per_split=8, nli_rows=400, sts_pairs=60, image_size=64),
        distill_steps=16, distill_batch=32, distill_lr=2e-4,
        tune_steps=10, tune_batch=16, tune_mini_batch=None, tune_lr=2e-4, ablation_steps=5, bf16="auto",
        # The negative types are compared on the real photos (SugarCrepe's 8 synthetic items a split move
        # a score by 12.5 points: noise at this scale, and 45 s per run on an AVX2-only CPU).
        ablation_eval=("photos",),
        photos=PhotoSizes(train_images=320, dev_images=50, mmeb_queries=24, mmeb_candidates=12),
        # The sets of real images only: the ImageNet tower scores the 64 px synthetic drawings at chance
        # before and after training (MMEB overall 16-21 on them), and they were 60 % of the evaluation time.
        mmeb_datasets=("Photos-IND", "Digits-IND", "Flickr8k_i2t", "Flickr8k_t2i"),
    ),
}
DEFAULT_PRESET = "seeing"


# Models whose cross-modal similarity matrix goes into similarity.png, and its size.
SIMILARITY_MODELS = ("base", "stage 1", "stage 1+2")
SIMILARITY_PAIRS = 20


@dataclass
class ModelScores:
    """What the demo keeps of one model's evaluation."""

    metrics: dict[str, float]  # percentages, keyed as the evaluators key them
    # Per-query retrieval ranks, ``retrieval/<set>/i2t`` (one per image) and ``/t2i`` (one per caption):
    # a query is a hit at K when its rank is < K; the report's bootstrap intervals resample them.
    ranks: dict[str, Any]
    similarity: Any = None  # image-caption cosine matrix (``similarity=True`` only)


def evaluate_model(model_dir: Path, data: Path, batch_size: int, tasks: tuple[str, ...], *,
                   bf16: bool | str = False, similarity: bool = False,
                   mmeb_datasets: tuple[str, ...] | None = None) -> ModelScores:
    """Every demo metric of one model (percentages) on the synthetic sets, the per-query retrieval
    ranks behind its R@K, and, with ``similarity``, its image-caption cosine-similarity matrix. The
    model is loaded once for all of it; ``mmeb_datasets`` limits the MMEB-style sets scored."""
    import torch

    import unime
    from unime.environment import resolve_bf16

    model = unime.load(str(model_dir))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve_bf16(bf16, "cpu")):
        metrics, ranks = _evaluate(model, data, batch_size, tasks, mmeb_datasets)
        return ModelScores(metrics, ranks, _similarity(model, data) if similarity else None)


def _similarity(model: Any, data: Path) -> Any:
    from unime.evaluation.plots import first_pairs, similarity_matrix
    from unime.evaluation.retrieval import load_retrieval

    photos = data / "retrieval" / RETRIEVAL_FILE
    if photos.is_file():
        dataset = load_retrieval(photos, photos.parent, name="flickr8k")
    else:
        dataset = load_retrieval(data / "retrieval" / "synth_karpathy.json", data / "images", name="synth")
    images, captions = first_pairs(dataset, min(SIMILARITY_PAIRS, len(dataset.images)))
    return similarity_matrix(model, images, captions)


def _evaluate(model: Any, data: Path, batch_size: int, tasks: tuple[str, ...],
              mmeb_datasets: tuple[str, ...] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    from unime.evaluation import (
        evaluate_mmeb,
        evaluate_sts,
        evaluate_sugarcrepe,
        load_mmeb,
        load_retrieval,
        load_sts,
        load_sugarcrepe,
        recall_from_ranks,
        retrieval_ranks,
    )

    images = data / "images"
    metrics: dict[str, float] = {}
    ranks: dict[str, Any] = {}

    def retrieval(dataset: Any) -> None:
        """R@K of one retrieval set, and the per-query ranks they count."""
        per_query = retrieval_ranks(model, dataset, batch_size)
        prefix = f"retrieval/{dataset.name}"
        metrics.update({f"{prefix}/{key}": value for key, value in recall_from_ranks(per_query).items()})
        ranks.update({f"{prefix}/{direction}": values for direction, values in per_query.items()})

    if "mmeb" in tasks:
        groups = {name: (info["meta_task"], info["split"])
                  for name, info in json.loads((data / "mmeb_eval" / "splits.json").read_text()).items()}
        chosen = None if mmeb_datasets is None else [n for n in mmeb_datasets if (data / "mmeb_eval" / n).is_dir()]
        sets = load_mmeb(data / "mmeb_eval", images, chosen)
        metrics.update(evaluate_mmeb(model, sets, batch_size, groups=groups))
    if "retrieval" in tasks:
        retrieval(load_retrieval(data / "retrieval" / "synth_karpathy.json", images, name="synth"))
    if "sugarcrepe" in tasks:
        metrics.update(evaluate_sugarcrepe(model, load_sugarcrepe(data / "sugarcrepe", images), batch_size))
    if "sts" in tasks:
        metrics.update(evaluate_sts(model, [load_sts(data / "text" / "sts.jsonl", name="synth")], batch_size))
    photos = data / "retrieval" / RETRIEVAL_FILE
    if "photos" in tasks and photos.is_file():
        retrieval(load_retrieval(photos, photos.parent, name="flickr8k"))
    return metrics, ranks


def _build_base(preset: DemoPreset, folder: Path) -> Path:
    from unime.models.default import DEFAULT_IMAGE_SIZE, build_default
    from unime.models.tiny import make_llava_random, make_tiny

    if preset.model == "seeing":
        return build_default(folder, stage="base", image_size=preset.image_size or DEFAULT_IMAGE_SIZE)
    if preset.model == "llava-random":
        return make_llava_random(folder, image_size=preset.image_size)
    return make_tiny("qwen2_vl", folder, image_size=preset.image_size)


def _distill(preset: DemoPreset, base: Path, data: Path, out: Path) -> Path:
    from unime.training.distill import DistillRecipe, run_distill

    recipe = DistillRecipe(
        model=str(base), output_dir=str(out), teacher="minilm", data=[str(data / "text" / "nli.csv")],
        max_steps=preset.distill_steps, batch_size=preset.distill_batch, learning_rate=preset.distill_lr,
        logging_steps=1, save_steps=max(preset.distill_steps, 1), bf16=preset.bf16, seed=0,
    )
    return run_distill(recipe)  # writes training_log.jsonl beside the model, as every stage does


def _tune(preset: DemoPreset, start: Path, data: Path, out: Path, negatives: str, steps: int) -> Path:
    from unime.training.tune import TuneRecipe, tune

    recipe = TuneRecipe(
        model=str(start), output_dir=str(out), data=str(data / "mmeb_train"), image_root=str(data / "images"),
        image_size=preset.image_size, max_steps=steps, batch_size=preset.tune_batch,
        mini_batch_size=preset.tune_mini_batch, learning_rate=preset.tune_lr, warmup_steps=2,
        num_hard_negatives=4, negatives=negatives, logging_steps=1, save_steps=max(steps, 1),
        lora_r=16, lora_alpha=64, lora_dropout=0.0, bf16=preset.bf16, seed=0, tuning=preset.tune_tuning,
        # The demo evaluates every model in its saved prompts, so it trains in them too.
        input_format="prompted",
        modules_to_save=list(preset.tune_full_modules) or None,
    )
    return tune(recipe)


def run_demo(out: str | Path, preset_name: str = DEFAULT_PRESET, *, overwrite: bool = False,
             photos: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Run the demo into ``out``; returns ``{model name: metrics}`` and writes report, JSON and figures.

    ``photos``: a Flickr8k folder (see :mod:`unime.data.photos`); by default the subset that ships with unime.
    The console gets one line per step; the libraries' bars, log lines and warnings go to ``out/demo.log``."""
    from unime.demo.progress import DemoConsole
    from unime.environment import require_compatible

    require_compatible()
    if preset_name not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset_name!r}")
    preset = PRESETS[preset_name]
    photo_dir = find_photos(photos) if preset.photos else None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--output-dir {out} exists and is not empty (use --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # Data, model, its zero-shot evaluation; stage 1 and each stage-2 run, trained then evaluated; the report.
    reference = 2 if preset.model == "seeing" and photo_dir is not None else 0
    with DemoConsole(total=3 + 2 * (1 + len(STAGE_RUNS)) + reference + 1, log=out / "demo.log") as console:
        scores, report = _run_steps(console, preset, photo_dir, out)
    print(report)
    return {name: model.metrics for name, model in scores.items()}


def _run_steps(console: Any, preset: DemoPreset, photo_dir: Path | None,
               out: Path) -> tuple[dict[str, ModelScores], str]:
    """The demo's steps, each one line of ``console``; returns every model's scores and the report."""
    from unime.synth import SynthConfig, generate

    data = out / "data"
    with console.step(f"generating the synthetic benchmark into {data}") as notes:
        generate(data, SynthConfig(seed=0, **preset.synth))
        if photo_dir is not None:
            counts = prepare_photos(photo_dir, data, preset.photos)
            notes.append(f"real photos from {photo_dir}: stage-2 pairs of {counts['train_pairs']} train images, "
                         f"retrieval on {counts['retrieval_images']} dev images ({counts['retrieval_captions']} captions)")
    with console.step(f"building the {preset.model} model"):
        models = {"base": _build_base(preset, out / "base")}
    all_tasks = ("mmeb", "retrieval", "sugarcrepe", "sts", "photos")
    scores: dict[str, ModelScores] = {}

    def evaluate(name: str, tasks: tuple[str, ...], title: str) -> None:
        with console.step(title) as notes:
            scores[name] = evaluate_model(models[name], data, preset.eval_batch, tasks, bf16=preset.bf16,
                                          similarity=name in SIMILARITY_MODELS, mmeb_datasets=preset.mmeb_datasets)
            notes.append(", ".join(f"{label} {scores[name].metrics[key]:.1f}"
                                   for key, label in HEADLINE_METRICS.items() if key in scores[name].metrics))

    evaluate("base", all_tasks, "evaluating the base model zero-shot")
    with console.step(f"stage 1: distilling the MiniLM teacher into the language model (text only), "
                      f"{preset.distill_steps} steps"):
        models["stage 1"] = _distill(preset, models["base"], data, out / "stage1")
    evaluate("stage 1", all_tasks, "evaluating stage 1")
    for name, start, negatives in STAGE_RUNS:
        ablation = name.endswith("negatives")
        steps = preset.ablation_steps if ablation else preset.tune_steps
        folder = out / name.replace(" ", "").replace(",", "-").replace("+", "")
        with console.step(f"{name}: stage 2 from the {start} model, {negatives} negatives, {steps} steps"):
            models[name] = _tune(preset, models[start], data, folder, negatives, steps)
        evaluate(name, preset.ablation_eval if ablation else all_tasks, f"evaluating {name}")
    if preset.model == "seeing" and photo_dir is not None:
        with console.step("building unime-smol, the shipped default (the same recipe at full scale)"):
            from unime.models.default import build_default

            models[REFERENCE_MODEL] = build_default(out / "unime-smol", stage="trained",
                                                    image_size=preset.image_size or 224)
        evaluate(REFERENCE_MODEL, ("photos",), "evaluating unime-smol on the photos (a reference row)")
    with console.step("writing the report and figures"):
        next_tokens = _next_tokens(models, data) if preset.model == "seeing" and photo_dir is not None else None
        report = _write_outputs(out, preset, scores, models, next_tokens)
    return scores, report


# The paper's next-token analysis: these models, on this many dev photos.
NEXT_TOKEN_MODELS = ("base", "stage 1+2")
NEXT_TOKEN_IMAGES = 3


def _next_tokens(models: dict[str, Path], data: Path) -> tuple[list[str], list[tuple[str, Any]]]:
    from unime.evaluation.next_token import next_token_topk

    images = photo_examples(data, NEXT_TOKEN_IMAGES)
    return images, [(name, next_token_topk(models[name], images)) for name in NEXT_TOKEN_MODELS]


# What the demo prints after each evaluation (the full set goes to results.json and report.md).
HEADLINE_METRICS = {
    "mmeb/overall/precision@1": "MMEB overall",
    "retrieval/synth/i2t_R@1": "I2T R@1",
    "sugarcrepe/replace/accuracy": "Replace",
    "sugarcrepe/swap/accuracy": "Swap",
    "sugarcrepe/add/accuracy": "Add",
    "sts/synth/spearman": "STS",
    "retrieval/flickr8k/i2t_R@1": "Flickr8k I2T R@1",
    "retrieval/flickr8k/t2i_R@1": "T2I R@1",
}


def quiet_libraries() -> None:
    """Keep the demo's output to its own progress: no per-load reports or library warnings."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    for name in ("sentence_transformers", "bitsandbytes", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _write_outputs(out: Path, preset: DemoPreset, scores: dict[str, ModelScores], models: dict[str, Path],
                   next_tokens: Any = None) -> str:
    """results.json, query_ranks.json (per model, the per-query retrieval ranks behind R@K), the figures
    and report.md; returns the report."""
    from unime.demo.report import demo_figures, demo_markdown

    results = {name: model.metrics for name, model in scores.items()}
    ranks = {name: model.ranks for name, model in scores.items() if model.ranks}
    (out / "results.json").write_text(json.dumps({"preset": asdict(preset), "results": results}, indent=2) + "\n")
    (out / "query_ranks.json").write_text(json.dumps(
        {name: {key: values.tolist() for key, values in sets.items()} for name, sets in ranks.items()}) + "\n")
    matrices = [(name, model.similarity) for name, model in scores.items() if model.similarity is not None]
    figures = demo_figures(out, models, matrices, next_tokens)
    from unime.training.stage import TRAINING_LOG

    logs = {name: folder / TRAINING_LOG for name, folder in models.items()}
    report = demo_markdown(preset.name, results, figures, logs, preset.synth, ranks=ranks)
    (out / "report.md").write_text(report, encoding="utf-8")
    return report
