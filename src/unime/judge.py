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

__all__ = ["JUDGE_INSTRUCTION", "Judge", "JudgeRow", "judge_content", "judge_file", "judge_groups",
           "read_judge_file", "resolve_image"]

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
    ``(text, image)`` with the image a path, a PIL image or None. ``device``: where the model
    computes (default: where it was loaded, the CPU).
    """

    def __init__(self, model: str | Path | Any, *, trust_remote_code: bool = False,
                 image_size: int | None = None, device: str | None = None) -> None:
        from unime.captioner import Captioner, load_captioner

        self.captioner = model if isinstance(model, Captioner) else load_captioner(
            model, trust_remote_code=trust_remote_code)
        if device is not None:  # the embedder shares the captioner's weights: both move
            self.captioner.model.to(device)
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


def judge_groups(rows: Sequence[JudgeRow], batch_size: int) -> list[list[int]]:
    """The rows' indices cut, in order, into groups of whole rows that fill one batch of pairs (at least
    one row a group): the unit of scoring, of saving and of sharding. The groups depend on the rows and
    ``batch_size`` alone, so a resumed or sharded run scores every pair in the same batch, and so to the
    same bits, as one uninterrupted process."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    groups: list[list[int]] = []
    group: list[int] = []
    pairs = 0
    for index, row in enumerate(rows):
        group.append(index)
        pairs += 1 + len(row.negatives)
        if pairs >= batch_size:
            groups.append(group)
            group, pairs = [], 0
    if group:
        groups.append(group)
    return groups


def _partial_path(output: Path, shard: tuple[int, int]) -> Path:
    index, count = shard
    suffix = ".partial.json" if count == 1 else f".shard-{index}-of-{count}.partial.json"
    return output.with_name(output.name + suffix)


def _read_partial(path: Path, data: Path, rows: int, shard: tuple[int, int]) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable partial scores ({error}); delete it to score its rows again") from None
    if not isinstance(state, dict) or not isinstance(state.get("scores"), dict):
        raise ValueError(f"{path}: not a partial scores file; delete it to score its rows again")
    if state.get("data") != str(data.resolve()) or state.get("rows") != rows:
        raise ValueError(f"{path}: partial scores of another data file ({state.get('data')}, "
                         f"{state.get('rows')} rows); delete it to start again")
    if shard[1] > 1 and state.get("shard") != list(shard):
        raise ValueError(f"{path}: scores of shard {state.get('shard')}, not {list(shard)}; delete it to start again")
    return state


def _barrier() -> None:
    from unime.environment import rank_and_world_size

    if rank_and_world_size(environment=False)[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def judge_file(model: str | Path | Judge, data: str | Path, output: str | Path, *, image_root: str | Path | None = None,
               batch_size: int = 8, save_every: int = 64, overwrite: bool = False,
               rows: list[JudgeRow] | None = None, shard: tuple[int, int] | None = None) -> Path:
    """Score every (query, positive) and (query, hard negative) pair of the judge file ``data`` with
    ``model`` (a model name or folder, a :class:`Judge` or anything with its ``score``) and write the
    file again with the scores, to ``output`` (UniME-V2's layout).

    The rows are scored in the groups of :func:`judge_groups`. Resumable: the scores of finished groups
    are kept in ``output`` + ``.partial.json`` (written atomically every ``save_every`` rows); a run
    started again with the same data continues after them. An ``output`` that exists is refused unless
    ``overwrite``. ``rows``: the file's rows when the caller has read them already
    (:func:`read_judge_file`).

    Sharded: ``shard=(index, count)`` (default: the rank and size of an initialised torch.distributed
    group, as under ``torchrun``; else ``(0, 1)``) scores the groups ``index, index + count, ...``
    only, keeping its scores in ``output.shard-INDEX-of-COUNT.partial.json``. With a process group the
    ranks meet once all are done and rank 0 writes ``output`` from the shards' scores; without one, the
    call that finds every shard finished writes it. Either way ``output`` is byte for byte the file one
    process writes, since every pair is scored in the same batch.
    """
    from unime.environment import rank_and_world_size

    data, output = Path(data), Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists (overwrite to replace it)")
    grouped = shard is None and rank_and_world_size(environment=False)[1] > 1
    shard = rank_and_world_size(environment=False) if shard is None else shard
    index, count = shard
    if count <= 0 or not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    rows = read_judge_file(data) if rows is None else rows
    root = Path(image_root) if image_root is not None else None
    partial = _partial_path(output, shard)
    done: dict[int, list[float]] = {}
    if partial.exists():
        state = _read_partial(partial, data, len(rows), shard)
        done = {int(k): v for k, v in state["scores"].items()}
        logger.info("judge: %d of %d rows already scored (%s)", len(done), len(rows), partial)
    groups = judge_groups(rows, batch_size)[index::count]
    mine = sum(len(group) for group in groups)
    pending = [group for group in groups if not all(i in done for i in group)]

    def save() -> None:
        state = {"data": str(data.resolve()), "rows": len(rows), "batch_size": batch_size,
                 "complete": all(i in done for group in groups for i in group),
                 "scores": {str(k): v for k, v in sorted(done.items())}}
        if count > 1:
            state["shard"] = [index, count]
        write_json_atomic(partial, state)

    if pending:
        judge = Judge(model) if isinstance(model, (str, Path)) else model
        start, since_save, scored_pairs = time.perf_counter(), 0, 0
        for number, group in enumerate(pending):
            pairs = [((q[0], resolve_image(q[1], root)), (c[0], resolve_image(c[1], root)))
                     for i in group for q, c in rows[i].pairs()]
            scores = judge.score(pairs, batch_size)
            offset = 0
            for i in group:
                width = 1 + len(rows[i].negatives)
                done[i] = scores[offset:offset + width]
                offset += width
            since_save += len(group)
            scored_pairs += len(pairs)
            if since_save >= save_every or number == len(pending) - 1:
                save()
                since_save = 0
                logger.info("judge: %d/%d rows%s (%.1f pairs/s)", sum(i in done for g in groups for i in g), mine,
                            f" of shard {index}/{count}" if count > 1 else "",
                            scored_pairs / max(time.perf_counter() - start, 1e-9))
    elif count > 1:
        save()  # recorded as complete (a shard with no rows of its own is finished as it starts)
    if count == 1:
        scores_of = done
    else:
        if grouped:
            _barrier()  # every rank's shard is saved complete
            if index != 0:
                return output
        scores_of = _merged_shards(output, data, len(rows), count)
        if scores_of is None:
            logger.info("judge: shard %d of %d done; the output is written once every shard is", index, count)
            return output
    for number, row in enumerate(rows):
        row.positive_score, *negatives = scores_of[number]
        row.negative_scores = negatives
    write_json_atomic(output, [row.to_json() for row in rows])
    for number in range(count):
        _partial_path(output, (number, count)).unlink(missing_ok=True)
    return output


def _merged_shards(output: Path, data: Path, rows: int, count: int) -> dict[int, list[float]] | None:
    """Every row's scores from the ``count`` shards' partial files, or None while a shard is unfinished."""
    merged: dict[int, list[float]] = {}
    for number in range(count):
        path = _partial_path(output, (number, count))
        if not path.exists():
            return None
        state = _read_partial(path, data, rows, (number, count))
        if not state.get("complete"):
            return None
        merged.update((int(k), v) for k, v in state["scores"].items())
    missing = [i for i in range(rows) if i not in merged]
    if missing:
        raise ValueError(f"{output}: the {count} shards' partial files have no scores for rows {missing[:10]} "
                         "(written with another --batch-size?); delete them to score again")
    return merged
