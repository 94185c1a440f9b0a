"""A synthetic multimodal benchmark, generated from a seed, for CPU demos and tests.

Scenes of coloured shapes with captions, questions, referring expressions, object crops and
edits, exported in the layouts the rest of the project reads: MMEB-train and MMEB-eval (with IND
and out-of-distribution splits built on held-out colour-shape pairs), SugarCrepe, a Karpathy-style
retrieval set, and NLI / STS text. See docs/synthetic-data.md.

    from unime.synth import SynthConfig, generate
    manifest = generate("out/synth", SynthConfig(seed=0))
"""

from __future__ import annotations

from unime.synth.config import SynthConfig
from unime.synth.generate import generate

__all__ = ["SynthConfig", "generate"]
