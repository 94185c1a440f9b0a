"""An MLLM as judge (UniME-V2): the probability that a candidate meets a query's requirements.

UniME-V2 (arXiv 2510.13515) asks a generative MLLM, for each (query, candidate) pair, one question
in one user turn: its instruction (:data:`JUDGE_INSTRUCTION`), then ``Query:`` with the query's
image and text, then ``Candidate:`` with the candidate's image and text, the items written one
after the other as Qwen2-VL's chat template joins typed content (``Embedding/src/model_utils.py``,
``construct_rerank_messages``). The judge score is read from the logits of the first answer token::

    s = e^yes / (e^yes + e^no)

where ``yes`` and ``no`` are the logits of the tokens "Yes" and "No" (each must be one token of the
judge's tokenizer). UniME-V2 mines hard negatives with these scores and trains on them as soft
labels (:func:`unime.losses.soft_label_kl`).

The judge file (the layout UniME-V2's training code reads, ``Embedding/src/dataset.py``, that of its
released ``train_data_*_scores.json``): a JSON list of rows, each::

    {"query_text": str, "query_image": str, "pos_text": str, "pos_image": str,
     "query_pos_scores": float, "hard_negatives": [[text, image], ...], "hard_negatives_scores": [float, ...]}

image paths relative to an image folder ("" for none). :func:`read_judge_file` reads and checks it;
:func:`judge_file` fills (or re-computes) the scores with a model, resumably.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unime.io.integrity import write_json_atomic

__all__ = ["JUDGE_INSTRUCTION", "Judge", "JudgeRow", "judge_content", "judge_file", "read_judge_file",
           "resolve_image"]

logger = logging.getLogger(__name__)

JUDGE_INSTRUCTION = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate meets the requirements "
    "of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'."
)
# What MMEB texts (and so UniME-V2's rows) mark an image with; the judge puts the image itself there.
_PLACEHOLDERS = ("<|image_1|>\n", "<|image_1|>", "<|image_pad|>\n", "<|image_pad|>", "<image>\n", "<image>")
_FIELDS = ("query_text", "query_image", "pos_text", "pos_image", "hard_negatives")


def _strip_placeholders(text: str) -> str:
    for placeholder in _PLACEHOLDERS:
        text = text.replace(placeholder, "")
    return text


def judge_content(query: tuple[str, Any], candidate: tuple[str, Any], image_token: str) -> tuple[str, list[Any]]:
    """The user turn's content for one pair, and its images in order: instruction, ``Query:``, the
    query's image (``image_token``) and text, ``Candidate:``, the candidate's image and text. ``query``
    and ``candidate`` are ``(text, image)``, either part empty or None."""
    parts, images = [JUDGE_INSTRUCTION], []
    for label, (text, image) in (("Query:", query), ("Candidate:", candidate)):
        parts.append(label)
        if image is not None and image != "":
            parts.append(image_token)
            images.append(image)
        if text:
            parts.append(_strip_placeholders(text))
    return "".join(parts), images


def _single_token(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"the judge's tokenizer splits {word!r} into {len(ids)} tokens {pieces}; the judge score "
                         "needs 'Yes' and 'No' as single tokens")
    return int(ids[0])


class Judge:
    """A model loaded with its LM head (:func:`unime.captioner.load_captioner`) scoring pairs.

    ``score(pairs)`` returns the yes-probability of each ``(query, candidate)``; each side is
    ``(text, image)`` with the image a path, a PIL image or None.
    """

    def __init__(self, model: str | Path | Any, *, trust_remote_code: bool = False,
                 image_size: int | None = None) -> None:
        from unime.captioner import Captioner, load_captioner

        self.captioner = model if isinstance(model, Captioner) else load_captioner(
            model, trust_remote_code=trust_remote_code)
        tokenizer = self.captioner.tokenizer
        self.yes_id = _single_token(tokenizer, "Yes")
        self.no_id = _single_token(tokenizer, "No")
        self.image_size = image_size

    def prompt(self, query: tuple[str, Any], candidate: tuple[str, Any]) -> tuple[str, list[Any]]:
        """The whole prompt of one pair (the model's chat format as saved with it) and its images."""
        content, images = judge_content(query, candidate, self.captioner.backbone.image_token)
        return self.captioner.embedder.unime_config.fill_joint(content), images

    def score(self, pairs: Sequence[tuple[tuple[str, Any], tuple[str, Any]]], batch_size: int = 8) -> list[float]:
        import torch

        from unime.captioner import left_padded
        from unime.inputs import load_image

        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        model, processor = self.captioner.model, self.captioner.processor
        scores: list[float] = []
        with left_padded(self.captioner), torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                texts, images = [], []
                for offset, (query, candidate) in enumerate(pairs[start:start + batch_size]):
                    text, pair_images = self.prompt(query, candidate)
                    texts.append(text)
                    images.extend(load_image(image, f"pair {start + offset}", self.image_size)
                                  for image in pair_images)
                kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
                if images:
                    kwargs["images"] = images
                features = processor(**kwargs)
                features = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in features.items()}
                logits = model(**features).logits[:, -1].float()
                pair = torch.stack([logits[:, self.yes_id], logits[:, self.no_id]], dim=-1)
                scores.extend(torch.softmax(pair, dim=-1)[:, 0].tolist())
        return scores


@dataclass
class JudgeRow:
    """One row of a judge file: a query, its positive and its hard negatives, each ``(text, image)``,
    and the judge's scores of the positive and of each negative (None until judged)."""

    query: tuple[str, str]
    positive: tuple[str, str]
    negatives: list[tuple[str, str]]
    positive_score: float | None = None
    negative_scores: list[float] | None = None

    def pairs(self) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        return [(self.query, self.positive)] + [(self.query, negative) for negative in self.negatives]

    def to_json(self) -> dict[str, Any]:
        return {"query_text": self.query[0], "query_image": self.query[1], "pos_text": self.positive[0],
                "pos_image": self.positive[1], "query_pos_scores": self.positive_score,
                "hard_negatives": [list(negative) for negative in self.negatives],
                "hard_negatives_scores": self.negative_scores}


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def read_judge_file(path: str | Path) -> list[JudgeRow]:
    """The rows of a judge file (UniME-V2's layout, module docstring), checked: an error names the file,
    the row and the field."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON judge file ({error})") from error
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a judge file is a JSON list of rows, got {type(rows).__name__}")
    out = []
    for number, row in enumerate(rows):
        where = f"{path} row {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
        missing = [field for field in _FIELDS if field not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        negatives = row["hard_negatives"]
        if not isinstance(negatives, list) or not all(isinstance(n, (list, tuple)) and len(n) == 2 for n in negatives):
            raise ValueError(f"{where}: hard_negatives must be a list of [text, image] pairs")
        query = (_text(row["query_text"], f"{where} query_text"), _text(row["query_image"], f"{where} query_image"))
        positive = (_text(row["pos_text"], f"{where} pos_text"), _text(row["pos_image"], f"{where} pos_image"))
        if not any(query) or not any(positive):
            raise ValueError(f"{where}: the query and the positive each need a text or an image")
        parsed = [(_text(t, f"{where} hard_negatives[{i}] text"), _text(m, f"{where} hard_negatives[{i}] image"))
                  for i, (t, m) in enumerate(negatives)]
        scores = row.get("hard_negatives_scores")
        if scores is not None:
            if not isinstance(scores, list) or len(scores) != len(parsed):
                raise ValueError(f"{where}: hard_negatives_scores must list one score per hard negative "
                                 f"({len(parsed)}), got {scores!r:.80}")
            scores = [_score(s, f"{where} hard_negatives_scores[{i}]") for i, s in enumerate(scores)]
        out.append(JudgeRow(query, positive, parsed, _score(row.get("query_pos_scores"), f"{where} query_pos_scores"),
                            scores))
    return out


def resolve_image(image: str, root: Path | None) -> str | None:
    """A judge-file image path as a file path: None for "", joined to ``root`` unless absolute."""
    if not image:
        return None
    return str(root / image) if root is not None and not Path(image).is_absolute() else image


def judge_file(model: str | Path | Judge, data: str | Path, output: str | Path, *, image_root: str | Path | None = None,
               batch_size: int = 8, save_every: int = 64, overwrite: bool = False,
               rows: list[JudgeRow] | None = None) -> Path:
    """Score every (query, positive) and (query, hard negative) pair of the judge file ``data`` with
    ``model`` and write the file again with the scores, to ``output`` (UniME-V2's layout).

    Resumable: the scores of finished rows are kept in ``output`` + ``.partial.json`` (written
    atomically every ``save_every`` rows); a run started again with the same data continues after
    them. An ``output`` that exists is refused unless ``overwrite``. ``rows``: the file's rows when the
    caller has read them already (:func:`read_judge_file`).
    """
    data, output = Path(data), Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists (overwrite to replace it)")
    rows = read_judge_file(data) if rows is None else rows
    root = Path(image_root) if image_root is not None else None
    partial = output.with_name(output.name + ".partial.json")
    done: dict[int, list[float]] = {}
    if partial.exists():
        state = json.loads(partial.read_text(encoding="utf-8"))
        if state.get("data") != str(data.resolve()) or state.get("rows") != len(rows):
            raise ValueError(f"{partial}: partial scores of another data file ({state.get('data')}, "
                             f"{state.get('rows')} rows); delete it to start again")
        done = {int(k): v for k, v in state["scores"].items()}
        logger.info("judge: %d of %d rows already scored (%s)", len(done), len(rows), partial)
    judge = model if isinstance(model, Judge) else Judge(model)
    start, since_save, scored_pairs = time.perf_counter(), 0, 0
    pending = [i for i in range(len(rows)) if i not in done]
    position = 0
    while position < len(pending):
        # Whole rows, as many as fill one batch of pairs (at least one row).
        group, pairs = [], []
        while position < len(pending) and (not group or len(pairs) < batch_size):
            index = pending[position]
            row_pairs = [((q[0], resolve_image(q[1], root)), (c[0], resolve_image(c[1], root))) for q, c in rows[index].pairs()]
            group.append((index, len(row_pairs)))
            pairs.extend(row_pairs)
            position += 1
        scores = judge.score(pairs, batch_size)
        offset = 0
        for index, count in group:
            done[index] = scores[offset:offset + count]
            offset += count
        since_save += len(group)
        scored_pairs += len(pairs)
        if since_save >= save_every or position == len(pending):
            write_json_atomic(partial, {"data": str(data.resolve()), "rows": len(rows),
                                        "scores": {str(k): v for k, v in done.items()}})
            since_save = 0
            logger.info("judge: %d/%d rows (%.1f pairs/s)", len(done), len(rows),
                        scored_pairs / max(time.perf_counter() - start, 1e-9))
    for index, row in enumerate(rows):
        row.positive_score, *negatives = done[index]
        row.negative_scores = negatives
    write_json_atomic(output, [row.to_json() for row in rows])
    partial.unlink(missing_ok=True)
    return output
