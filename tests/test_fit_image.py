"""``Backbone.fit_image``: resizing an image to the processor's size before the processor gives the
processor's pixels exactly (a speed path, never a change of numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import unime
from unime.formats import vlm2vec_format


def _photo(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth content with edges, so resampling filters see real gradients, not only noise.
    y, x = np.mgrid[0:height, 0:width]
    base = (127 + 60 * np.sin(x / 7.0) + 60 * np.cos(y / 5.0)).astype(np.float64)
    pixels = np.stack([base, base[::-1], base[:, ::-1]], axis=-1) + rng.normal(0, 8, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.convert(mode) if mode != "RGB" else image


SIZES = [(1344, 1344), (375, 500), (20, 30), (56, 56), (900, 60), (28, 700)]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_fitted_images_give_the_processors_pixels(tiny_model_factory, family):
    model = unime.load(str(tiny_model_factory(family)))
    module = model[0]
    image_processor = module.processor.image_processor
    # The folder's bounds, Qwen2-VL's usual ones and Qwen3-VL-Embedding's (multiples of 32 x 32).
    for settings in ({}, {"size": {"shortest_edge": 256 * 28 * 28, "longest_edge": 1280 * 28 * 28}},
                     {"size": {"shortest_edge": 4 * 32 * 32, "longest_edge": 1800 * 32 * 32}}):
        previous = image_processor.size
        for name, value in settings.items():
            setattr(image_processor, name, value)
        try:
            for height, width in SIZES:
                image = _photo(height, width)
                fitted = module.backbone.fit_image(image, image_processor)
                plain = image_processor(images=[image], return_tensors="pt")
                fast = image_processor(images=[fitted], return_tensors="pt")
                assert torch.equal(plain["image_grid_thw"], fast["image_grid_thw"]), (height, width)
                assert torch.equal(plain["pixel_values"], fast["pixel_values"]), (height, width, settings)
        finally:
            image_processor.size = previous


def test_fit_image_leaves_what_it_cannot_match(tiny_model_factory):
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    module = model[0]
    image_processor = module.processor.image_processor
    grey = _photo(300, 200, mode="L")
    assert module.backbone.fit_image(grey, image_processor) is grey
    image_processor.do_resize = False
    try:
        image = _photo(300, 200)
        assert module.backbone.fit_image(image, image_processor) is image
    finally:
        image_processor.do_resize = True


@pytest.mark.parametrize("protocol", ["prompted", "vlm2vec"])
def test_model_features_equal_with_and_without_fitting(tiny_model_factory, tmp_path, monkeypatch, protocol):
    model = unime.load(str(tiny_model_factory("qwen2_vl")))
    module = model[0]
    paths = []
    for index, (height, width) in enumerate([(224, 224), (375, 500), (40, 900)]):
        path = tmp_path / f"{index}.jpg"
        _photo(height, width, seed=index).save(path, quality=90)
        paths.append(str(path))
    items = list(paths)
    if protocol == "vlm2vec":  # MMEB rows: an instruction with the image placeholder
        items += [{"image": path, "text": "a photo <|image_1|>"} for path in paths]
    formats = {"prompted": None, "vlm2vec": vlm2vec_format("qwen2_vl", "high")}

    def features():
        if formats[protocol] is None:
            return module.preprocess(items)
        with model.using_format(formats[protocol]):
            return module.preprocess(items)

    fast = features()
    monkeypatch.setattr(type(module.backbone), "fit_image", lambda self, image, processor: image)
    plain = features()
    assert fast.keys() == plain.keys()
    for key, value in plain.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(fast[key], value), key
