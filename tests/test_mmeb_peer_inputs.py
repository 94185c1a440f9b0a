"""The vlm2vec protocol's token ids and pixel shapes equal those VLM2Vec v1's own collator made.

``tests/data/vlm2vec_peer_inputs.json`` was recorded by running VLM2Vec v1's ``process_vlm_inputs_fns``
(its ``eval.py`` collator, branch ``v1``) on a tiny Qwen2-VL made by ``unime make-tiny --family qwen2_vl``
and photos that ship with unime (``python benchmarks/mmeb_parity.py ... --record-inputs``). The same
tiny model is built here, so a change in how unime renders, resizes or tokenizes MMEB rows shows up
as a difference from the peer's own numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import unime
from unime.formats import vlm2vec_format

RECORDED = Path(__file__).parent / "data" / "vlm2vec_peer_inputs.json"
PHOTOS = Path(unime.__file__).parent / "assets" / "flickr8k" / "images"
BARE_TOKEN = {"qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "llava_next": "<image>"}


@pytest.fixture(scope="module")
def recorded():
    return json.loads(RECORDED.read_text())


def test_token_ids_and_pixels_equal_the_peers(tiny_model_factory, recorded):
    family = recorded["family"]
    model = unime.load(str(tiny_model_factory(family)))
    records = recorded["records"]
    assert len(records) == 8 and sum(bool(r["image"]) for r in records) == 4
    with model.using_format(vlm2vec_format(family, "high")):
        assert model[0].tokenizer.padding_side == records[0]["padding_side"]
        for record in records:
            # The peer's text has the bare image token in place of MMEB's <|image_1|>.
            text = record["text"].replace(BARE_TOKEN[family], "<|image_1|>")
            item = {"text": text, "image": str(PHOTOS / record["image"])} if record["image"] else text
            features = model[0].preprocess([item])
            assert features["input_ids"][0].tolist() == record["input_ids"], record["text"]
            if record["image"]:
                assert list(features["pixel_values"].shape) == record["pixel_shape"]
                assert features["image_grid_thw"].tolist() == record["image_grid_thw"]
            else:
                assert "pixel_values" not in features
