"""Which parameters learn: LoRA / QLoRA adapters, full tuning, and merging (peft surgery).

LoRA / QLoRA adapt the decoder linears (of the LLM alone in scope ``"llm"``); ``full`` unfreezes
the scope. In scope ``"llm"`` the vision tower and the projector never reach the optimiser.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from unime.choices import SCOPES, TUNING_METHODS
from unime.modeling import has_adapter as has_adapter
from unime.training.recipes import check_choice as _check_choice

logger = logging.getLogger(__name__)

__all__ = ["SCOPES", "TUNING_METHODS", "apply_tuning", "has_adapter", "is_quantized", "load_for_tuning",
           "merge_adapter", "vision_modules"]


def _submodule(root: torch.nn.Module, dotted: str) -> torch.nn.Module | None:
    """The module at ``dotted`` inside ``root``, also when ``root`` wraps it under a prefix."""
    for name, module in root.named_modules():
        if name == dotted or name.endswith("." + dotted):
            return module
    return None


def vision_modules(model: Any) -> dict[str, torch.nn.Module]:
    """The vision tower and projector of a UniME model, by their dotted path (frozen in scope "llm")."""
    found = {}
    for path in model[0].backbone.vision_modules:
        module = _submodule(model.hf_model, path)
        if module is not None:
            found[path] = module
    return found


def _quantization_config(backbone: Any, scope: str) -> Any:
    """4-bit NF4 (QLoRA, Dettmers et al. 2023); in scope "llm" the vision side stays unquantised."""
    from transformers import BitsAndBytesConfig

    skip = list(backbone.vision_modules) + ["lm_head"] if scope == "llm" else ["lm_head"]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
        llm_int8_skip_modules=[name.split(".")[-1] for name in skip],
    )


def load_for_tuning(
    model_path: str,
    *,
    method: str = "lora",
    scope: str = "llm",
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """Load a UniME model ready for :func:`apply_tuning`.

    QLoRA must quantise while loading, so the method is needed here: ``"qlora"`` loads the weights
    of the scope in 4-bit NF4 (bitsandbytes). A model saved with an unmerged LoRA adapter (e.g. a
    stage-1 output written with ``merge: false``) is merged first, so a new adapter starts from it.
    """
    from unime.modeling import load_model, read_model_type

    _check_choice("tuning", method, TUNING_METHODS)
    _check_choice("scope", scope, SCOPES)
    model_kwargs: dict[str, Any] = {}
    if method == "qlora":
        from unime.backbones import get_backbone

        backbone = get_backbone(read_model_type(model_path, trust_remote_code))
        model_kwargs["quantization_config"] = _quantization_config(backbone, scope)
    model = load_model(model_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype,
                       model_kwargs=model_kwargs)
    if has_adapter(model):
        if method == "qlora":
            raise ValueError(f"{model_path}: holds an unmerged LoRA adapter; merge it before QLoRA "
                             "(save it with merge: true), adapters cannot be merged into 4-bit weights")
        merge_adapter(model)
    return model


def is_quantized(model: Any) -> bool:
    return bool(getattr(model.hf_model, "is_loaded_in_4bit", False) or getattr(model.hf_model, "is_loaded_in_8bit", False))


def apply_tuning(
    model: Any,
    method: str = "lora",
    scope: str = "llm",
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    target_regex: str | None = None,
    modules_to_save: list[str] | None = None,
) -> dict[str, int]:
    """Choose what learns, in place, and return ``{"trainable": n, "total": N}`` parameter counts.

    ``lora``/``qlora``: a LoRA adapter (peft, through sentence-transformers' ``add_adapter``) on the
    linears matched by ``target_regex``, by default the backbone's decoder linears
    (``backbone.lora_target_regex(scope == "llm")``); every other weight is frozen. ``qlora`` needs a
    model loaded 4-bit by :func:`load_for_tuning`. ``full``: every weight of the scope learns (the LLM
    alone, or the whole model). ``modules_to_save`` (LoRA only) names modules trained in full beside
    the adapter, e.g. a randomly initialised vision tower and projector that LoRA alone cannot
    teach. Seed the RNG before calling: the LoRA A matrices start random.
    """
    _check_choice("tuning", method, TUNING_METHODS)
    _check_choice("scope", scope, SCOPES)
    if (method == "qlora") != is_quantized(model):
        raise ValueError("tuning 'qlora' needs, and only it can train, a model loaded in 4 bits "
                         "(load_for_tuning(method='qlora'))")
    if has_adapter(model):
        raise ValueError("the model already carries a LoRA adapter; merge_adapter(model) first")
    if method == "full":
        _unfreeze(model, scope, target_regex)
    else:
        _add_lora(model, method, scope, lora_r, lora_alpha, lora_dropout, target_regex, modules_to_save)
    if scope == "llm":
        # A pattern given by hand must not reach the vision side either.
        for path, module in vision_modules(model).items():
            if any(p.requires_grad for p in module.parameters()):
                raise ValueError(f"scope 'llm' but parameters of {path!r} would train (check target_regex)")
    counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "total": sum(p.numel() for p in model.parameters())}
    logger.info("tuning %s (scope %s): %d of %d parameters train (%.2f%%)", method, scope,
                counts["trainable"], counts["total"], 100 * counts["trainable"] / max(counts["total"], 1))
    return counts


def _unfreeze(model: Any, scope: str, target_regex: str | None) -> None:
    if target_regex is not None:
        raise ValueError("target_regex only applies to LoRA / QLoRA tuning")
    model.requires_grad_(scope == "all")
    if scope == "llm":
        backbone = model[0].backbone
        llm = _submodule(model.hf_model, backbone.llm_module)
        if llm is None:
            raise ValueError(f"no module {backbone.llm_module!r} in the {backbone.family} model")
        llm.requires_grad_(True)


def _add_lora(model: Any, method: str, scope: str, r: int, alpha: int, dropout: float, target_regex: str | None,
              modules_to_save: list[str] | None = None) -> None:
    from peft import LoraConfig, prepare_model_for_kbit_training

    if r <= 0 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"invalid LoRA settings r={r}, alpha={alpha}, dropout={dropout}")
    if method == "qlora":
        prepare_model_for_kbit_training(model.hf_model, use_gradient_checkpointing=False)
    backbone = model[0].backbone
    regex = target_regex or backbone.lora_target_regex(scope == "llm")
    try:
        model.add_adapter(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex,
                                     modules_to_save=list(modules_to_save) if modules_to_save else None))
    except ValueError as error:
        raise ValueError(f"LoRA target_regex {regex!r} matched no layer of the {backbone.family} model: {error}") from None


def merge_adapter(model: Any) -> bool:
    """Fold a LoRA adapter into the weights it adapts and drop it (in place); False if there was none.

    After merging, saving writes the full weights, so the model loads without the base model and a
    new adapter (stage 2) can start from it.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    hf_model = model.hf_model
    if not has_adapter(model):
        return False
    if is_quantized(model):
        raise ValueError("cannot merge a LoRA adapter into 4-bit weights; reload the base unquantised")
    names = [name for name, module in hf_model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = hf_model.get_submodule(parent_name) if parent_name else hf_model
        layer = getattr(parent, child)
        layer.merge()
        setattr(parent, child, layer.get_base_layer())
    if hasattr(hf_model, "peft_config"):
        del hf_model.peft_config
    hf_model._hf_peft_config_loaded = False
    _restore_weight_conversions(hf_model)
    return True


def _restore_weight_conversions(hf_model: Any) -> None:
    """Give a merged model back its own checkpoint key conversions.

    transformers 5 records the key renamings used to load weights on the model
    (``_weight_conversions``) and reverses them when saving. Loading an adapter folder records the
    adapter's renamings (``base_model.model.model.`` to ``model.``, ``lora_A`` to ``lora_A.default``)
    in place of the model's own, so the full weights saved after a merge came out under keys such as
    ``language_base_model.model.model.embed_tokens.weight``, which a reload ignores (random weights,
    no error). The model's own conversions are what its full weights were loaded with and are saved with.
    """
    if getattr(hf_model, "_weight_conversions", None) is None:
        return
    from transformers.conversion_mapping import get_model_conversion_mapping

    hf_model._weight_conversions = get_model_conversion_mapping(hf_model)
