"""UniME embedding models as sentence-transformers models.

A UniME model is ``UniMETransformer -> Pooling("lasttoken") -> Normalize``. The input module does
what UniME adds to the library: it renders each input into the backbone's UniME prompt (the
official strings for Phi-3.5-V and LLaVA-1.6), loads images, and calls the processor; the forward
pass, pooling, saving and training machinery are sentence-transformers'.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import ProcessorMixin

from unime.backbones import Backbone, get_backbone
from unime.config import (
    CONTENT_SLOT,
    INSTRUCTION_SLOT,
    MMEB_IMAGE_PLACEHOLDER,
    MMEB_VIDEO_PLACEHOLDER,
    TEXT_SLOT,
    UniMEConfig,
)
from unime.formats import PROMPTED, InputFormat
from unime.inputs import EmbedInput, load_image, to_input
from unime.io.video import load_video
from unime.model_names import check_model_files, check_model_name
from unime.processors import image_processor_settings, pad_samples
from unime.releases import find_release

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def read_model_type(name_or_path: str, trust_remote_code: bool = False) -> str:
    """The ``model_type`` of a model folder, hub id or LoRA adapter folder, without loading weights.
    The name was checked where it entered (:func:`load_model`, a recipe's ``check_model``)."""
    path = Path(name_or_path)
    if path.is_dir():
        adapter = path / "adapter_config.json"
        if adapter.is_file() and not (path / "config.json").is_file():
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            if not base:
                raise ValueError(f"{adapter}: no base_model_name_or_path, cannot find the base model")
            return read_model_type(base, trust_remote_code)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{name_or_path}: no config.json (not a model folder)")
        model_type = json.loads(config_file.read_text()).get("model_type")
    else:
        if path.exists() or str(name_or_path).startswith((".", "/")):
            raise FileNotFoundError(f"model path not found: {name_or_path}")
        from huggingface_hub import hf_hub_download

        model_type = json.loads(Path(hf_hub_download(str(name_or_path), "config.json")).read_text()).get(
            "model_type"
        )
    if not model_type:
        raise ValueError(f"{name_or_path}: config.json has no model_type")
    return model_type


_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")


def _processor_source(name_or_path: str) -> str:
    """Where the processor lives: the folder itself, or the base model of a bare LoRA adapter folder."""
    path = Path(name_or_path)
    adapter = path / "adapter_config.json"
    if not path.is_dir() or not adapter.is_file() or any((path / f).is_file() for f in _PROCESSOR_FILES):
        return name_or_path
    return json.loads(adapter.read_text()).get("base_model_name_or_path") or name_or_path


class UniMETransformer(Transformer):
    """The sentence-transformers input module of a UniME model.

    Args:
        model_name_or_path: model folder, hub id or LoRA adapter folder.
        unime: a saved :class:`~unime.config.UniMEConfig` as a dict; the family's defaults when None.
        **kwargs: passed to :class:`sentence_transformers.base.modules.Transformer`.
    """

    config_keys = [*Transformer.config_keys, "unime"]

    def __init__(self, model_name_or_path: str, *, unime: dict[str, Any] | None = None, **kwargs: Any) -> None:
        trust = bool((kwargs.get("model_kwargs") or {}).get("trust_remote_code"))
        family = unime["family"] if unime else read_model_type(model_name_or_path, trust)
        backbone = get_backbone(family)
        if backbone.requires_remote_code and not trust:
            raise ValueError(
                f"{model_name_or_path}: the {family} architecture exists only as hub remote code; "
                "load it with trust_remote_code=True (CLI: --trust-remote-code) if you trust the repository"
            )
        check_model_files(model_name_or_path, option="model")
        # Pooling reads the last position itself, so every modality uses the same forward output.
        output = "last_hidden_state" if backbone.transformer_task == "feature-extraction" else ["hidden_states", -1]
        entry = {"method": "forward", "method_output_name": output}
        kwargs.pop("transformer_task", None)
        kwargs.setdefault("modality_config", {"text": dict(entry), "image": dict(entry)})
        kwargs.setdefault("module_output_name", "token_embeddings")
        kwargs.setdefault("unpad_inputs", False)
        processor_source = _processor_source(model_name_or_path)
        if processor_source != model_name_or_path:
            kwargs.setdefault("tokenizer_name_or_path", processor_source)
        super().__init__(model_name_or_path, transformer_task=backbone.transformer_task, **kwargs)
        self.backbone: Backbone = backbone
        self._ensure_image_processor(processor_source, kwargs.get("processor_kwargs") or {})
        self.unime_config = (
            UniMEConfig.from_dict(unime) if unime else backbone.default_config(self.processor)
        )
        # How inputs are rendered (the UniME prompts by default); set by benchmarks and training,
        # never saved: a loaded model embeds with its prompts and its processor's own image size.
        self.input_format: InputFormat = PROMPTED
        # The side the folder's tokenizer pads on (VLM2Vec pads with it); the saved side replaces it.
        self.tokenizer_padding_side: str = self.tokenizer.padding_side
        self.tokenizer.padding_side = self.unime_config.padding_side

    def train(self, mode: bool = True) -> UniMETransformer:
        super().train(mode)
        if mode:
            # Frozen BatchNorm layers (the seeing default's MobileNetV2 tower) keep normalising with
            # their running statistics: in train mode they would use each mini-batch's own, so
            # GradCache's chunked forwards would differ from a whole-batch one, and training would
            # overwrite the ImageNet statistics that the frozen weights expect.
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters(recurse=False)
                ):
                    module.eval()
        return self

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # A model loaded in bf16/fp16 gets its pixel tensors in that dtype: the processors return
        # float32, and not every architecture casts them itself (FastVLM's MobileNetV2 tower does not).
        dtype = self.model.dtype
        if dtype in (torch.bfloat16, torch.float16):
            kwargs = {**{key: value.to(dtype) for key, value in features.items()
                         if torch.is_tensor(value) and value.is_floating_point() and value.dtype != dtype},
                      **kwargs}
        return super().forward(features, **kwargs)

    @property
    def unime(self) -> dict[str, Any]:
        # Read by get_config_dict through config_keys: the settings travel in sentence_bert_config.json.
        return self.unime_config.to_dict()

    def _ensure_image_processor(self, path: str, processor_kwargs: dict[str, Any]) -> None:
        if isinstance(self.processor, ProcessorMixin) and hasattr(self.processor, "image_processor"):
            return
        if self.backbone.image_only_processor is None:
            raise ValueError(f"{path}: the processor has no image processor; images cannot be embedded")
        module_name, class_name = self.backbone.image_only_processor.rsplit(".", 1)
        processor_class = getattr(importlib.import_module(module_name), class_name)
        kwargs = {k: v for k, v in processor_kwargs.items() if k != "trust_remote_code"}
        self.processor = processor_class.from_pretrained(path, **kwargs)
        logger.debug("using %s (the family's processor could not be built)", class_name)

    @property
    def modalities(self) -> list[Any]:
        return list(self.modality_config)

    def set_input_format(self, input_format: InputFormat | None) -> None:
        """Use ``input_format`` (None: :data:`~unime.formats.PROMPTED`) from now on; never saved."""
        self.input_format = input_format or PROMPTED
        side = self.input_format.padding_side or self.unime_config.padding_side
        self.tokenizer.padding_side = self.tokenizer_padding_side if side == "tokenizer" else side

    def render(self, item: EmbedInput, where: str = "input") -> tuple[str, list[Any]]:
        """The prompt and the images of one input, in the current input format (the backbone's
        UniME prompts unless a raw format is set). A video's frames are among the images where
        the family takes them as images; a video for a native video path needs :meth:`render_media`."""
        prompt, images, videos = self.render_media(item, where)
        if videos:
            raise ValueError(f"{where}: a video for the {self.backbone.family} video path: use render_media")
        return prompt, images

    def render_media(self, item: EmbedInput, where: str = "input") -> tuple[str, list[Any], list[list[Any]]]:
        """The prompt, the images and the videos (each a list of sampled RGB frames) of one input,
        in the current input format. A video is rendered by the backbone's
        :meth:`~unime.backbones.base.Backbone.video_placeholder`: its video token with the frames as
        one video (native), or one image token per frame with the frames as images; it stands
        where an image would (alone: the image prompt; with an instruction or a text: first)."""
        config, token = self.unime_config, self.backbone.image_token
        if self.input_format.style == "raw":
            return self._render_raw(item, where)
        text = item.text.replace(MMEB_IMAGE_PLACEHOLDER, token) if item.text is not None else None
        images, videos, visual = self._media(item, where, raw=False)
        placeholders = text.count(token) if text else 0
        if placeholders > (1 if item.has_image else 0):
            raise ValueError(f"{where}: the text refers to an image ({token!r}) but no image was given")
        if item.has_visual and item.has_text and config.mode == "sum":
            raise ValueError(
                f"{where}: in 'sum' mode text and image are embedded separately; use UniMEModel.encode, "
                "or set the model's mode to 'joint'"
            )
        if config.instruction_in_prompt:
            return self._render_instruction_slot(item, text, placeholders, visual), images, videos
        if not item.has_visual and item.instruction is None:
            return config.text_prompt.replace(TEXT_SLOT, text), images, videos
        if not item.has_text and item.instruction is None:
            if item.has_video:
                if config.image_prompt.count(token) != 1:
                    raise ValueError(f"{where}: the model's image prompt does not hold one {token!r} for a video "
                                     "to take its place")
                return config.image_prompt.replace(token, visual), images, videos
            return config.image_prompt, images, videos
        parts = []
        if item.has_visual and placeholders == 0:
            parts.append(visual)
        if item.instruction:
            parts.append(item.instruction)
        if item.has_text:
            parts.append(text)
        return config.joint_prompt.replace(CONTENT_SLOT, config.content_separator.join(parts)), images, videos

    def _media(self, item: EmbedInput, where: str, raw: bool) -> tuple[list[Any], list[list[Any]], str]:
        """The images, the videos and the prompt text that stands for the input's image or video."""
        backbone = self.backbone
        if not item.has_video:
            return self._images(item, where), [], backbone.raw_image_token if raw else backbone.image_token
        frames_count = self.unime_config.video_frames
        try:
            visual = backbone.video_placeholder(frames_count, raw=raw)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        frames = load_video(item.video, frames_count, where)
        resize = self.input_format.image_resize
        if resize is not None:
            # A frame is an image: a format's resize (training's image_size) applies to it too.
            from unime.io.images import to_rgb

            frames = [to_rgb(resize(frame)) for frame in frames]
        if backbone.video_rendering == "native":
            return [], [frames], visual
        return frames, [], visual


    def _render_instruction_slot(self, item: EmbedInput, text: str | None, placeholders: int, visual: str) -> str:
        """Prompts with an ``<instruction>`` slot (Qwen3-VL-Embedding's system turn): the input's
        instruction, or the default one, goes there, never into the content. ``visual`` is what stands
        for the image or the video (the image token, or the backbone's video placeholder)."""
        config = self.unime_config
        token = self.backbone.image_token
        if not item.has_visual:
            prompt, slot, content = config.text_prompt, TEXT_SLOT, text
        elif not item.has_text:
            prompt, slot, content = config.image_prompt.replace(token, visual), None, None
        else:
            parts = ([visual] if placeholders == 0 else []) + [text]
            prompt, slot, content = config.joint_prompt, CONTENT_SLOT, config.content_separator.join(parts)
        # Each slot of the saved prompt is filled once: text that happens to contain a slot name stays as it is.
        pieces = prompt.split(INSTRUCTION_SLOT)
        if slot is not None:
            pieces = [piece.replace(slot, content) for piece in pieces]
        return config.slot_instruction(item.instruction).join(pieces)

    def _images(self, item: EmbedInput, where: str) -> list[Any]:
        # The saved unime_config.image_size is the training size, not applied here: inference
        # resizes only when the input format asks (docs/evaluation.md, "Image size").
        input_format = self.input_format
        return ([load_image(item.image, where, resize=input_format.image_resize, orient=input_format.exif_orientation)]
                if item.has_image else [])

    def _render_raw(self, item: EmbedInput, where: str) -> tuple[str, list[Any], list[list[Any]]]:
        """VLM2Vec's input: the text as it is, ``<|image_1|>`` replaced by the bare image token (a
        video: the bare video token, or one bare image token per frame)."""
        token = self.backbone.raw_image_token
        text = item.text
        images, videos, visual = self._media(item, where, raw=True)
        inline_video = bool(text) and MMEB_VIDEO_PLACEHOLDER in text
        if inline_video:
            # VLM2Vec-V2 writes the video token inside the text ("<|video_pad|> instruction").
            if not item.has_video or text.count(MMEB_VIDEO_PLACEHOLDER) > 1:
                raise ValueError(f"{where}: the text holds {MMEB_VIDEO_PLACEHOLDER!r} "
                                 + ("more than once" if item.has_video else "but no video was given"))
            text = text.replace(MMEB_VIDEO_PLACEHOLDER, visual)
        text = text.replace(MMEB_IMAGE_PLACEHOLDER, token) if text else None
        placeholders = text.count(token) if text and not inline_video else 0
        if placeholders > (1 if item.has_image else 0):
            raise ValueError(f"{where}: the text refers to an image ({token!r}) but no image was given")
        parts = []
        if item.has_visual and placeholders == 0 and not inline_video:
            # MMEB texts always carry the placeholder; an image given without one goes first.
            parts.append(visual)
        if item.instruction:
            parts.append(item.instruction)
        if text:
            parts.append(text)
        return "\n".join(parts), images, videos

    def processor_calls(
        self, inputs: Sequence[Any], prompt: str | None = None, item_names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One processor call per input, as a sample processed alone would get it: ``text`` (one
        string), ``images`` (a list, absent for a text), ``videos`` (a list of frame lists, for a
        video on a native video path), and the input format's ``max_length`` /
        ``truncation`` and extra arguments. ``prompt`` acts as a default instruction."""
        input_format = self.input_format
        common: dict[str, Any] = dict(input_format.processor_kwargs)
        if input_format.max_length is not None:
            common.update(max_length=input_format.max_length, truncation=True)
        calls = []
        for index, raw in enumerate(inputs):
            where = item_names[index] if item_names is not None else f"input {index}"
            item = to_input(raw, where=where)
            if prompt and item.instruction is None:
                item = EmbedInput(text=item.text, image=item.image, instruction=prompt, video=item.video)
            text, images, videos = self.render_media(item, where=where)
            call = {"text": text, **common}
            if images:
                call["images"] = images
            if videos:
                call["videos"] = videos
            calls.append(call)
        return calls

    def preprocess(
        self, inputs: Sequence[Any], prompt: str | None = None, item_names: Sequence[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Render, load images and run the processor. ``prompt`` acts as a default instruction;
        ``item_names`` name the inputs in error messages (their position in the caller's list)."""
        if not inputs:
            return {}
        with image_processor_settings(self.processor, self.input_format.image_processor_settings):
            calls = self.processor_calls(inputs, prompt, item_names)
            self._fit_images(calls)
            if self.backbone.one_sample_per_call:
                features = self._process_one_by_one(calls)
            else:
                features = self._process_batch(calls)
        counts = [len(call.get("images", ())) for call in calls]
        video_counts = [len(call.get("videos", ())) for call in calls]
        if any(video_counts):
            # Lets the GradCache engine slice pixel_values_videos / video_grid_thw per mini-batch.
            features["num_videos_per_sample"] = torch.tensor(video_counts, dtype=torch.long)
            seconds = features.pop("second_per_grid_ts", None)
            if seconds is not None and not torch.allclose(torch.as_tensor(seconds, dtype=torch.float32),
                                                          torch.tensor(1.0)):
                # One value per video, which the engine would slice per row; the values are all the
                # same (QWEN_SAMPLED_FPS), so the whole list serves any mini-batch.
                features["second_per_grid_ts"] = [float(x) for x in torch.as_tensor(seconds)]
        if any(counts):
            # Lets the GradCache engine slice image tensors per mini-batch.
            features["num_images_per_sample"] = torch.tensor(counts, dtype=torch.long)
            if "batch_num_images" in features:
                # LLaVA-OneVision's processor lists only the rows that have images, which the
                # engine would slice per row; one entry per row (zeros included) slices correctly.
                features["batch_num_images"] = features["num_images_per_sample"].clone()
        if self.input_format.sequential_positions and "mm_token_type_ids" in features:
            # Every token typed as text: the model's RoPE index then numbers image tokens like text.
            features["mm_token_type_ids"] = torch.zeros_like(features["mm_token_type_ids"])
        features["modality"] = "image" if any(counts) or any(video_counts) else "text"
        if self.transformer_task in ("text-generation", "any-to-any"):
            features["logits_to_keep"] = 1
        return features

    def _fit_images(self, calls: list[dict[str, Any]]) -> None:
        """Resize each call's images to the size the processor gives them, where that gives its
        pixels exactly (:meth:`unime.backbones.base.Backbone.fit_image`; a speed step only).
        Runs with the format's image processor settings in place; call-time processor arguments
        could change the size rule, so calls that carry any are left alone."""
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None or self.input_format.processor_kwargs:
            return
        for call in calls:
            if "images" in call:
                call["images"] = [self.backbone.fit_image(image, image_processor) for image in call["images"]]

    def _process_batch(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """All samples in one processor call (padding on the tokenizer's side)."""
        batch = {key: value for key, value in calls[0].items() if key not in ("text", "images", "videos")}
        batch.update(text=[call["text"] for call in calls], padding=True, return_tensors="pt")
        images = [image for call in calls for image in call.get("images", ())]
        if images:
            batch["images"] = images
            image_processor = getattr(self.processor, "image_processor", None)
            if ("batch_num_images" in getattr(image_processor, "model_input_names", ())
                    and any(len(call.get("images", ())) > 1 for call in calls)):
                # LLaVA-OneVision counts a row's images from the nesting: several images in one row
                # (a video's frames) are embedded at base resolution, one image alone with anyres.
                batch["images"] = [call["images"] for call in calls if call.get("images")]
        videos = [video for call in calls for video in call.get("videos", ())]
        if videos:
            # Frames already sampled (docs/video.md): the processor's own sampling stays off.
            batch.update(videos=videos, do_sample_frames=False)
        return dict(self.processor(**batch))

    def _process_one_by_one(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """Each sample in its own processor call, then padded together (Phi-3.5-V)."""
        samples = [dict(self.processor(**call, return_tensors="pt")) for call in calls]
        tokenizer = self.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return pad_samples(samples, pad_id if pad_id is not None else 0, tokenizer.padding_side)


def has_adapter(model: Any) -> bool:
    """Whether a UniME model's transformers model carries a (peft) adapter not yet merged into it."""
    return bool(getattr(model[0].model, "_hf_peft_config_loaded", False))


def preprocess_workers() -> int:
    """Threads that prepare batches during ``encode``: ``UNIME_PREPROCESS_WORKERS``, else the CPU count (at most 8)."""
    value = os.environ.get("UNIME_PREPROCESS_WORKERS")
    if value is not None:
        try:
            workers = int(value)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ValueError(f"UNIME_PREPROCESS_WORKERS must be a positive integer, got {value!r}")
        return workers
    return max(1, min(8, os.cpu_count() or 1))


def forward_threads(threads: int, forward_seconds: float, prepare_seconds: float) -> int:
    """Torch threads for the forward passes of a CPU ``encode`` whose batches are prepared in worker
    threads: the cores split by each side's CPU time a batch (the forward's measured with ``threads``
    threads, the preparation's in one thread), never more than ``threads`` nor fewer than one. When
    preparation is the larger part (VLM2Vec's 1344 px images on a tiny model), idle OpenMP threads
    spinning between small forwards would take the cores the preparing threads need."""
    forward_cpu = forward_seconds * threads
    if forward_cpu + prepare_seconds <= 0:
        return threads
    share = forward_cpu / (forward_cpu + prepare_seconds)
    return max(1, min(threads, round(threads * share)))


# encode arguments the prefetching loop handles; any other argument takes sentence-transformers' loop.
_PREFETCH_KWARGS = frozenset({"batch_size", "show_progress_bar", "convert_to_numpy", "convert_to_tensor", "device"})


def _length(item: EmbedInput) -> int:
    """Sort key for batching: similar lengths share a batch (less padding)."""
    return (len(item.text) if item.text else 0) + (len(item.instruction) if item.instruction else 0) + (
        1000 if item.has_image else 0
    ) + (8000 if item.has_video else 0)


class UniMEModel(SentenceTransformer):
    """A sentence-transformers model whose ``encode`` embeds texts, images and both, the UniME way.

    ``encode`` accepts strings (texts), PIL images and dicts with ``text`` / ``image`` (PIL image or
    path) / ``instruction``, and returns unit-norm float32 rows. In ``sum`` mode an input with both
    text and image is the normalised sum of its two embeddings.
    """

    _module_classes = {"unime.modeling.UniMETransformer": UniMETransformer}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Facts for the model card (base_model, datasets, recipe, results), set by training and evaluation.
        self.card_info: dict[str, Any] = {}

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Save weights (or the LoRA adapter), processor, UniME settings and a README model card."""
        from unime.model_card import render_model_card

        kwargs["create_model_card"] = False
        super().save(path, *args, **kwargs)
        card = render_model_card(self.unime_config, self.card_info, model_id=str(path))
        Path(path, "README.md").write_text(card, encoding="utf-8")

    @property
    def unime_config(self) -> UniMEConfig:
        """Every setting needed to reproduce an embedding (saved with the model); change it with
        :meth:`update_config`."""
        return self[0].unime_config

    @unime_config.setter
    def unime_config(self, config: UniMEConfig) -> None:
        if not isinstance(config, UniMEConfig):
            raise TypeError(f"unime_config must be a UniMEConfig, got {type(config).__name__}")
        self[0].unime_config = config

    def update_config(self, **changes: Any) -> UniMEConfig:
        """Replace settings of :attr:`unime_config` (validated as a whole, as when loading) and
        return the new config, e.g. ``model.update_config(mode="joint", stages=[..., "tune"])``."""
        allowed = {field.name for field in dataclasses.fields(UniMEConfig)} - {"extra"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ValueError(f"unknown unime config settings {unknown}")
        config = UniMEConfig.from_dict({**self.unime_config.to_dict(), **changes})
        self[0].unime_config = config
        return config

    @property
    def hf_model(self) -> Any:
        """The transformers model inside (a peft model once adapters are attached); replace it with
        :meth:`set_hf_model`."""
        return self[0].model

    def set_hf_model(self, model: Any) -> None:
        """Put another transformers model inside (e.g. the base of a captioning model sharing its
        weights), or None to free the current one. A method, not an assignment: torch's
        ``Module.__setattr__`` would register an assigned module as a new child instead."""
        self[0].model = model

    @property
    def has_adapter(self) -> bool:
        """Whether the transformers model carries a (peft) adapter not yet merged into it."""
        return has_adapter(self)

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        # The input module renders any mix of texts, images and both in one batch; the library's
        # modality check in between would refuse mixed batches (e.g. a training column of MMEB rows).
        return self[0].preprocess(inputs, prompt=prompt, **kwargs)

    @property
    def backbone(self) -> Backbone:
        return self[0].backbone

    @property
    def input_format(self) -> InputFormat:
        """How inputs are rendered now (:mod:`unime.formats`); :data:`~unime.formats.PROMPTED` after loading."""
        return self[0].input_format

    def set_input_format(self, input_format: InputFormat | None) -> None:
        """Render inputs in ``input_format`` from now on (None: the UniME prompts); not saved."""
        self[0].set_input_format(input_format)

    @contextmanager
    def using_format(self, input_format: InputFormat | None) -> Iterator[UniMEModel]:
        """``with model.using_format(vlm2vec_format("llava_next")): model.encode(...)``; the
        previous format is restored afterwards."""
        previous = self.input_format
        self.set_input_format(input_format)
        try:
            yield self
        finally:
            self.set_input_format(previous)

    @torch.inference_mode()
    def _encode_prefetched(
        self,
        items: list[EmbedInput],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
    ) -> Any:
        """``encode`` with the preprocessing of the next batches (image decoding, resizing, processor)
        running in worker threads while the current batch's forward pass runs: MLLM preprocessing
        is CPU work that would otherwise leave the accelerator idle, and on a CPU it is often the
        larger part (a VLM2Vec-resized 1344 px image costs more to prepare than a small model takes
        to embed it). PIL and the image processors release the GIL, so the threads use every core.
        Same batches, same results as the sentence-transformers loop. ``UNIME_PREPROCESS_WORKERS``
        sets the number of threads (default: the CPU count, at most 8)."""
        from sentence_transformers.util import batch_to_device
        from tqdm.auto import tqdm

        self.eval()
        device = device or self.device
        order = np.argsort([-_length(item) for item in items], kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(items), batch_size)]
        outputs: list[torch.Tensor | None] = [None] * len(items)
        progress = tqdm(total=len(batches), desc="Batches", disable=not show_progress_bar)
        workers = preprocess_workers()
        ahead = workers + 1  # batches being prepared while one is embedded

        def prepare(batch: np.ndarray) -> dict[str, Any]:
            return self.preprocess([items[i] for i in batch], item_names=[f"input {i}" for i in batch])

        threads = torch.get_num_threads()
        on_cpu = torch.device(device).type == "cpu"
        with ThreadPoolExecutor(max_workers=workers) as pool, self._image_settings():
            # The first batch is prepared alone: its processor call settles the tokenizer's padding and
            # truncation state, which later calls (the same settings) then only read, never write.
            first: Future[dict[str, Any]] = Future()
            prepare_seconds = 0.0
            if batches:
                started = time.perf_counter()
                first.set_result(prepare(batches[0]))
                prepare_seconds = time.perf_counter() - started
            pending = deque([first, *(pool.submit(prepare, batch) for batch in batches[1:ahead])])
            try:
                for index, batch in enumerate(batches):
                    features = pending.popleft().result()
                    if index + ahead < len(batches):
                        pending.append(pool.submit(prepare, batches[index + ahead]))
                    started = time.perf_counter()
                    embeddings = self(batch_to_device(features, device))["sentence_embedding"]
                    for position, row in zip(batch, embeddings.float().cpu(), strict=True):
                        outputs[position] = row
                    if index == 1 and on_cpu:
                        # Measured on the second batch (the first pays one-time costs).
                        torch.set_num_threads(forward_threads(threads, time.perf_counter() - started, prepare_seconds))
                    progress.update(1)
            finally:
                torch.set_num_threads(threads)
        progress.close()
        stacked = torch.stack(outputs) if outputs else torch.empty(0)
        if convert_to_tensor:
            return stacked
        return stacked.numpy().astype(np.float32) if convert_to_numpy else list(stacked)

    @contextmanager
    def _image_settings(self) -> Iterator[None]:
        """The input format's image processor settings held for a whole encode (the threads' calls nest)."""
        module = self[0]
        with image_processor_settings(module.processor, module.input_format.image_processor_settings):
            yield

    def set_mode(self, mode: str) -> None:
        """Switch between ``sum`` and ``joint`` for inputs with both text and image (saved with the model)."""
        self.update_config(mode=mode)

    @property
    def dimensions(self) -> int | None:
        """The embedding size ``encode`` returns when truncated (Matryoshka), or None for the full size."""
        return getattr(self, "_unime_dimensions", None)

    def set_dimensions(self, dimensions: int | None) -> None:
        """Return the first ``dimensions`` values of every embedding from now on, L2-normalised again
        when the model normalises (None: the full size). A size above the model's width is an error;
        a size that training did not optimise (``unime_config.matryoshka_dims``) works with a warning:
        the leading values of an embedding trained only at full size carry less of it."""
        import warnings

        full = super().get_embedding_dimension()  # the model's width: this class's override not applied
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0:
                raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
            if full is not None and dimensions > full:
                raise ValueError(f"dimensions {dimensions} exceeds the model's embedding size {full}")
            trained = self.unime_config.matryoshka_dims
            if dimensions != full and (not trained or dimensions not in trained):
                known = f"trained sizes: {', '.join(map(str, trained))}" if trained else "trained at full size only"
                warnings.warn(f"dimensions {dimensions} was not optimised in training ({known}); truncated embeddings "
                              "of such a size usually retrieve worse than a trained one", UserWarning, stacklevel=2)
            if dimensions == full:
                dimensions = None
        self._unime_dimensions = dimensions

    def get_embedding_dimension(self) -> int | None:  # type: ignore[override]
        return self.dimensions or super().get_embedding_dimension()

    def _truncated(self, result: Any) -> Any:
        """``result`` (an array, a tensor or a list of them) cut to :attr:`dimensions` and renormalised."""
        size = self.dimensions
        if size is None:
            return result
        if isinstance(result, list):
            return [self._truncated(item) for item in result]
        cut = result[..., :size]
        if not self.unime_config.normalize:
            return cut
        if isinstance(result, torch.Tensor):
            return torch.nn.functional.normalize(cut, dim=-1)
        norm = np.linalg.norm(cut, axis=-1, keepdims=True)
        return (cut / np.maximum(norm, 1e-12)).astype(cut.dtype, copy=False)

    def encode(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.dimensions is None:
            return self._encode_full(inputs, *args, **kwargs)
        if kwargs.get("truncate_dim") is not None:
            raise ValueError("truncate_dim and the model's dimensions setting both given: use one")
        with self.truncate_embeddings(None):  # the full embedding first: truncation comes last
            return self._truncated(self._encode_full(inputs, *args, **kwargs))

    def _encode_full(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """:meth:`encode` at the model's full width."""
        single = not isinstance(inputs, (list, tuple))
        items = [to_input(x, where=f"input {i}") for i, x in enumerate([inputs] if single else inputs)]
        # A raw input format (VLM2Vec) embeds every input as one sequence, whatever the saved mode.
        one_sequence = self.unime_config.mode != "sum" or self.input_format.style == "raw"
        if one_sequence or not any(x.has_visual and x.has_text for x in items):
            if not args and set(kwargs) <= _PREFETCH_KWARGS and self._distributed_inference is None:
                result = self._encode_prefetched(items, **kwargs)
            else:
                result = super().encode(items, *args, **kwargs)
            return result[0] if single else result
        # Sum mode: each part with its own prompt, then the normalised sum (the paper's stage-1 inference).
        flat: list[EmbedInput] = []
        owner: list[int] = []
        for index, item in enumerate(items):
            parts = [item]
            if item.has_visual and item.has_text:
                # The image (or video) is embedded on its own, so its placeholder leaves the text.
                text = item.text.replace(MMEB_IMAGE_PLACEHOLDER, "").strip() or None
                image_part = EmbedInput(image=item.image, video=item.video)
                parts = [image_part] if text is None else [EmbedInput(text=text, instruction=item.instruction), image_part]
            flat.extend(parts)
            owner.extend([index] * len(parts))
        want_tensor = kwargs.pop("convert_to_tensor", False)
        kwargs["convert_to_numpy"] = False
        parts = super().encode(flat, *args, convert_to_tensor=True, **kwargs).float()
        summed = torch.zeros(len(items), parts.shape[1], dtype=parts.dtype, device=parts.device)
        summed.index_add_(0, torch.tensor(owner, device=parts.device), parts)
        if self.unime_config.normalize:
            summed = torch.nn.functional.normalize(summed, dim=-1)
        result: Any = summed if want_tensor else summed.cpu().numpy().astype(np.float32)
        return result[0] if single else result


def build_model(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    unime: dict[str, Any] | None = None,
) -> UniMEModel:
    """Wrap a HF MLLM folder / hub id / LoRA adapter folder as a new UniME model."""
    model_kwargs = dict(model_kwargs or {})
    if dtype is not None:
        model_kwargs["dtype"] = _DTYPES[dtype]
    if trust_remote_code:
        model_kwargs["trust_remote_code"] = True
    module = UniMETransformer(
        name_or_path,
        unime=unime,
        model_kwargs=model_kwargs,
        processor_kwargs={"trust_remote_code": True} if trust_remote_code else {},
        config_kwargs={"trust_remote_code": True} if trust_remote_code else {},
    )
    pooling = Pooling(module.get_embedding_dimension(), pooling_mode="lasttoken")
    modules = [module, pooling] + ([Normalize()] if module.unime_config.normalize else [])
    return UniMEModel(modules=modules, device=device)


def _set_pixel_bounds(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Resize images to between ``min_pixels`` and ``max_pixels`` (a Qwen-VL image processor's ``size``)."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if isinstance(size, dict) and "shortest_edge" in size:
        image_processor.size = {**size, "shortest_edge": min_pixels, "longest_edge": max_pixels}
    elif dataclasses.is_dataclass(size) and hasattr(size, "shortest_edge"):  # transformers' SizeDict
        image_processor.size = dataclasses.replace(size, shortest_edge=min_pixels, longest_edge=max_pixels)
    else:
        raise ValueError(f"{type(image_processor).__name__} has no pixel bounds to set")


def load_model(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    mode: str | None = None,
    **kwargs: Any,
) -> UniMEModel:
    """See :func:`unime.load`."""
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if dtype == "auto":  # the device's rule: bf16 where its kernels are native, else float32
        from unime.environment import compute_dtype

        dtype = compute_dtype(device)
    check_model_name(str(name_or_path), option="model", files=False)
    path = Path(name_or_path)
    if (path / "modules.json").is_file():
        modules = json.loads((path / "modules.json").read_text())
        if not modules or modules[0].get("type") != "unime.modeling.UniMETransformer":
            raise ValueError(f"{name_or_path}: modules.json does not describe a unime model")
        model_kwargs = dict(kwargs.pop("model_kwargs", {}) or {})
        if dtype is not None:
            model_kwargs["dtype"] = _DTYPES[dtype]
        model = UniMEModel(
            str(path), device=device, trust_remote_code=trust_remote_code, model_kwargs=model_kwargs, **kwargs
        )
    else:
        release = find_release(str(name_or_path))
        if release is not None and kwargs.get("unime") is None and release.unime_config() is not None:
            model_type = read_model_type(str(name_or_path), trust_remote_code)
            if model_type != release.family:
                raise ValueError(f"{name_or_path}: named as {release.hub_id}, a {release.family} model, but its "
                                 f"config says {model_type}")
            kwargs["unime"] = release.unime_config()
        model = build_model(name_or_path, trust_remote_code=trust_remote_code, device=device, dtype=dtype, **kwargs)
        if release is not None and release.image_pixels is not None:
            _set_pixel_bounds(model[0].processor, *release.image_pixels)
        if mode is None and release is not None:
            # Released checkpoints embed text and image as one sequence (UniME's are stage-2 models).
            mode = release.mode
    if mode is not None:
        model.set_mode(mode)
    return model
