"""unime: universal multimodal embeddings from MLLMs with the UniME recipe.

``import unime`` is light: the model stack is imported on first use of :func:`load`, and the
training stack (``unime.training``) only by the training commands.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


class _DropKernelsHint(logging.Filter):
    """bitsandbytes' CPU backend logs, at import, that it could not fetch an optional kernel from the
    hub ("Failed to load CPU gemm_4bit_forward from kernels-community ... pip install kernels").
    sentence-transformers imports peft, which imports bitsandbytes whenever it is installed, so every
    command printed it although only QLoRA uses bitsandbytes, and its CPU fallback works (installing
    ``kernels`` would fetch from the hub). Only that record is dropped; nothing else it logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHint())

if TYPE_CHECKING:
    from unime.modeling import UniMEModel

__all__ = ["__version__", "load"]


def load(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    mode: str | None = None,
    **kwargs: Any,
) -> UniMEModel:
    """Load a UniME embedding model: a saved unime model, a released checkpoint (UniME's, or
    Qwen3-VL-Embedding's with its own prompts: :mod:`unime.releases`), a base MLLM (local folder or
    hub id), or a LoRA adapter folder on top of its base.

    Args:
        name_or_path: local folder or hub id. Hub ids are only fetched when given explicitly.
        trust_remote_code: allow hub remote code (needed for Phi-3.5-V); off by default.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; the library's default when None.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"`` (bfloat16 where the device has
            native bf16 kernels, float32 elsewhere: :func:`unime.environment.compute_dtype`); float32 when None.
        mode: ``"sum"`` or ``"joint"`` for inputs that carry both text and image; overrides the
            saved setting. None: the saved setting; ``joint`` for a released checkpoint named by
            hub id (:mod:`unime.releases`); ``sum`` for any other plain folder.

    Returns:
        A :class:`unime.modeling.UniMEModel` (a ``sentence_transformers.SentenceTransformer``).
    """
    from unime.modeling import load_model

    return load_model(
        name_or_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype, mode=mode, **kwargs
    )
