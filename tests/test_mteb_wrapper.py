"""A unime model inside mteb: the encoder protocol, the declared modalities, and batches of mteb rows."""

from __future__ import annotations

import numpy as np

import unime
from unime.evaluation.mteb_wrapper import MTEBEncoder


def test_a_tiny_unime_model_is_an_mteb_encoder_that_declares_images(tiny_model_factory, images):
    from mteb.models.models_protocols import EncoderProtocol

    model = unime.load(str(tiny_model_factory("qwen2_vl")), mode="joint")
    encoder = MTEBEncoder(model)
    assert isinstance(encoder, EncoderProtocol)
    meta = encoder.mteb_model_meta
    assert set(meta.modalities) == {"text", "image"} and meta.use_instructions
    batches = [{"text": ["a red circle", "two squares"]}, {"image": [images[0], images[1]]},
               {"text": ["what is it?"], "image": [images[2]]}]
    got = encoder.encode(batches, task_metadata=None, hf_split="test", hf_subset="default")
    expected = model.encode(["a red circle", "two squares", images[0], images[1],
                             {"text": "what is it?", "image": images[2]}])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert encoder.similarity(got, got).shape == (5, 5)
