"""What a loaded UniME model carries, read from the model itself (no peft, no training stack)."""

from __future__ import annotations

from typing import Any


def has_adapter(model: Any) -> bool:
    """Whether the model's backbone carries a (peft) adapter."""
    return bool(getattr(model[0].model, "_hf_peft_config_loaded", False))
