"""Backbone adapters, one module per family, found by the HF ``model_type``.

Adding a backbone is one new module in this package that defines ``BACKBONE`` (a
:class:`~unime.backbones.base.Backbone`) whose ``family`` is the config's ``model_type``.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from unime.backbones.base import Backbone

__all__ = ["Backbone", "get_backbone", "families"]


@lru_cache(maxsize=1)
def _registry() -> dict[str, Backbone]:
    registry: dict[str, Backbone] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        backbone = getattr(importlib.import_module(f"{__name__}.{info.name}"), "BACKBONE", None)
        if isinstance(backbone, Backbone):
            registry[backbone.family] = backbone
    return registry


def families() -> list[str]:
    """The supported ``model_type`` values."""
    return sorted(_registry())


def get_backbone(model_type: str) -> Backbone:
    """The adapter of a family, or a ValueError that lists the supported ones."""
    try:
        return _registry()[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported model_type {model_type!r}: unime supports {', '.join(families())}. "
            "A new backbone is one module in unime/backbones defining BACKBONE."
        ) from None
