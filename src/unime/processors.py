"""Processor helpers: image-only processors, and batching samples processed one at a time.

Image-only processors, for families whose processor also owns a video processor.

Without torchvision the video processors of Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision cannot be
built, and ``AutoProcessor`` then silently returns the bare tokenizer: the model would accept text
only, with no error. These subclasses leave the video slot empty (LLaVA-OneVision) or fill it with
:class:`QwenFramesVideoProcessor` (Qwen2-VL, Qwen2.5-VL), which prepares already sampled frames with
the image processor's PIL steps in the layout of transformers' ``Qwen2VLVideoProcessor``; it is
not saved (the processor's saved attributes are the image processor and the tokenizer).
``from_pretrained`` reads the argument names of ``__init__``, hence the explicit signatures.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LlavaOnevisionProcessor, Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor

#: The frame rate Qwen2.5-VL's temporal positions assume for a video's sampled frames (the
#: reference's default, 2 per second: ``second_per_grid_ts`` = temporal_patch_size / 2 = 1.0).
#: Frames lists carry no times, so files and lists of the same frames embed alike (docs/video.md).
QWEN_SAMPLED_FPS = 2.0


class QwenFramesVideoProcessor:
    """Qwen2-VL's video preprocessing for videos given as already sampled PIL frames, without
    torchvision: each frame resized with PIL to the size ``smart_resize`` gives the first frame
    (the image processor's ``size``, patch and merge sizes, resample filter), rescaled and
    normalised with its mean and std, the frame count padded to a multiple of
    ``temporal_patch_size`` by repeating the last frame, and patchified in the layout of
    transformers' ``Qwen2VLVideoProcessor.patchify``: ``pixel_values_videos`` (patches, C * T * P * P)
    and ``video_grid_thw`` (one row per video). The image processor is read at call time, so an
    input format's image settings apply to frames too."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    @property
    def merge_size(self) -> int:
        return self.image_processor.merge_size

    @property
    def temporal_patch_size(self) -> int:
        return self.image_processor.temporal_patch_size

    def __call__(self, videos: Any, return_tensors: Any = None, **kwargs: Any) -> Any:
        import numpy as np
        from transformers import BatchFeature
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        from transformers.video_utils import VideoMetadata

        processor = self.image_processor
        patch, merge, temporal = processor.patch_size, processor.merge_size, processor.temporal_patch_size
        mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(processor.image_std, dtype=np.float32).reshape(1, -1, 1, 1)
        all_patches, grids, metadata = [], [], []
        for frames in videos:
            if not frames or not all(hasattr(frame, "resize") for frame in frames):
                raise ValueError("each video must be a non-empty list of PIL frames (sampled by unime)")
            width, height = frames[0].size
            if processor.do_resize:
                height, width = smart_resize(height, width, factor=patch * merge,
                                             min_pixels=processor.size["shortest_edge"],
                                             max_pixels=processor.size["longest_edge"])
            stack = np.stack([
                np.asarray(frame.convert("RGB") if frame.size == (width, height)
                           else frame.convert("RGB").resize((width, height), processor.resample), dtype=np.float32)
                for frame in frames
            ]).transpose(0, 3, 1, 2)  # T, C, H, W
            if processor.do_rescale:
                stack = stack * np.float32(processor.rescale_factor)
            if processor.do_normalize:
                stack = (stack - mean) / std
            if pad := -len(frames) % temporal:
                stack = np.concatenate([stack, np.repeat(stack[-1:], pad, axis=0)])
            count, channel = stack.shape[:2]
            grid_t, grid_h, grid_w = count // temporal, height // patch, width // patch
            patches = stack.reshape(grid_t, temporal, channel, grid_h // merge, merge, patch, grid_w // merge,
                                    merge, patch)
            patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
            all_patches.append(patches.reshape(grid_t * grid_h * grid_w, channel * temporal * patch * patch))
            grids.append([grid_t, grid_h, grid_w])
            metadata.append(VideoMetadata(total_num_frames=len(frames), fps=QWEN_SAMPLED_FPS,
                                          frames_indices=list(range(len(frames)))))
        data = {"pixel_values_videos": np.concatenate(all_patches).astype(np.float32),
                "video_grid_thw": np.asarray(grids, dtype=np.int64)}
        features = BatchFeature(data=data, tensor_type=return_tensors)
        features["video_metadata"] = metadata
        return features


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)
        self.video_processor = QwenFramesVideoProcessor(image_processor)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)
        self.video_processor = QwenFramesVideoProcessor(image_processor)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: Any = None,
        image_token: str = "<image>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            video_processor=None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


_SETTINGS_LOCK = threading.Lock()


@contextmanager
def image_processor_settings(processor: Any, settings: Any) -> Iterator[None]:
    """Set attributes of the processor's image processor for the duration of a ``with`` block.

    Safe when several threads preprocess batches at once (``UniMEModel.encode`` does): the first
    block to enter sets the values, the last to leave restores the previous ones, so no thread
    restores them while another is still inside. All blocks open at once must ask for the same
    settings (one input format at a time); a different request raises."""
    target = getattr(processor, "image_processor", None)
    if not settings or target is None:
        yield
        return
    wanted = dict(settings)
    with _SETTINGS_LOCK:
        state = target.__dict__.get("_unime_settings")
        if state is None:
            previous = {name: getattr(target, name, None) for name in wanted}
            for name, value in wanted.items():
                setattr(target, name, value)
            state = target.__dict__["_unime_settings"] = {"wanted": wanted, "previous": previous, "open": 0}
        elif state["wanted"] != wanted:
            raise RuntimeError(f"image processor settings {wanted} requested while {state['wanted']} are in use")
        state["open"] += 1
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            state["open"] -= 1
            if state["open"] == 0:
                for name, value in state["previous"].items():
                    setattr(target, name, value)
                del target.__dict__["_unime_settings"]


def pad_samples(samples: Sequence[dict[str, Any]], pad_token_id: int, padding_side: str) -> dict[str, Any]:
    """Batch samples processed one at a time: ``input_ids`` and ``attention_mask`` padded to the
    longest row on ``padding_side`` (pad id, mask 0), every other tensor concatenated along its
    first dimension over the samples that have it (image tensors: one entry per image, in row order)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [sample["input_ids"].reshape(-1) for sample in samples]
    masks = [
        sample["attention_mask"].reshape(-1) if "attention_mask" in sample else torch.ones_like(row)
        for sample, row in zip(samples, rows, strict=True)
    ]
    longest = max(row.numel() for row in rows)
    ids, attention = [], []
    for row, mask in zip(rows, masks, strict=True):
        pad = longest - row.numel()
        fill_ids = torch.full((pad,), pad_token_id, dtype=row.dtype)
        fill_mask = torch.zeros(pad, dtype=mask.dtype)
        pieces = ((fill_ids, row), (fill_mask, mask)) if padding_side == "left" else ((row, fill_ids), (mask, fill_mask))
        ids.append(torch.cat(pieces[0]))
        attention.append(torch.cat(pieces[1]))
    features: dict[str, Any] = {"input_ids": torch.stack(ids), "attention_mask": torch.stack(attention)}
    keys = [key for sample in samples for key in sample if key not in ("input_ids", "attention_mask")]
    for key in dict.fromkeys(keys):
        values = [sample[key] for sample in samples if key in sample]
        features[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else [v for x in values for v in x]
    return features
