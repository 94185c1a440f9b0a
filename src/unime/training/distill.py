"""Stage 1 of UniME: textual discriminative knowledge distillation (``unime distill``).

The language model of the MLLM learns, from text alone, the relations a strong text embedder (the
teacher) sees between the sentences of a batch: :class:`unime.losses.SimilarityKLLoss` on the
student's last-token embeddings of the UniME text prompt and the teacher's cached embeddings. The
vision tower and projector stay frozen and untouched, so the saved model is multimodal again.

Defaults (docs/method.md, "Stage 1 measured on a CPU"): KL(P_t || P_s), tau 0.05, self-similarity
excluded from both distributions, LoRA r16 / alpha 32 on all decoder linears, lr 2e-4, 5 warm-up
steps, batch 32. With the diagonal included (the paper's printed form) the teacher's row-softmax is
nearly the identity and the loss collapses within 20 steps; masked, it reached 76.3 STS-B vs 62-65.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from unime.training.adapters import apply_tuning, load_for_tuning
from unime.training.recipes import CACHE_SUBDIR, DistillRecipe
from unime.training.stage import StageRun, run_stage
from unime.training.teacher_cache import TeacherCache, build_cache, resolve_teacher
from unime.training.text_data import read_sentences
from unime.training.trainer import UniMETrainer, seed_everything, training_arguments, with_matryoshka

__all__ = ["CACHE_SUBDIR", "DistillRecipe", "TeacherLookupCollator", "build_trainer", "prepare_cache", "run_distill"]

logger = logging.getLogger(__name__)

STAGE = "distill"


@dataclass
class TeacherLookupCollator(SentenceTransformerDataCollator):
    """Turns each row's ``label`` (its sentence index) into the teacher embedding from the cache.

    The dataset holds only sentences and indices; the embeddings stay memory-mapped on disk until
    a batch needs them.
    """

    teacher: TeacherCache | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [row["label"] for row in features]
        batch = super().__call__([{k: v for k, v in row.items() if k != "label"} for row in features])
        batch["label"] = torch.from_numpy(self.teacher.take(rows))
        return batch


def prepare_cache(recipe: DistillRecipe, sentences: list[str], args: Any = None) -> TeacherCache:
    """Open the recipe's teacher cache, building or finishing it first (on the main process only)."""
    spec = resolve_teacher(recipe.teacher, recipe.teacher_prompt)
    folder = recipe.cache_dir()

    def build() -> TeacherCache:
        return build_cache(spec, sentences, folder, batch_size=recipe.teacher_batch_size, dtype=recipe.cache_dtype,
                           trust_remote_code=recipe.trust_teacher_code)

    if args is None:
        return build()
    with args.main_process_first(desc="teacher cache"):
        return build() if args.process_index == 0 else TeacherCache.open(folder, sentences, spec)


def build_trainer(recipe: DistillRecipe, callbacks: list[Any] | None = None) -> UniMETrainer:
    """Everything of a stage-1 run up to ``train()``: data, cache, student, loss, trainer."""
    from datasets import Dataset

    from unime.losses import SimilarityKLLoss

    sentences = read_sentences(recipe.data)
    if len(sentences) < recipe.batch_size:
        raise ValueError(f"data: {len(sentences)} unique sentences, fewer than batch_size {recipe.batch_size}")
    args = training_arguments(recipe)
    cache = prepare_cache(recipe, sentences, args)
    seed_everything(recipe.seed)
    model = load_for_tuning(recipe.model, method=recipe.tuning, scope=recipe.scope,
                            trust_remote_code=recipe.trust_remote_code)
    apply_tuning(model, recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout,
                 recipe.lora_target_regex, recipe.modules_to_save)
    dataset = Dataset.from_dict({"text": sentences, "label": list(range(len(sentences)))})
    loss = with_matryoshka(
        SimilarityKLLoss(model, temperature=recipe.temperature, direction=recipe.direction,
                         exclude_diagonal=recipe.exclude_diagonal, mini_batch_size=recipe.mini_batch_size),
        model, recipe.matryoshka_dims)
    collator = TeacherLookupCollator(preprocess_fn=model.preprocess, teacher=cache)
    logger.info("stage 1: %d sentences, teacher %s (%d-d), %s", len(sentences), recipe.teacher, cache.dim, recipe.cache_dir())
    return UniMETrainer(model=model, args=args, train_dataset=dataset, loss=loss, data_collator=collator,
                        callbacks=callbacks)


def run_distill(recipe: DistillRecipe, callbacks: list[Any] | None = None) -> Path:
    """Run stage 1 and save the model to ``recipe.output_dir``; return that folder.

    A folder holding checkpoints of an earlier run is refused unless ``recipe.resume``, which then
    continues from the last complete checkpoint (and starts afresh when there is none); the sequence
    is :func:`unime.training.stage.run_stage`'s.
    """

    def setup(recipe: DistillRecipe, callbacks: list[Any] | None) -> StageRun:
        trainer = build_trainer(recipe, callbacks)
        return StageRun(trainer, trainer.model)

    return run_stage(STAGE, recipe, setup, callbacks)
