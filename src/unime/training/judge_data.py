"""Stage-2 training rows from a judge file (UniME-V2): each query, its positive, its hard negatives and
the judge's score of each, for ``unime tune --loss unime-v2`` (or ``both``).

The judge file is :mod:`unime.judge`'s layout (the one UniME-V2's training code reads). Each
row becomes one training row with the columns ``query``, ``positive``, ``negative_1`` ...
``negative_k`` (``{"text", "image"}`` structs, images as absolute paths or "") and ``judge_scores``
(the positive's score, then each negative's) and ``row``. The first ``k`` hard
negatives of each row are used, as UniME-V2 does (``select_hard_negative_num``: 8).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unime.inputs import EmbedInput, load_image
from unime.training.mmeb_data import MMEBTrainCollator

logger = logging.getLogger(__name__)

DATASET = "judge"


@dataclass
class JudgeTrainData:
    """The rows of a judge file as one training data set (the interface of ``MMEBTrainData``)."""

    datasets: Any  # {"judge": datasets.Dataset}
    negatives: int
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {name: {"rows": len(ds), "skipped": self.skipped.get(name, 0), "hard_negatives": self.negatives,
                       "judge_scores": True} for name, ds in self.datasets.items()}


def _side(text: str, image: str, root: Path, where: str) -> dict[str, str]:
    if not image:
        return {"text": text, "image": ""}
    path = Path(image) if Path(image).is_absolute() else root / image
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} not found")
    return {"text": text, "image": str(path)}


def load_judge_train(path: str | Path, image_root: str | Path, *, negatives: int = 8,
                     skip_bad_rows: bool = False) -> JudgeTrainData:
    """Read and check a judge file as training rows: every row needs its scores (run ``unime judge``
    first) and at least ``negatives`` hard negatives, and its images must exist under ``image_root``;
    an error names the file, the row and what is wrong, unless ``skip_bad_rows`` (then the row is
    counted and left out)."""
    from datasets import Dataset

    from unime.judge import read_judge_file

    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--image-root {root}: no such folder")
    if negatives <= 0:
        raise ValueError(f"negatives must be positive, got {negatives}")
    rows, skipped = [], 0
    for number, row in enumerate(read_judge_file(path)):
        where = f"{path} row {number}"
        try:
            if row.positive_score is None or row.negative_scores is None:
                raise ValueError(f"{where}: no judge scores (query_pos_scores / hard_negatives_scores); score the "
                                 "file with unime judge first")
            if len(row.negatives) < negatives:
                raise ValueError(f"{where}: {len(row.negatives)} hard negatives, fewer than the {negatives} asked "
                                 "(--judge-negatives)")
            record: dict[str, Any] = {"query": _side(*row.query, root, where),
                                      "positive": _side(*row.positive, root, where)}
            for i, negative in enumerate(row.negatives[:negatives]):
                if not any(negative):
                    raise ValueError(f"{where}: hard_negatives[{i}] has neither text nor image")
                record[f"negative_{i + 1}"] = _side(*negative, root, where)
            record["judge_scores"] = [row.positive_score, *row.negative_scores[:negatives]]
            record["row"] = where
            rows.append(record)
        except (FileNotFoundError, ValueError) as error:
            if not skip_bad_rows:
                raise
            skipped += 1
            logger.warning("skipping %s", error)
    if not rows:
        raise ValueError(f"{path}: no usable rows ({skipped} skipped)")
    return JudgeTrainData({DATASET: Dataset.from_list(rows)}, negatives, {DATASET: skipped})


def judge_row_inputs(feature: dict[str, Any]) -> dict[str, Any]:
    """One judge row as the loss's inputs: ``query``, ``positive``, ``negative_1`` ... as
    :class:`~unime.inputs.EmbedInput`, and ``label`` = the judge scores (positive first)."""
    where = feature.get("row", "row")
    result: dict[str, Any] = {}
    if "dataset_name" in feature:  # added by sentence-transformers' multi-dataset batches
        result["dataset_name"] = feature["dataset_name"]
    columns = ["query", "positive"] + sorted((k for k in feature if k.startswith("negative_")),
                                             key=lambda k: int(k.split("_")[1]))
    for column in columns:
        side = feature[column]
        image = load_image(side["image"], where) if side["image"] else None
        result[column] = EmbedInput(text=side["text"] or None, image=image)
    result["label"] = [float(s) for s in feature["judge_scores"]]
    return result


class JudgeTrainCollator(MMEBTrainCollator):
    """:class:`~unime.training.mmeb_data.MMEBTrainCollator` for judge rows (:func:`judge_row_inputs`):
    the same bad-row rules, the judge scores as the label column."""

    inputs = staticmethod(judge_row_inputs)
