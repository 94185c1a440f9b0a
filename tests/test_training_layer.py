"""The shared training layer: what learns, atomic checkpoints, exact resume, recipes, the final save."""

from __future__ import annotations

import os
from pathlib import Path

import accelerate  # noqa: F401  (the Trainer needs it: a missing install step fails here, not deep in a run)
import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

import unime
from unime.losses import SimilarityKLLoss
from unime.training.adapters import (
    apply_tuning,
    has_adapter,
    load_for_tuning,
    merge_adapter,
    vision_modules,
)
from unime.training.recipes import RECIPE_FILE, TrainRecipe
from unime.training.saving import save_final
from unime.training.trainer import UniMETrainer, last_checkpoint, seed_everything, training_arguments

SENTENCES = [f"sentence {i}: a {c} cat sits on the {p}" for i, (c, p) in
             enumerate((c, p) for c in ("red", "black", "white", "grey") for p in ("mat", "roof", "sofa", "car"))]


def _teacher(n: int = len(SENTENCES), dim: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1)


def _dataset() -> Dataset:
    return Dataset.from_dict({"text": SENTENCES, "label": _teacher().tolist()})


def _vision_state(model) -> dict[str, torch.Tensor]:
    return {f"{path}.{name}": p.detach().clone()
            for path, module in vision_modules(model).items() for name, p in module.named_parameters()}


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _train(model_path: Path, out: Path, tuning: str = "lora", callbacks=None, resume: bool = False, **settings):
    # float32 on every host: bf16 auto would pick bf16 autocast where the CPU has native kernels, and the
    # trained model's forward keeps that autocast, so its embeddings would not match a reloaded copy's.
    recipe = TrainRecipe(model=str(model_path), output_dir=str(out), tuning=tuning, batch_size=4, max_steps=4,
                         save_steps=2, logging_steps=1, lora_r=4, lora_alpha=8, learning_rate=1e-2, resume=resume,
                         **{"bf16": False, **settings})
    seed_everything(recipe.seed)
    model = load_for_tuning(recipe.model, method=recipe.tuning)
    apply_tuning(model, recipe.tuning, recipe.scope, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout)
    trainer = UniMETrainer(model=model, args=training_arguments(recipe, disable_tqdm=True), train_dataset=_dataset(),
                           loss=SimilarityKLLoss(model), callbacks=callbacks)
    checkpoint = last_checkpoint(recipe.checkpoint_dir()) if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    return model, trainer, recipe


class _Kill(TrainerCallback):
    """Stops the run like a SIGKILL after step 3, after checkpoint-2 was written."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt("killed at step 3")


def test_lora_in_llm_scope_trains_only_decoder_adapters(tiny_model_factory):
    model = load_for_tuning(str(tiny_model_factory("llava")))
    counts = apply_tuning(model, "lora", "llm", lora_r=4, lora_alpha=8)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".language_model." in n for n in names)
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    # 2 layers x 7 linears x (A + B)
    assert len(names) == 2 * 7 * 2


def test_lora_in_all_scope_also_adapts_vision_attention(tiny_model_factory):
    model = load_for_tuning(str(tiny_model_factory("llava")), scope="all")
    apply_tuning(model, "lora", "all", lora_r=4, lora_alpha=8)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".vision_tower." in n for n in names) and any(".language_model." in n for n in names)


def test_full_tuning_in_llm_scope_unfreezes_the_llm_alone(tiny_model_factory):
    model = load_for_tuning(str(tiny_model_factory("qwen2_vl")), method="full")
    apply_tuning(model, "full", "llm")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".language_model." in n for n in trainable)
    assert not any(p.requires_grad for m in vision_modules(model).values() for p in m.parameters())


def test_a_hand_written_regex_reaching_the_vision_tower_is_refused_in_llm_scope(tiny_model_factory):
    model = load_for_tuning(str(tiny_model_factory("llava")))
    with pytest.raises(ValueError, match="vision_tower"):
        apply_tuning(model, "lora", "llm", target_regex=r".*\.(q_proj|k_proj)")


def test_qlora_quantises_the_llm_and_adapts_it(tiny_model_factory):
    import bitsandbytes as bnb

    model = load_for_tuning(str(tiny_model_factory("llava")), method="qlora")
    apply_tuning(model, "qlora", "llm", lora_r=4, lora_alpha=8)
    q_proj = model[0].model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert all(not isinstance(m, bnb.nn.Linear4bit) for m in vision_modules(model)["vision_tower"].modules())
    with pytest.raises(ValueError, match="qlora"):
        apply_tuning(load_for_tuning(str(tiny_model_factory("llava"))), "qlora", "llm")


def test_merging_an_adapter_keeps_the_embeddings(tiny_model_factory):
    model = load_for_tuning(str(tiny_model_factory("llava")))
    apply_tuning(model, "lora", "llm", lora_r=4, lora_alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = model.encode(SENTENCES[:3])
    assert merge_adapter(model) and not has_adapter(model)
    assert not merge_adapter(model)
    assert torch.allclose(torch.from_numpy(model.encode(SENTENCES[:3])), torch.from_numpy(before), atol=1e-5)


def test_training_leaves_the_vision_side_bit_identical_and_saves_a_multimodal_model(tiny_model_factory, tmp_path, images):
    model_path = tiny_model_factory("llava")
    original = _vision_state(unime.load(str(model_path)))
    model, trainer, recipe = _train(model_path, tmp_path / "out", save_total_limit=1)
    assert sorted(p.name for p in recipe.checkpoint_dir().iterdir()) == ["checkpoint-4"]
    files = set(os.listdir(recipe.checkpoint_dir() / "checkpoint-4"))
    assert "training_args.json" in files and "training_args.bin" not in files  # no pickle
    trained = _vision_state(model)
    assert original.keys() == trained.keys() and all(torch.equal(original[k], trained[k]) for k in original)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for m in vision_modules(model).values() for p in m.parameters())
    save_final(model, recipe.output_dir, "distill", recipe)
    loaded = unime.load(recipe.output_dir)
    assert loaded.unime_config.stages == ["distill"]
    assert TrainRecipe.from_yaml(Path(recipe.output_dir) / RECIPE_FILE) == recipe
    assert loaded.encode(images[:2]).shape == (2, 64)
    reloaded = _vision_state(loaded)
    assert reloaded.keys() == original.keys() and all(torch.equal(original[k], reloaded[k]) for k in original)
    trained_emb = model.encode(SENTENCES[:2])
    assert torch.allclose(torch.from_numpy(loaded.encode(SENTENCES[:2])), torch.from_numpy(trained_emb), atol=1e-5)


def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tiny_model_factory, tmp_path):
    model_path = tiny_model_factory("llava")
    reference, _, _ = _train(model_path, tmp_path / "a", lora_dropout=0.1)
    with pytest.raises(KeyboardInterrupt):
        _train(model_path, tmp_path / "b", lora_dropout=0.1, callbacks=[_Kill()])
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["checkpoint-2"]
    resumed, _, _ = _train(model_path, tmp_path / "b", lora_dropout=0.1, resume=True)
    expected, got = _trainable(reference), _trainable(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in got.items() if "lora_B" in k)


def test_a_checkpoint_killed_while_saving_is_never_picked_for_resume(tiny_model_factory, tmp_path, monkeypatch):
    def crash(self, output_dir):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(UniMETrainer, "_save_rng_state", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model_factory("llava"), tmp_path / "out")
    folder = tmp_path / "out" / "checkpoints"
    assert not any(p.name.startswith("checkpoint-") for p in folder.iterdir())
    assert last_checkpoint(folder) is None


class _StatsLoss(SimilarityKLLoss):
    def compute(self, embeddings, labels):
        loss = super().compute(embeddings, labels)
        self.last_stats = {"student_norm": 1.0 + len(self.last_stats_calls)}
        self.last_stats_calls.append(1)
        return loss


def test_the_loss_statistics_join_each_log_line(tiny_model_factory, tmp_path):
    model = load_for_tuning(str(tiny_model_factory("llava")))
    apply_tuning(model, "lora", "llm", lora_r=4, lora_alpha=8)
    loss = _StatsLoss(model)
    loss.last_stats_calls = []
    recipe = TrainRecipe(model="m", output_dir=str(tmp_path), batch_size=4, max_steps=4, logging_steps=2, save_steps=10)
    trainer = UniMETrainer(model=model, args=training_arguments(recipe, disable_tqdm=True), train_dataset=_dataset(), loss=loss)
    trainer.train()
    logged = [entry["student_norm"] for entry in trainer.state.log_history if "student_norm" in entry]
    assert logged == [1.5, 3.5]  # means of (1, 2) and (3, 4)


def test_a_collapsing_run_is_reported_once(caplog):
    trainer = UniMETrainer.__new__(UniMETrainer)
    trainer.state = type("State", (), {"global_step": 7})()
    trainer._collapse_warned = False
    with caplog.at_level("WARNING", logger="unime.training.trainer"):
        trainer._warn_on_collapse({"loss": 1.61, "positive_similarity": 0.95, "negative_similarity": 0.999})
        assert not caplog.records  # the positives still differ from the rest
        trainer._warn_on_collapse({"loss": 1.61, "positive_similarity": 0.995, "negative_similarity": 0.996})
        trainer._warn_on_collapse({"loss": 1.61, "positive_similarity": 0.998, "negative_similarity": 0.998})
    assert len(caplog.records) == 1
    assert "step 7: the embeddings are collapsing" in caplog.text and "0.9950, 0.9960" in caplog.text


def test_recipe_yaml_rejects_unknown_keys_naming_the_key_and_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: m\noutput_dir: o\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"r\.yaml.*learning_rat"):
        TrainRecipe.from_yaml(path)
    path.write_text("model: m\ntuning: adapters\n")
    with pytest.raises(ValueError, match=r"r\.yaml.*tuning"):
        TrainRecipe.from_yaml(path)


def test_recipe_overrides_replace_given_flags_only_and_revalidate():
    recipe = TrainRecipe(model="m", output_dir="o", batch_size=32)
    changed = recipe.override(batch_size=8, learning_rate=None, seed=3)
    assert (changed.batch_size, changed.learning_rate, changed.seed) == (8, recipe.learning_rate, 3)
    with pytest.raises(ValueError, match="batch_size"):
        recipe.override(batch_size=0)
    with pytest.raises(ValueError, match="max_steps"):
        TrainRecipe(max_steps=0)


def test_bf16_autocast_is_accepted_without_a_gpu(tmp_path):
    args = training_arguments(TrainRecipe(output_dir=str(tmp_path), bf16=True))
    assert args.bf16 and args.per_device_train_batch_size == 32


def test_the_batch_is_split_evenly_over_processes(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="batch_size 32 does not split over 3"):
        training_arguments(TrainRecipe(output_dir=str(tmp_path), batch_size=32))


def test_a_qlora_run_saves_merged_full_precision_weights(tiny_model_factory, tmp_path):
    import bitsandbytes  # noqa: F401  (the qlora extra: a missing install step fails here)

    model_path = tiny_model_factory("llava")
    model, _, recipe = _train(model_path, tmp_path / "out", tuning="qlora")
    save_final(model, recipe.output_dir, "distill", recipe)
    loaded = unime.load(recipe.output_dir)
    assert not has_adapter(loaded) and loaded.unime_config.stages == ["distill"]
    assert not (Path(recipe.output_dir) / "adapter_config.json").exists()
    base = unime.load(str(model_path))
    q_trained = loaded[0].model.language_model.layers[0].self_attn.q_proj.weight
    q_base = base[0].model.language_model.layers[0].self_attn.q_proj.weight
    assert q_trained.dtype == torch.float32 and not torch.equal(q_trained, q_base)
    assert torch.allclose(q_trained, q_base, atol=0.5)


def test_a_merged_adapter_folder_saves_weights_that_reload_to_the_same_embeddings(tiny_model_factory, tmp_path):
    """An adapter folder loaded, merged and saved reloads to the merged model (the saved keys once came
    out under the adapter's renamings, and the reload silently got random weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = str(tiny_model_factory("qwen2_vl"))
    adapted = get_peft_model(AutoModelForImageTextToText.from_pretrained(base),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    model = unime.load(str(tmp_path / "adapter"), dtype="float32")
    before = model.encode(["a merged adapter"], show_progress_bar=False)
    assert merge_adapter(model)
    model.save(str(tmp_path / "merged"))
    reloaded = unime.load(str(tmp_path / "merged"), dtype="float32")
    torch.testing.assert_close(torch.as_tensor(reloaded.encode(["a merged adapter"], show_progress_bar=False)),
                               torch.as_tensor(before), atol=1e-5, rtol=0)
