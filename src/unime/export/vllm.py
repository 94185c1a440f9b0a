"""``unime export vllm``: a model folder that vLLM's pooling runner serves as it is, with unime's embeddings.

What the folder holds, and why each piece is there (docs/serving.md, "Serving with vLLM"):

- the weights in the family's original architecture (``config.architectures``), as safetensors, with a
  LoRA adapter merged first: vLLM applies LoRA to the language model only, and its multimodal classes
  load the generation architecture, not the headless model unime embeds with. The LM head is copied
  from the source folders when one holds it (embeddings never use it);
- the processor and tokenizer, with the processor class renamed to transformers' own (unime's image-only
  subclasses exist only where unime is installed);
- a chat template (the tokenizer's and processor's ``chat_template``, and ``chat_template.jinja`` for
  ``--chat-template``) that renders the model's saved UniME prompts exactly: a ``system`` message is the
  instruction, the one ``user`` message holds at most one text and one image. The template is generated
  from the saved prompt strings, so it matches any family's prompts, and the export checks it token
  for token against unime's rendering before the folder is written;
- the pooling: ``modules.json`` with sentence-transformers' legacy ``Pooling`` (last token) and
  ``Normalize`` entries, the form vLLM reads to set its pooler, and unime's input module first, so
  ``unime.load`` reads the folder too;
- README.md with the launch command and requests for a text, an image and both.

vLLM pools the last position of the model's final hidden states, after the language model's final norm,
as unime does (``last_hidden_state``); tests/test_export_vllm.py checks the exported weights give
unime's embeddings that way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unime.config import CONTENT_SLOT, MMEB_IMAGE_PLACEHOLDER, TEXT_SLOT, UniMEConfig

logger = logging.getLogger(__name__)

#: The families vLLM can pool, with the architecture it loads for each (its multimodal model registry).
VLLM_ARCHITECTURES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "phi3_v": "Phi3VForCausalLM",
}

#: Families unime supports that vLLM cannot serve, and why.
UNSUPPORTED: dict[str, str] = {
    "fast_vlm": (
        "vLLM has no model class for transformers' FastVlmForConditionalGeneration with an arbitrary "
        "AutoModel vision tower (the seeing default's is an ImageNet MobileNetV2), so it cannot load the folder; "
        "serve it with `unime serve`"
    ),
}

CHAT_TEMPLATE_FILE = "chat_template.jinja"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
# The legacy sentence-transformers names: vLLM recognises only these in modules.json.
ST_POOLING = "sentence_transformers.models.Pooling"
ST_NORMALIZE = "sentence_transformers.models.Normalize"


def check_family(family: str) -> str:
    """The architecture vLLM loads for ``family``, or a ValueError naming the family and the reason."""
    if family in UNSUPPORTED:
        raise ValueError(f"family {family!r} cannot be exported for vLLM: {UNSUPPORTED[family]}")
    if family not in VLLM_ARCHITECTURES:
        raise ValueError(
            f"family {family!r} cannot be exported for vLLM: no vLLM architecture is known for it "
            f"(exportable: {', '.join(sorted(VLLM_ARCHITECTURES))})"
        )
    return VLLM_ARCHITECTURES[family]


# --- the chat template ------------------------------------------------------------------------------


def _literal(text: str) -> str:
    """A Jinja string literal of ``text`` (Jinja decodes Python/JSON escapes in string literals)."""
    return json.dumps(text, ensure_ascii=True)


def _split(prompt: str, slot: str, name: str) -> tuple[str, str]:
    if prompt.count(slot) != 1:
        raise ValueError(f"{name} must contain {slot!r} exactly once to be exported: {prompt!r}")
    before, after = prompt.split(slot)
    return before, after


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens the tokenizer adds around a prompt (``add_special_tokens=True``), as text.

    vLLM and transformers tokenize a chat template's output without adding special tokens: the template
    writes them itself, as the tokenizer would have added them to unime's prompt."""

    prefix: str = ""
    suffix: str = ""


def special_tokens(tokenizer: Any, sample: str) -> SpecialTokens:
    """What ``tokenizer`` adds around ``sample`` when it adds special tokens, as token strings."""
    plain = tokenizer(sample, add_special_tokens=False)["input_ids"]
    full = tokenizer(sample, add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if start is None:
        raise ValueError("the tokenizer changes a prompt's own tokens when it adds special tokens; "
                         "its prompts cannot be written by a chat template")
    added = full[:start] + full[start + len(plain) :]
    special = set(tokenizer.all_special_ids)
    if any(token not in special for token in added):
        raise ValueError(f"the tokenizer adds non-special tokens {added} around a prompt; cannot template them")
    as_text = tokenizer.convert_ids_to_tokens
    return SpecialTokens(prefix="".join(as_text(full[:start])), suffix="".join(as_text(full[start + len(plain) :])))


def chat_template(config: UniMEConfig, image_token: str, tokens: SpecialTokens = SpecialTokens()) -> str:
    """The Jinja chat template that renders ``config``'s prompts from OpenAI-style messages.

    Messages: at most one ``system`` message, whose text is the instruction, and one ``user`` message
    whose content is a string (a text) or a list of at most one ``text`` part and at most one image part
    (``image`` or ``image_url``). The prompt is the one :meth:`unime.modeling.UniMETransformer.render`
    gives the input ``{"text", "image", "instruction"}``: the text prompt for a text alone, the image
    prompt for an image alone, the joint prompt (image token, instruction, text, one per line) otherwise;
    ``<|image_1|>`` in the text places the image there. A text with an image is refused in ``sum`` mode,
    where unime embeds the two apart and adds the embeddings. Anything else raises, naming what is wrong.
    ``add_generation_prompt`` changes nothing: the prompts end with the assistant's turn already.
    """
    text_before, text_after = _split(config.text_prompt, TEXT_SLOT, "text_prompt")
    joint_before, joint_after = _split(config.joint_prompt, CONTENT_SLOT, "joint_prompt")
    token, mmeb = _literal(image_token), _literal(MMEB_IMAGE_PLACEHOLDER)
    return "".join([
        f"{{#- unime embedding prompts, family {config.family}, mode {config.mode} (unime export vllm).\n"
        "    system: the instruction; user: a string, or at most one text part and one image part. -#}\n",
        "{%- set ns = namespace(text=none, texts=0, images=0, instruction=none, systems=0, users=0) -%}\n",
        "{%- for message in messages -%}\n",
        "  {%- if message['role'] == 'system' -%}\n",
        "    {%- set ns.systems = ns.systems + 1 -%}\n",
        "    {%- if message['content'] is string -%}{%- set ns.instruction = message['content'] -%}\n",
        "    {%- else -%}{%- for part in message['content'] -%}\n",
        "      {%- if part['type'] != 'text' or ns.instruction is not none -%}"
        "{{- raise_exception('unime: a system message (the instruction) holds one text') -}}{%- endif -%}\n",
        "      {%- set ns.instruction = part['text'] -%}\n",
        "    {%- endfor -%}{%- endif -%}\n",
        "  {%- elif message['role'] == 'user' -%}\n",
        "    {%- set ns.users = ns.users + 1 -%}\n",
        "    {%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
        "{%- set ns.texts = ns.texts + 1 -%}\n",
        "    {%- else -%}{%- for part in message['content'] -%}\n",
        "      {%- if part['type'] == 'text' -%}{%- set ns.text = part['text'] -%}{%- set ns.texts = ns.texts + 1 -%}\n",
        "      {%- elif part['type'] in ['image', 'image_url'] -%}{%- set ns.images = ns.images + 1 -%}\n",
        "      {%- else -%}{{- raise_exception('unime: content parts are text, image or image_url, not '"
        " ~ part['type']) -}}{%- endif -%}\n",
        "    {%- endfor -%}{%- endif -%}\n",
        "  {%- else -%}{{- raise_exception('unime: messages are one system and one user message, not '"
        " ~ message['role']) -}}\n",
        "  {%- endif -%}\n",
        "{%- endfor -%}\n",
        "{%- if ns.users != 1 or ns.systems > 1 -%}"
        "{{- raise_exception('unime: one user message (and at most one system message) per embedding') -}}"
        "{%- endif -%}\n",
        "{%- if ns.texts > 1 or ns.images > 1 -%}"
        "{{- raise_exception('unime: a user message holds at most one text and one image') -}}{%- endif -%}\n",
        "{%- set has_image = ns.images > 0 -%}\n",
        "{%- set has_text = ns.text is not none and (ns.text | trim) != '' -%}\n",
        "{%- if not has_image and not has_text -%}"
        "{{- raise_exception('unime: the user message needs a text or an image') -}}{%- endif -%}\n",
        f"{{%- set text = ns.text | replace({mmeb}, {token}) if ns.text is not none else none -%}}\n",
        f"{{%- set placed = text is not none and text != '' and {token} in text -%}}\n",
        "{%- if placed and not has_image -%}"
        "{{- raise_exception('unime: the text refers to an image but no image was given') -}}{%- endif -%}\n",
        "{%- if has_image and has_text and " + _literal(config.mode) + " == 'sum' -%}"
        "{{- raise_exception('unime: in sum mode text and image are embedded apart; send them as two "
        "requests and add the embeddings') -}}{%- endif -%}\n",
        "{{- " + _literal(tokens.prefix) + " -}}\n",
        "{%- if not has_image and ns.instruction is none -%}\n",
        "  {{- " + _literal(text_before) + " + text + " + _literal(text_after) + " -}}\n",
        "{%- elif not has_text and ns.instruction is none -%}\n",
        "  {{- " + _literal(config.image_prompt) + " -}}\n",
        "{%- else -%}\n",
        "  {%- set parts = namespace(content='', any=false) -%}\n",
        "  {%- if has_image and not placed -%}{%- set parts.content = " + token + " -%}"
        "{%- set parts.any = true -%}{%- endif -%}\n",
        "  {%- if ns.instruction -%}{%- set parts.content = parts.content ~ ('\\n' if parts.any else '') "
        "~ ns.instruction -%}{%- set parts.any = true -%}{%- endif -%}\n",
        "  {%- if has_text -%}{%- set parts.content = parts.content ~ ('\\n' if parts.any else '') ~ text -%}"
        "{%- endif -%}\n",
        "  {{- " + _literal(joint_before) + " + parts.content + " + _literal(joint_after) + " -}}\n",
        "{%- endif -%}\n",
        "{{- " + _literal(tokens.suffix) + " -}}\n",
    ])


def messages_for(item: dict[str, Any], image: Any = None) -> list[dict[str, Any]]:
    """The messages form of an input ``{"text", "image", "instruction"}`` (what the template reads):
    the instruction as a system message, then one user message with an image part and a text part.
    ``image`` is what the image part carries besides its type (e.g. a PIL image for a processor)."""
    messages: list[dict[str, Any]] = []
    if item.get("instruction") is not None:
        messages.append({"role": "system", "content": item["instruction"]})
    content: list[dict[str, Any]] = []
    if item.get("image") is not None:
        content.append({"type": "image", **({"image": image} if image is not None else {})})
    if item.get("text") is not None:
        content.append({"type": "text", "text": item["text"]})
    messages.append({"role": "user", "content": content})
    return messages


# --- the check ----------------------------------------------------------------------------------------

_CHECK_TEXT = "a red circle left of a blue square"
_CHECK_INSTRUCTION = "Represent the given image with the following question:"


def check_template(module: Any, tokenizer: Any, template: str) -> list[str]:
    """Render sample inputs of every kind with ``template`` (through ``tokenizer.apply_chat_template``)
    and with ``module`` (a :class:`~unime.modeling.UniMETransformer`), tokenize both, and return the
    kinds whose token ids differ (empty: the template is exact). Images stay placeholders here: the
    processor expands them alike on both sides."""
    from PIL import Image

    image = Image.new("RGB", (32, 32), (128, 64, 32))
    kinds = {"text": {"text": _CHECK_TEXT}, "image": {"image": image},
             "text with instruction": {"text": _CHECK_TEXT, "instruction": _CHECK_INSTRUCTION},
             "image with instruction": {"image": image, "instruction": _CHECK_INSTRUCTION}}
    if module.unime_config.mode == "joint":
        kinds["text and image"] = {"text": _CHECK_TEXT, "image": image}
        kinds["text and image with instruction"] = {"text": _CHECK_TEXT, "image": image,
                                                    "instruction": _CHECK_INSTRUCTION}
    wrong = []
    for kind, item in kinds.items():
        prompt, _ = module.render(_as_input(item), where=kind)
        expected = list(tokenizer(prompt)["input_ids"])
        got = tokenizer.apply_chat_template(messages_for(item), chat_template=template, tokenize=True,
                                            add_generation_prompt=True, return_dict=False)
        if list(got) != expected:
            wrong.append(kind)
    return wrong


def _as_input(item: dict[str, Any]) -> Any:
    from unime.inputs import to_input

    return to_input(item)


# --- the weights -----------------------------------------------------------------------------------


def _weight_sources(name: str, hf_model: Any) -> list[Path]:
    """Local folders that may hold the source's full weights and processor files: the model, an
    adapter's base, the folder the transformers model was read from (hub ids: their cached snapshot)."""
    candidates = [name]
    adapter = Path(name) / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if base:
            candidates.append(base)
    candidates.append(str(getattr(hf_model.config, "_name_or_path", "") or ""))
    folders: list[Path] = []
    for candidate in dict.fromkeys(c for c in candidates if c):
        path = Path(candidate)
        if not path.is_dir():
            try:
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(candidate, local_files_only=True))
            except Exception:  # not a cached hub id: nothing to read there
                continue
        folders.append(path)
    return folders


_LM_HEAD = re.compile(r"(^|\.)lm_head\.weight$")


def _find_lm_head(folders: list[Path]) -> Any:
    from safetensors import safe_open

    for folder in folders:
        for file in sorted(folder.glob("*.safetensors")):
            if file.name.startswith("adapter_"):
                continue
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                    if _LM_HEAD.search(key):
                        return handle.get_tensor(key)
    return None


def full_architecture(hf_model: Any, architecture: str, sources: list[Path]) -> tuple[Any, str]:
    """The model in ``architecture`` (the class vLLM loads) around ``hf_model``'s merged weights, and
    where its LM head came from. ``hf_model`` is used in place (no copy of the weights)."""
    import torch
    import transformers

    if type(hf_model).__name__ == architecture:
        return hf_model, "the model"
    cls = getattr(transformers, architecture, None)
    if cls is None:
        raise ValueError(f"transformers {transformers.__version__} has no {architecture}; cannot export")
    config = hf_model.config
    config.architectures = [architecture]
    with torch.device("meta"):
        full = cls(config)
    prefix = full.base_model_prefix
    inner = getattr(full, prefix, None)
    if type(inner) is not type(hf_model):
        raise ValueError(f"{architecture}.{prefix} is a {type(inner).__name__}, not the loaded "
                         f"{type(hf_model).__name__}; cannot export")
    setattr(full, prefix, hf_model)
    head = full.get_output_embeddings()
    text_config = config.get_text_config()
    if getattr(text_config, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False):
        full.tie_weights()
        origin = "tied to the input embeddings"
    else:
        weight = _find_lm_head(sources)
        embeddings = hf_model.get_input_embeddings().weight
        if weight is not None and tuple(weight.shape) == tuple(head.weight.shape):
            origin = "copied from the source weights"
        else:
            # A headless unime save keeps no LM head; embeddings never use it, vLLM's pooling runner drops it.
            weight = torch.zeros(head.weight.shape)
            origin = "not in the source (a headless save): written as zeros, unused by embeddings"
            logger.warning("LM head %s", origin)
        head.weight = torch.nn.Parameter(weight.to(embeddings.dtype), requires_grad=False)
    meta = [name for name, tensor in [*full.named_parameters(), *full.named_buffers()] if tensor.is_meta]
    if meta:
        raise ValueError(f"{architecture}: weights {meta[:5]} were not filled in; cannot export")
    return full, origin


# --- the folder ------------------------------------------------------------------------------------


def _processor_class_name(obj: Any) -> str:
    """The class name to record for ``obj``: its own, or for one of unime's subclasses the first class
    transformers defines (unime's image-only processors exist only where unime is installed)."""
    cls = type(obj)
    if not cls.__module__.startswith("unime."):
        return cls.__name__
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("transformers."):
            return base.__name__
    raise ValueError(f"{cls.__name__} derives from no transformers class")


def _rename_processor_class(folder: Path, name: str) -> None:
    for file in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = folder / file
        if path.is_file():
            data = json.loads(path.read_text())
            if "processor_class" in data and data["processor_class"] != name:
                data["processor_class"] = name
                path.write_text(json.dumps(data, indent=2) + "\n")


def _video_processor_config(sources: list[Path], folder: Path, processor_class: str) -> None:
    """Settings for the video processor of processors that own one (Qwen2-VL, Qwen2.5-VL,
    LLaVA-OneVision): unime's image-only subclasses save none, and transformers refuses to build the
    processor (as vLLM does) without them. The source's own settings when it has them; else the image
    processor's, which is what transformers itself reads for a checkpoint without a video processor
    config (its fallback to ``preprocessor_config.json``)."""
    import inspect

    import transformers

    cls = getattr(transformers, processor_class, None)
    if cls is None or "video_processor" not in inspect.signature(cls.__init__).parameters:
        return
    ours = folder / "processor_config.json"
    data = json.loads(ours.read_text()) if ours.is_file() else {}
    if "video_processor" in data or (folder / "video_preprocessor_config.json").exists():
        return
    for source in sources:
        file = source / "video_preprocessor_config.json"
        if file.is_file():
            shutil.copyfile(file, folder / file.name)
            return
        combined = source / "processor_config.json"
        if combined.is_file() and "video_processor" in (video := json.loads(combined.read_text())):
            data["video_processor"] = video["video_processor"]
            ours.write_text(json.dumps(data, indent=2) + "\n")
            return
    image = data.get("image_processor")
    if image is None:
        raise ValueError(f"{folder}: no image processor settings to give the {processor_class} video processor")
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")


def _write_sentence_transformers(folder: Path, module: Any, dimension: int, normalize: bool) -> None:
    """modules.json, the pooling config in the legacy layout vLLM reads, and unime's module config."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "unime.modeling.UniMETransformer"},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": ST_POOLING}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": ST_NORMALIZE})
        (folder / NORMALIZE_DIR).mkdir()
        (folder / NORMALIZE_DIR / "config.json").write_text("{}\n")
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / POOLING_DIR).mkdir()
    pooling = {"word_embedding_dimension": dimension, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
               "pooling_mode_lasttoken": True, "include_prompt": True}
    (folder / POOLING_DIR / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    settings = {key: value for key, value in module.get_config_dict().items() if key != "model_name_or_path"}
    (folder / "sentence_bert_config.json").write_text(json.dumps(settings, indent=2) + "\n")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_vllm` wrote."""

    path: Path
    family: str
    architecture: str
    merged_adapter: bool
    lm_head: str


def export_vllm(
    model: str,
    out: str | Path,
    *,
    trust_remote_code: bool = False,
    mode: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    served_model_name: str | None = None,
) -> ExportResult:
    """Write ``model`` (anything :func:`unime.load` reads) to ``out`` as a folder vLLM serves as it is.

    Everything is written to a staging folder beside ``out`` and renamed into place at the end; a
    non-empty ``out`` is refused unless ``overwrite``. ``mode`` overrides the saved text+image mode,
    ``dtype`` the weights' dtype (default: as loaded). Raises ValueError naming the family for a
    family vLLM cannot serve, and when the generated template does not reproduce unime's tokens.
    """
    from unime.modeling import load_model, read_model_type
    from unime.training.adapters import merge_adapter

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ValueError(f"output folder {out} exists and is not empty (use --overwrite)")
    family = read_model_type(model, trust_remote_code)
    architecture = check_family(family)
    loaded = load_model(model, trust_remote_code=trust_remote_code, device="cpu", dtype=dtype, mode=mode)
    module = loaded[0]
    merged = merge_adapter(loaded)
    loaded.eval()
    sources = _weight_sources(model, loaded.hf_model)
    full, head_origin = full_architecture(loaded.hf_model, architecture, sources)
    processor, tokenizer = module.processor, loaded.tokenizer
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    config = module.unime_config
    tokens = special_tokens(tokenizer, config.text_prompt.replace(TEXT_SLOT, _CHECK_TEXT))
    template = chat_template(config, module.backbone.image_token, tokens)
    wrong = check_template(module, tokenizer, template)
    if wrong:
        raise ValueError(f"family {family}: the generated chat template does not reproduce unime's tokens "
                         f"for {', '.join(wrong)}; the folder was not written")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        full.save_pretrained(staging, safe_serialization=True)
        saved_side = tokenizer.padding_side
        tokenizer.padding_side = module.tokenizer_padding_side
        try:
            for owner in {id(processor): processor, id(tokenizer): tokenizer}.values():
                owner.chat_template = template
            processor.save_pretrained(staging)  # a processor saves its tokenizer too
        finally:
            tokenizer.padding_side = saved_side
        if processor is not tokenizer:
            processor_class = _processor_class_name(processor)
            _rename_processor_class(staging, processor_class)
            _video_processor_config(sources, staging, processor_class)
        (staging / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
        _write_sentence_transformers(staging, module, full.config.get_text_config().hidden_size, config.normalize)
        name = served_model_name or out.name
        (staging / "README.md").write_text(render_readme(name, family, architecture, config, merged, head_origin),
                                           encoding="utf-8")
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported the %s model to %s (%s%s)", family, out, architecture, ", adapter merged" if merged else "")
    return ExportResult(path=out, family=family, architecture=architecture, merged_adapter=merged,
                        lm_head=head_origin)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to ``out``; a previous ``out`` is moved aside first and
    removed only once the new folder is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --- README ------------------------------------------------------------------------------------------


def render_readme(name: str, family: str, architecture: str, config: UniMEConfig, merged: bool,
                  head_origin: str) -> str:
    """The README inside the exported folder: what it is, the launch command, requests of each kind."""
    remote = " --trust-remote-code" if family == "phi3_v" else ""
    sum_mode = config.mode == "sum"
    both = ("In `sum` mode (this model's) unime embeds a text with an image as the normalised sum of the two "
            "embeddings; a single vLLM request cannot, and the template refuses it: embed the text and the image "
            "in two requests, add the vectors and normalise the sum."
            if sum_mode else
            "Text and image in one message are embedded as one sequence (`joint` mode, this model's).")
    return f"""# {name}: a unime embedding model for vLLM

Exported by `unime export vllm` from a `{family}` unime model: architecture `{architecture}`
(safetensors){", LoRA adapter merged into the weights" if merged else ""}; LM head {head_origin}.
Embeddings are the last token's final hidden state (after the final norm), L2-normalised, of the
model's UniME prompts, which `chat_template.jinja` renders (`modules.json` sets the same pooling).

## Launch

```bash
vllm serve . --served-model-name {name} --runner pooling --convert embed{remote} \\
  --pooler-config '{{"pooling_type": "LAST"}}' \\
  --chat-template ./chat_template.jinja --chat-template-content-format openai
```

(run in this folder, or give its path instead of `.`). One process per GPU, behind any load
balancer, scales it out.

## Requests

One embedding per request, in the `messages` form of vLLM's `/v1/embeddings`. A `system` message is
the instruction; the `user` message holds at most one text and one image (a data URI). The order of
the parts does not matter: the image goes where the prompt puts it. `unime serve` takes the same
requests.

```bash
# a text
curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{{"model": "{name}",
  "messages": [{{"role": "user", "content": "a dog on a beach"}}]}}'
# an image
curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{{"model": "{name}",
  "messages": [{{"role": "user", "content": [{{"type": "image_url", "image_url": {{"url": "data:image/png;base64,..."}}}}]}}]}}'
# an image with a text and an instruction
curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{{"model": "{name}",
  "messages": [{{"role": "system", "content": "Represent the given image with the following question:"}},
               {{"role": "user", "content": [{{"type": "image_url", "image_url": {{"url": "data:image/png;base64,..."}}}},
                                            {{"type": "text", "text": "What is the dog holding?"}}]}}]}}'
```

{both}

Offline, `LLM(model=".", runner="pooling", convert="embed").embed({{"prompt": prompt,
"multi_modal_data": {{"image": image}}}})` with `prompt` rendered from `sentence_bert_config.json`'s
`unime` prompts (`<sent>` replaced by the text; `<content>` by image token, instruction and text, one per
line), as unime renders them.

The folder also loads with `unime.load` (same embeddings) and with transformers'
`{architecture}` alone.
"""
