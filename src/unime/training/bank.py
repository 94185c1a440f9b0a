"""Stage 2 with the text side frozen (``unime tune-bank``): the image side learns against a caption bank.

UniME's stage 2 tunes both sides on in-batch pairs, each row embedding its query and its target
anew every step. When the text side stays frozen (the stage-1 model already embeds text well, and
only the images have to meet it), each caption's embedding never changes: it is computed once, and
every step can mine its negatives from the whole bank of training captions instead of the batch,
for the cost of one matrix product. Per step only the images are embedded, with the model's own
image prompt and pooling, through the frozen LLM, and only the projector learns. Since the LLM is
untouched, the trained model embeds text exactly as the model it started from, bit for bit.

The loss is UniME's hard-negative InfoNCE (:func:`unime.losses.hard_negative.hard_negative_infonce_rows`)
in both directions:

- image to text: for each image of the batch, one of its captions (drawn per step) is the positive,
  the candidates are all captions of the bank; the image's other captions are never negatives
  (they describe it), captions scoring above the positive + margin are dropped as false negatives,
  and the k hardest survivors are the negatives;
- text to image (weight ``text_to_image_weight``): that caption against the batch's images, mined
  alike (an image the caption also describes is never its negative).

The run: read the caption data (fails before the model loads), load the model, embed the bank
(cached in ``OUTPUT_DIR/text-bank``, keyed by the model's weights and the captions, so a resumed
run reuses it), train on transformers' ``Trainer`` (checkpoints of the projector, resume), score the
held-out ``eval_data`` every ``eval_steps`` steps, save the whole model with stage ``tune-bank``
recorded, and beside it ``projector.safetensors`` with ``tune_bank.json`` (data files and their
SHA-256, steps, loss and recall curves, wall time) and ``training_log.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unime.io.integrity import atomic_path, write_json_atomic
from unime.training.align import AlignTrainer, write_projector_files
from unime.training.recipes import BankTuneRecipe

__all__ = ["BankTuneRecipe", "CaptionBank", "bank_losses", "build_bank_trainer", "run_tune_bank"]

logger = logging.getLogger(__name__)

STAGE = "tune-bank"
SUMMARY_FILE = "tune_bank.json"
BANK_DIR = "text-bank"
# Rows of the similarity block embedded per log line while the bank is built.
_BANK_LOG_EVERY = 2048


@dataclass
class CaptionBank:
    """Image-caption rows grouped by image, captions deduplicated.

    ``texts``: the distinct captions (the bank's rows); ``image_texts[i]``: the bank rows of image i;
    ``row_text``: per input row (file order), its bank row; ``row_image``: per input row, its image.
    """

    images: list[str]
    where: list[str]
    texts: list[str]
    image_texts: list[list[int]]
    row_text: np.ndarray
    row_image: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[Any]) -> CaptionBank:
        images: dict[str, int] = {}
        texts: dict[str, int] = {}
        where: list[str] = []
        image_texts: list[list[int]] = []
        row_text, row_image = [], []
        for row in rows:
            image = images.setdefault(row.image, len(images))
            if image == len(where):
                where.append(row.where)
                image_texts.append([])
            text = texts.setdefault(row.caption, len(texts))
            if text not in image_texts[image]:
                image_texts[image].append(text)
            row_text.append(text)
            row_image.append(image)
        return cls(list(images), where, list(texts), image_texts, np.asarray(row_text), np.asarray(row_image))

    def membership(self, image_ids: Tensor) -> Tensor:
        """``[len(image_ids), len(texts)]`` bool: bank row j is a caption of image ``image_ids[b]``."""
        mask = torch.zeros(len(image_ids), len(self.texts), dtype=torch.bool)
        for b, image in enumerate(image_ids.tolist()):
            mask[b, self.image_texts[image]] = True
        return mask

    def fingerprint(self) -> str:
        """SHA-256 of the bank's captions, in order."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8") + b"\0")
        return digest.hexdigest()


def bank_losses(
    image_embeddings: Tensor,
    image_ids: Tensor,
    positives: Tensor,
    bank: Tensor,
    captions_of: Tensor,
    *,
    temperature: float,
    num_negatives: int,
    false_negative_margin: float,
    negatives: str = "hard",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Per-image losses of both directions and mining statistics.

    ``image_embeddings`` [B, d] (with gradient); ``image_ids`` [B] (distinct); ``positives`` [B]: the
    bank row of each image's positive caption; ``bank`` [N, d] (no gradient); ``captions_of`` [B, N]
    bool: bank row j is a caption of image b. Returns ``(image_to_text [B], text_to_image [B], stats)``.

    Image to text: row b against the whole bank, positive ``positives[b]``, the image's other
    captions excluded from its negatives. Text to image: ``bank[positives[b]]`` against the batch's
    images, positive image b, any other image of the batch that the caption also describes excluded.
    Both mine with :func:`~unime.losses.hard_negative.mine_negatives` (margin filter, then the k
    hardest; k is capped at the candidates there are).
    """
    from unime.losses.hard_negative import hard_negative_infonce_rows, mining_statistics

    rows = torch.arange(len(image_ids))
    i2t, mining, scores = hard_negative_infonce_rows(
        image_embeddings, bank, positives, temperature, num_negatives, false_negative_margin, negatives,
        generator, same_as_positive=captions_of)
    stats = mining_statistics(scores, mining, positives)
    # Caption b describes image b' (b' != b): never its negative.
    describes = captions_of[:, positives].T.clone()
    describes[rows, rows] = False
    t2i, _, _ = hard_negative_infonce_rows(
        bank[positives], image_embeddings, rows, temperature, min(num_negatives, len(rows) - 1),
        false_negative_margin, negatives, generator, same_as_positive=describes)
    return i2t, t2i, stats


def model_fingerprint(folder: str | Path) -> str:
    """SHA-256 over a model folder's weights and configuration files (what decides its text embeddings)."""
    from unime.io.integrity import sha256_file

    folder = Path(folder)
    digest = hashlib.sha256()
    names = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".jinja")
                   and not p.name.startswith(".") and "checkpoints" not in p.parts)
    for path in names:
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def embed_bank(embedder: Any, bank: CaptionBank, cache: Path, model_id: str, batch_size: int, bf16: bool) -> Tensor:
    """The bank's caption embeddings [N, d] (float32, unit rows), from ``cache`` when it was built for
    the same model and captions, else embedded now (text prompt, the model's pooling) and cached."""
    from safetensors.torch import load_file, save_file

    key = {"model": model_id, "captions": bank.fingerprint(), "rows": str(len(bank.texts))}
    meta_path = cache.with_suffix(".json")
    if cache.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == key:
        logger.info("text bank: %d captions from %s", len(bank.texts), cache)
        return load_file(str(cache))["embeddings"]
    start = time.perf_counter()
    parts = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and embedder.device.type == "cpu"):
        for first in range(0, len(bank.texts), _BANK_LOG_EVERY):
            chunk = bank.texts[first:first + _BANK_LOG_EVERY]
            parts.append(embedder.encode(chunk, batch_size=batch_size, convert_to_tensor=True).float().cpu())
            done = first + len(chunk)
            logger.info("text bank: %d/%d captions embedded (%.0f s)", done, len(bank.texts),
                        time.perf_counter() - start)
    embeddings = F.normalize(torch.cat(parts), dim=-1).contiguous()
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as staging:
        save_file({"embeddings": embeddings}, str(staging))
    write_json_atomic(meta_path, key, indent=2)
    return embeddings


class ImageCollator:
    """Image indices -> the model's image inputs (its image prompt, through its processor) and the ids."""

    def __init__(self, embedder: Any, bank: CaptionBank, image_size: int | None) -> None:
        self.embedder = embedder
        self.bank = bank
        self.image_size = image_size

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        from unime.inputs import EmbedInput, load_image

        images = [EmbedInput(image=load_image(self.bank.images[i], self.bank.where[i], self.image_size))
                  for i in indices]
        return {"features": self.embedder.preprocess(images), "image_ids": torch.tensor(indices)}


class BankTrainer(AlignTrainer):
    """:class:`~unime.training.align.AlignTrainer` (projector checkpoints, frozen parts in eval mode)
    with the bank loss, and an ``evaluate`` that scores held-out images against their captions."""

    def __init__(self, *args: Any, recipe: BankTuneRecipe, bank: CaptionBank, bank_embeddings: Tensor,
                 eval_bank: CaptionBank | None = None, eval_embeddings: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        self.bank = bank
        self.bank_embeddings = bank_embeddings
        self.eval_bank = eval_bank
        self.eval_embeddings = eval_embeddings
        self.recall_history: list[dict[str, float]] = []
        self._stats: list[dict[str, float]] = []

    def _positives(self, image_ids: Tensor) -> Tensor:
        """One caption per image, drawn from a generator seeded by (seed, step): a resumed run draws the same."""
        generator = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + self.state.global_step)
        choice = torch.randint(0, 1 << 30, (len(image_ids),), generator=generator)
        return torch.tensor([self.bank.image_texts[i][int(c) % len(self.bank.image_texts[i])]
                             for i, c in zip(image_ids.tolist(), choice, strict=True)])

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        self.model.eval()
        self.projector.train()
        image_ids = inputs["image_ids"].cpu()
        embeddings = model(inputs["features"])["sentence_embedding"].float()
        bank = self.bank_embeddings.to(embeddings.device)
        positives = self._positives(image_ids)
        i2t, t2i, stats = bank_losses(
            embeddings, image_ids, positives.to(embeddings.device), bank, self.bank.membership(image_ids).to(embeddings.device),
            temperature=self.recipe.temperature, num_negatives=self.recipe.num_hard_negatives,
            false_negative_margin=self.recipe.false_negative_margin, negatives=self.recipe.negatives)
        loss = i2t.mean() + self.recipe.text_to_image_weight * t2i.mean()
        self._stats.append({**stats, "loss_i2t": float(i2t.detach().mean()), "loss_t2i": float(t2i.detach().mean())})
        return (loss, {"embeddings": embeddings}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._stats and "loss" in logs:
            for key in self._stats[0]:
                values = [s[key] for s in self._stats if not math.isnan(s[key])]
                logs[key] = round(float(np.mean(values)), 4) if values else math.nan
            self._stats = []
        super().log(logs, start_time)

    @torch.no_grad()
    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Recall@1/5/10 both ways of the held-out images against their captions (cosine), logged."""
        from unime.evaluation.retrieval import query_ranks, recall_from_ranks

        if self.eval_bank is None or self.eval_embeddings is None:
            return {}
        if self.recall_history and self.recall_history[-1]["step"] == self.state.global_step:
            # The trainer asks again at an epoch's end that is also an evaluation step.
            return {k: v for k, v in self.recall_history[-1].items() if k.startswith(metric_key_prefix)}
        self.model.eval()
        collator = ImageCollator(self.model, self.eval_bank, self.recipe.image_size)
        device = next(self.projector.parameters()).device
        start = time.perf_counter()
        parts = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(self.args.bf16)):
            for first in range(0, len(self.eval_bank.images), self.args.per_device_train_batch_size):
                batch = collator(list(range(first, min(first + self.args.per_device_train_batch_size,
                                                       len(self.eval_bank.images)))))
                features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch["features"].items()}
                parts.append(self.model(features)["sentence_embedding"].float().cpu())
        images = F.normalize(torch.cat(parts), dim=-1).numpy()
        texts = self.eval_embeddings.numpy()[self.eval_bank.row_text]
        ranks = query_ranks(texts, images, self.eval_bank.row_image)
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in recall_from_ranks(ranks).items()}
        metrics[f"{metric_key_prefix}_seconds"] = round(time.perf_counter() - start, 1)
        self.recall_history.append({"step": self.state.global_step,
                                    "images_seen": self.state.global_step * self.recipe.batch_size, **metrics})
        self.log(metrics)
        self.model.eval()
        return metrics


def _read(recipe: BankTuneRecipe, paths: list[str]) -> tuple[Any, CaptionBank]:
    from unime.training.caption_data import read_caption_data

    data = read_caption_data(paths, recipe.image_root or None, skip_bad_rows=recipe.skip_bad_rows)
    return data, CaptionBank.from_rows(data.rows)


def _summary(recipe: BankTuneRecipe, trainer: BankTrainer, data: Any, eval_data: Any, bank: CaptionBank,
             result: Any, seconds: float, model_id: str) -> dict[str, Any]:
    from unime import __version__

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "stage": STAGE,
        "unime_version": __version__,
        "model": recipe.model,
        "model_sha256": model_id,
        "module": "multi_modal_projector",
        "parameters": sum(p.numel() for p in trainer.projector.parameters()),
        "data": data.summary(),
        "bank_captions": len(bank.texts),
        "eval_data": eval_data.summary() if eval_data is not None else None,
        "steps": trainer.state.global_step,
        "images_seen": trainer.state.global_step * recipe.batch_size,
        "final_loss": losses[-1] if losses else None,
        "train_loss": result.metrics.get("train_loss"),
        "recall": trainer.recall_history,
        "wall_time_s": round(seconds, 1),
        "command": shlex.join(sys.argv),
        "recipe": recipe.to_dict(),
    }


@dataclass
class BankRun:
    """What :func:`build_bank_trainer` prepares: the trainer, the data read, the banks, the model's fingerprint."""

    trainer: BankTrainer
    data: Any
    eval_data: Any
    bank: CaptionBank
    model_id: str


def build_bank_trainer(recipe: BankTuneRecipe, callbacks: list[Any] | None = None) -> BankRun:
    """Read and check the data, load the model, embed (or reuse) the banks, freeze all but the projector
    and build the trainer; nothing is trained yet."""
    from transformers import TrainingArguments

    from unime.environment import resolve_bf16
    from unime.modeling import load_model
    from unime.training.adapters import has_adapter
    from unime.training.trainer import seed_everything, training_settings

    data, bank = _read(recipe, recipe.data)
    if len(bank.images) < recipe.batch_size:
        raise ValueError(f"data: {len(bank.images)} images, fewer than batch_size {recipe.batch_size}")
    eval_data, eval_bank = _read(recipe, [recipe.eval_data]) if recipe.eval_data else (None, None)
    if eval_bank is not None and set(eval_bank.images) & set(bank.images):
        shared = sorted(set(eval_bank.images) & set(bank.images))
        raise ValueError(f"--eval-data {recipe.eval_data}: {len(shared)} of its images are also training images "
                         f"(e.g. {shared[0]}); held-out images only")
    seed_everything(recipe.seed)
    if not Path(recipe.model).is_dir():
        raise ValueError(f"--model {recipe.model}: tune-bank starts from a local unime model folder (its weights "
                         "key the text bank)")
    embedder = load_model(recipe.model, trust_remote_code=recipe.trust_remote_code)
    if has_adapter(embedder):
        raise ValueError(f"{recipe.model}: holds an unmerged LoRA adapter; tune-bank starts from full weights "
                         "(save the earlier stage with merge: true)")
    if "multi_modal_projector" not in embedder.backbone.vision_modules:
        raise ValueError(f"the {embedder.backbone.family} family has no multi_modal_projector; tune-bank trains the "
                         "projector of LLaVA-style models (llava, llava_next, llava_onevision, fast_vlm)")
    bf16 = resolve_bf16(recipe.bf16)
    model_id = model_fingerprint(recipe.model)
    cache = Path(recipe.output_dir) / BANK_DIR
    bank_embeddings = embed_bank(embedder, bank, cache / "train.safetensors", model_id, recipe.bank_batch_size, bf16)
    eval_embeddings = (embed_bank(embedder, eval_bank, cache / "eval.safetensors", model_id, recipe.bank_batch_size, bf16)
                       if eval_bank is not None else None)
    embedder.requires_grad_(False)
    projector = embedder.hf_model.get_submodule("multi_modal_projector")
    projector.requires_grad_(True)
    logger.info("tune-bank: the projector learns (%d of %d parameters); %d images, %d bank captions",
                sum(p.numel() for p in projector.parameters()), sum(p.numel() for p in embedder.parameters()),
                len(bank.images), len(bank.texts))
    evaluating = eval_bank is not None
    args = TrainingArguments(**training_settings(
        recipe, remove_unused_columns=False, eval_strategy="steps" if evaluating else "no",
        eval_steps=recipe.eval_steps if evaluating else None))
    trainer = BankTrainer(model=embedder, args=args, train_dataset=list(range(len(bank.images))),
                          eval_dataset=list(range(len(eval_bank.images))) if eval_bank is not None else None,
                          data_collator=ImageCollator(embedder, bank, recipe.image_size), callbacks=callbacks,
                          projector=projector, recipe=recipe, bank=bank, bank_embeddings=bank_embeddings,
                          eval_bank=eval_bank, eval_embeddings=eval_embeddings)
    return BankRun(trainer, data, eval_data, bank, model_id)


def run_tune_bank(recipe: BankTuneRecipe, callbacks: list[Any] | None = None) -> Path:
    """Run stage 2 with the text side frozen and save to ``recipe.output_dir``; return that folder.

    A folder holding checkpoints of an earlier run is refused unless ``recipe.resume``, which then
    continues from the last complete checkpoint (the bank cache is reused).
    """
    from unime.training.stage import run_stage

    return run_stage(STAGE, recipe, _setup, callbacks)


def _setup(recipe: BankTuneRecipe, callbacks: list[Any] | None) -> Any:
    from unime.training.stage import StageRun

    run = build_bank_trainer(recipe, callbacks)
    trainer = run.trainer

    def after_training() -> None:
        if run.eval_data is not None and (not trainer.recall_history
                                          or trainer.recall_history[-1]["step"] != trainer.state.global_step):
            trainer.evaluate()
        if recipe.image_size is not None:
            trainer.model.update_config(image_size=recipe.image_size)

    def record(output: Path, result: Any, seconds: float) -> None:
        write_projector_files(output, trainer, SUMMARY_FILE, _summary(recipe, trainer, run.data, run.eval_data,
                                                                     run.bank, result, seconds, run.model_id))

    return StageRun(trainer, trainer.model, after_training=after_training, record=record)
