"""Exports of a unime model for other serving stacks: :mod:`unime.export.vllm` (docs/serving.md, "Serving with vLLM")."""
