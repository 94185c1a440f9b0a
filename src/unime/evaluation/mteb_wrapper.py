"""Adapter exposing a UniME model to ``mteb`` (the Massive Text/Image Embedding Benchmark, v2 API).

mteb is an optional dependency and is not imported here: the adapter only follows its encoder
protocol, ``encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs)``,
where ``inputs`` iterates over batches (dicts of columns: ``text`` a list of strings, ``image`` a
list of PIL images or of single-image lists). Each row becomes one input of the model contract, a
text-and-image row a joint input. Query-side rows get the task's instruction when one is given.

Example::

    import mteb
    from unime import load
    from unime.evaluation.mteb_wrapper import MTEBEncoder

    encoder = MTEBEncoder(load("DeepGlint-AI/UniME-Phi3.5-V-4.2B"),
                          instructions={"STS12": "Retrieve semantically similar text."})
    results = mteb.evaluate(encoder, tasks=mteb.get_tasks(tasks=["STS12"]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


class MTEBEncoder:
    """Wraps a model with the UniME ``encode`` contract in mteb's encoder protocol.

    Args:
        model: the embedding model (``unime.load(...)``).
        instructions: task name -> instruction added to query-side inputs of that task.
        batch_size: passed to ``model.encode``.
    """

    def __init__(
        self, model: Any, instructions: Mapping[str, str] | None = None, batch_size: int = 32
    ) -> None:
        self.model = model
        self.instructions = dict(instructions or {})
        self.batch_size = batch_size

    def _rows(self, batch: Mapping[str, Any], instruction: str | None) -> list[Any]:
        texts = batch.get("text")
        images = batch.get("image")
        if texts is None and images is None:
            raise ValueError(f"mteb batch has neither 'text' nor 'image' (columns {sorted(batch)})")
        size = len(texts if texts is not None else images)
        rows = []
        for index in range(size):
            item: dict[str, Any] = {}
            if texts is not None and texts[index]:
                item["text"] = texts[index]
            if images is not None and images[index] is not None:
                image = images[index]
                if isinstance(image, (list, tuple)):
                    if len(image) != 1:
                        raise ValueError(
                            f"mteb row {index}: {len(image)} images; UniME embeds one image per input"
                        )
                    image = image[0]
                item["image"] = image
            if instruction:
                item["instruction"] = instruction
            if not item.keys() & {"text", "image"}:
                raise ValueError(f"mteb row {index}: empty text and no image")
            rows.append(item)
        return rows

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any,
        hf_split: str = "",
        hf_subset: str = "",
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every row of every batch in ``inputs``: float32 [n, d], unit rows."""
        is_query = prompt_type is not None and str(getattr(prompt_type, "value", prompt_type)) == "query"
        instruction = self.instructions.get(getattr(task_metadata, "name", "")) if is_query else None
        rows = [row for batch in inputs for row in self._rows(batch, instruction)]
        if not rows:
            raise ValueError("mteb passed no inputs to encode")
        embeddings = self.model.encode(rows, batch_size=self.batch_size, show_progress_bar=False)
        return np.asarray(embeddings, dtype=np.float32)

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's model metadata: what sentence-transformers reports, plus the image modality and the
        use of instructions (mteb routes image tasks only to models that declare images)."""
        from mteb.models import ModelMeta
        from sentence_transformers import SentenceTransformer

        if isinstance(self.model, SentenceTransformer):
            meta = ModelMeta.from_sentence_transformer_model(self.model)
        else:
            meta = ModelMeta.create_empty()
        return meta.model_copy(update={"modalities": ["text", "image"], "use_instructions": True,
                                       "similarity_fn_name": meta.similarity_fn_name or "cosine"})

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity matrix [n1, n2]."""
        left, right = _unit(embeddings1), _unit(embeddings2)
        return left @ right.T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity of row i with row i."""
        return (_unit(embeddings1) * _unit(embeddings2)).sum(axis=1)


def _unit(embeddings: Any) -> np.ndarray:
    array = np.asarray(embeddings.cpu() if hasattr(embeddings, "cpu") else embeddings, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
