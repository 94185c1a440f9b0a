"""sentence-transformers evaluators around the pure evaluators, for use during training.

Pass one (or a ``SequentialEvaluator`` of several) as ``evaluator=`` to the trainer: each call runs
the pure evaluator on the data it was built with and returns its flat metrics, with
``primary_metric`` naming the key used for logging and ``load_best_model_at_end``. When
``output_path`` is given, every call appends ``{"epoch", "steps", "metrics"}`` to
``<output_path>/unime_eval.jsonl``. Under DDP the trainer runs the evaluator on rank 0 and shares
``model.encode`` itself, so no sharding happens here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from sentence_transformers.base.evaluation import BaseEvaluator

from unime.evaluation.mmeb import MMEBDataset, MMEBProtocol, dataset_group, evaluate_mmeb
from unime.evaluation.retrieval import RetrievalDataset, evaluate_retrieval
from unime.evaluation.sts import STSDataset, evaluate_sts
from unime.evaluation.sugarcrepe import SugarCrepeSplit, evaluate_sugarcrepe

LOG_FILE = "unime_eval.jsonl"


class UniMEEvaluator(BaseEvaluator):
    """Runs ``evaluate(model, data, batch_size=...)`` and reports its flat metrics.

    Args:
        evaluate: a pure evaluator of :mod:`unime.evaluation`.
        data: the dataset objects it takes.
        primary_metric: the key that ranks checkpoints (higher is better).
        batch_size: passed to ``model.encode``.
        name: prefixed to every key (``<name>_<key>``) when several evaluators run together.
    """

    def __init__(
        self,
        evaluate: Callable[..., dict[str, float]],
        data: Sequence[Any],
        primary_metric: str,
        batch_size: int = 32,
        name: str = "",
    ) -> None:
        super().__init__()
        if not data:
            raise ValueError(f"{type(self).__name__} needs at least one dataset")
        self.evaluate = evaluate
        self.data = list(data)
        self.primary_metric = primary_metric
        self.batch_size = batch_size
        self.name = name

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        metrics = self.evaluate(model, self.data, batch_size=self.batch_size)
        if output_path is not None:
            record = {
                "epoch": epoch,
                "steps": steps,
                "metrics": {k: None if math.isnan(v) else v for k, v in metrics.items()},
            }
            with open(Path(output_path) / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        if hasattr(model, "model_card_data"):
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        return {"datasets": [item.name for item in self.data], "batch_size": self.batch_size}


def _first_name(data: Sequence[Any], kind: str) -> str:
    if not data:
        raise ValueError(f"{kind} needs at least one dataset")
    return data[0].name


class MMEBEvaluator(UniMEEvaluator):
    """MMEB precision@1; primary metric the overall mean (or the only dataset's score outside the 36).

    ``protocol`` (:class:`~unime.evaluation.mmeb.MMEBProtocol`): None evaluates the model in its
    current input format (during stage 2: the training format) with strict ties.
    """

    def __init__(self, datasets: Sequence[MMEBDataset], batch_size: int = 32, name: str = "",
                 protocol: MMEBProtocol | None = None) -> None:
        first = _first_name(datasets, "MMEBEvaluator")
        in_table = any(dataset_group(d.name) is not None for d in datasets)
        primary = "mmeb/overall/precision@1" if in_table else f"mmeb/{first}/precision@1"
        self.protocol = protocol
        super().__init__(partial(evaluate_mmeb, protocol=protocol), datasets, primary, batch_size, name)

    def get_config_dict(self) -> dict[str, Any]:
        protocol = self.protocol.describe() if self.protocol is not None else None
        return {**super().get_config_dict(), "protocol": protocol}


class RetrievalEvaluator(UniMEEvaluator):
    """Image-text R@1/5/10 both ways; primary metric ``retrieval/mean_R@1``."""

    def __init__(self, datasets: Sequence[RetrievalDataset], batch_size: int = 32, name: str = "") -> None:
        super().__init__(evaluate_retrieval, datasets, "retrieval/mean_R@1", batch_size, name)


class SugarCrepeEvaluator(UniMEEvaluator):
    """SugarCrepe accuracies; primary metric ``sugarcrepe/average/accuracy``."""

    def __init__(self, splits: Sequence[SugarCrepeSplit], batch_size: int = 32, name: str = "") -> None:
        super().__init__(evaluate_sugarcrepe, splits, "sugarcrepe/average/accuracy", batch_size, name)


class STSEvaluator(UniMEEvaluator):
    """STS Spearman x100; primary metric the first dataset's ``sts/<name>/spearman``."""

    def __init__(self, datasets: Sequence[STSDataset], batch_size: int = 32, name: str = "") -> None:
        primary = f"sts/{_first_name(datasets, 'STSEvaluator')}/spearman"
        super().__init__(evaluate_sts, datasets, primary, batch_size, name)
