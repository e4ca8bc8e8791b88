"""Loss terms against slow, loop-based float64 references written from docs/method.md."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from quantrieve.config import LOSS_PRESETS, ConfigError, LossConfig, apply_loss_preset
from quantrieve.losses import (
    TERMS,
    Objective,
    codeword_diversity,
    consistent_contrastive,
    cross_quantized_contrastive,
    fuse,
    nt_xent,
    part_neighbour_consistency,
)

SHAPES = list(itertools.product((2, 3, 8), (1, 2, 4), (2, 4)))  # (B, M, d)
TEMPS = (0.1, 0.5, 1.0)
TOL = {"rtol": 1e-4, "atol": 1e-5}


# ---------------------------------------------------------------- references (float64, loops)


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _softmax(values: list[float]) -> list[float]:
    lse = _logsumexp(values)
    return [math.exp(v - lse) for v in values]


def ref_nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """SimCLR: each of the 2B views against its twin, all other views in the denominator."""
    x = torch.cat([a, b]).double()
    n, batch = len(x), len(a)
    total = 0.0
    for r in range(n):
        twin = (r + batch) % n
        others = [_cos(x[r], x[j]) / tau for j in range(n) if j != r]
        total += _logsumexp(others) - _cos(x[r], x[twin]) / tau
    return total / n


def ref_consistent(u_a: torch.Tensor, u_b: torch.Tensor, tau: float) -> float:
    """Symmetric KL between the two views' softmaxed similarities to the same negatives."""
    u = torch.cat([u_a, u_b]).double()
    batch = len(u_a)
    total = 0.0
    for i in range(batch):
        negatives = [j for j in range(2 * batch) if j not in (i, i + batch)]
        p = _softmax([_cos(u[i], u[j]) / tau for j in negatives])
        q = _softmax([_cos(u[i + batch], u[j]) / tau for j in negatives])
        kl_qp = sum(qk * math.log(qk / pk) for pk, qk in zip(p, q, strict=True))
        kl_pq = sum(pk * math.log(pk / qk) for pk, qk in zip(p, q, strict=True))
        total += 0.5 * kl_qp + 0.5 * kl_pq
    return total / batch


def ref_part_neighbour(
    z_a: torch.Tensor, z_b: torch.Tensor, books: int, top_n: int, tau: float
) -> float:
    """Per book and anchor: -log(top-N mass / all-candidate mass), averaged."""
    z = torch.cat([z_a, z_b]).double()
    n, batch = len(z), len(z_a)
    d = z.shape[1] // books
    total = 0.0
    for m in range(books):
        zm = z[:, m * d : (m + 1) * d]
        for r in range(n):
            twin = (r + batch) % n
            sims = [_cos(zm[r], zm[j]) / tau for j in range(n) if j not in (r, twin)]
            top = sorted(sims, reverse=True)[:top_n]
            total += _logsumexp(sims) - _logsumexp(top)
    return total / (books * n)


def ref_codeword_diversity(f: torch.Tensor, codebooks: torch.Tensor, eps: float = 1e-5) -> float:
    """Mean over books of sum_k pbar_k log(pbar_k + eps), p_i = softmax_k(cos(f_m,i, c_mk))."""
    f, codebooks = f.double(), codebooks.double()
    books, words, d = codebooks.shape
    total = 0.0
    for m in range(books):
        pbar = [0.0] * words
        for i in range(len(f)):
            fm = f[i, m * d : (m + 1) * d]
            p = _softmax([_cos(fm, codebooks[m, k]) for k in range(words)])
            pbar = [acc + pk / len(f) for acc, pk in zip(pbar, p, strict=True)]
        total += sum(pk * math.log(pk + eps) for pk in pbar)
    return total / books


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _views(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    """f_a, f_b, z_a, z_b with b a noisy copy of a, so positives are meaningfully closer."""
    f_a = _randn(batch, dim, seed=seed)
    f_b = f_a + 0.5 * _randn(batch, dim, seed=seed + 1)
    z_a = f_a + 0.3 * _randn(batch, dim, seed=seed + 2)
    z_b = f_b + 0.3 * _randn(batch, dim, seed=seed + 3)
    return f_a, f_b, z_a, z_b


def _check(actual: torch.Tensor, expected: float) -> None:
    assert actual.ndim == 0
    assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), **TOL)


_CODEBOOKS = _randn(2, 4, 2, seed=3)  # (M, K, d)


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("tau", TEMPS)
@pytest.mark.parametrize(("batch", "books", "dim"), SHAPES)
def test_nt_xent_matches_reference(batch: int, books: int, dim: int, tau: float) -> None:
    """NT-Xent on (B, M*d) views."""
    f_a, f_b, _, _ = _views(batch, books * dim, seed=batch * 100 + books * 10 + dim)
    _check(nt_xent(f_a, f_b, tau), ref_nt_xent(f_a, f_b, tau))


@pytest.mark.parametrize("tau", TEMPS)
@pytest.mark.parametrize(("batch", "books", "dim"), SHAPES)
def test_cross_quantized_matches_reference(batch: int, books: int, dim: int, tau: float) -> None:
    """SPQ: NT-Xent(f_a, z_b) + NT-Xent(f_b, z_a)."""
    f_a, f_b, z_a, z_b = _views(batch, books * dim, seed=batch * 100 + books * 10 + dim)
    expected = ref_nt_xent(f_a, z_b, tau) + ref_nt_xent(f_b, z_a, tau)
    _check(cross_quantized_contrastive(f_a, f_b, z_a, z_b, tau), expected)


@pytest.mark.parametrize("tau", (0.2, *TEMPS))
@pytest.mark.parametrize(("batch", "books", "dim"), SHAPES)
def test_consistent_contrastive_matches_reference(
    batch: int, books: int, dim: int, tau: float
) -> None:
    """L_cc on fused u = f + z."""
    f_a, f_b, z_a, z_b = _views(batch, books * dim, seed=batch * 100 + books * 10 + dim)
    u_a, u_b = f_a + z_a, f_b + z_b
    _check(consistent_contrastive(u_a, u_b, tau), ref_consistent(u_a, u_b, tau))


@pytest.mark.parametrize("top_n", (1, 3, 20))
@pytest.mark.parametrize("tau", TEMPS)
@pytest.mark.parametrize(("batch", "books", "dim"), SHAPES)
def test_part_neighbour_matches_reference(
    batch: int, books: int, dim: int, tau: float, top_n: int
) -> None:
    """L_pn per book with the top-N candidates as soft positives."""
    _, _, z_a, z_b = _views(batch, books * dim, seed=batch * 100 + books * 10 + dim)
    expected = ref_part_neighbour(z_a, z_b, books, top_n, tau)
    _check(part_neighbour_consistency(z_a, z_b, books, top_n, tau), expected)


@pytest.mark.parametrize("words", (2, 16))
@pytest.mark.parametrize(("batch", "books", "dim"), SHAPES)
def test_codeword_diversity_matches_reference(batch: int, books: int, dim: int, words: int) -> None:
    """L_cd over all 2B views."""
    seed = batch * 100 + books * 10 + dim
    f = _randn(2 * batch, books * dim, seed=seed)
    codebooks = _randn(books, words, dim, seed=seed + 7)
    _check(codeword_diversity(f, codebooks), ref_codeword_diversity(f, codebooks))


# ---------------------------------------------------------------- special values


@pytest.mark.parametrize("batch", (2, 3, 8))
def test_part_neighbour_zero_when_every_candidate_is_positive(batch: int) -> None:
    """With N >= 2B-2 the numerator is the denominator: L_pn = 0."""
    _, _, z_a, z_b = _views(batch, 8, seed=batch)
    for top_n in (2 * batch - 2, 2 * batch, 100):
        loss = part_neighbour_consistency(z_a, z_b, 2, top_n, 0.5)
        assert_close(loss.double(), torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)
    assert part_neighbour_consistency(z_a, z_b, 2, 2 * batch - 3, 0.5) > 1e-4


def test_part_neighbour_positive_below_full_top_n() -> None:
    """With N < 2B-2 some candidates sit in the denominator only, so L_pn > 0."""
    _, _, z_a, z_b = _views(4, 8, seed=3)
    assert part_neighbour_consistency(z_a, z_b, 2, 5, 0.5) > 1e-4


@pytest.mark.parametrize("words", (2, 4))
@pytest.mark.parametrize("books", (1, 3))
def test_codeword_diversity_uniform_usage_is_minus_log_k(words: int, books: int) -> None:
    """Codewords orthonormal, views one per codeword: pbar is uniform and L_cd = log(1/K+eps)."""
    eye = torch.eye(words, dtype=torch.float64)
    codebooks = eye.expand(books, words, words).clone()
    f = torch.cat([eye] * books, dim=1).repeat(2, 1)  # 2K views, each book sees every codeword
    expected = math.log(1.0 / words + 1e-5)
    _check(codeword_diversity(f, codebooks), expected)
    assert abs(expected + math.log(words)) < 1e-4


def test_codeword_diversity_collapsed_usage() -> None:
    """All views on codeword 0 of a K = 2 book: L_cd = sum p log p with p = softmax([1, -1]).

    Without a temperature cos is in [-1, 1], so p is never one-hot and L_cd cannot reach 0;
    collapsed usage still scores well above the uniform -log 2.
    """
    codebooks = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    collapsed = codeword_diversity(torch.tensor([[2.0, 0.0]] * 6, dtype=torch.float64), codebooks)
    p = _softmax([1.0, -1.0])
    _check(collapsed, sum(pk * math.log(pk + 1e-5) for pk in p))
    spread = codeword_diversity(
        torch.tensor([[1.0, 0.0], [-3.0, 0.0]] * 3, dtype=torch.float64), codebooks
    )
    _check(spread, math.log(0.5 + 1e-5))
    assert spread < collapsed - 0.25


@pytest.mark.parametrize("tau", (0.2, 1.0))
@pytest.mark.parametrize("batch", (2, 5))
def test_consistent_contrastive_zero_for_identical_views(batch: int, tau: float) -> None:
    """P = Q when both views are the same tensor."""
    u = _randn(batch, 6, seed=batch)
    loss = consistent_contrastive(u, u.clone(), tau)
    assert_close(loss.double(), torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_consistent_contrastive_positive_for_different_views() -> None:
    """Different views give a strictly positive symmetric KL."""
    f_a, f_b, _, _ = _views(4, 6, seed=11)
    assert consistent_contrastive(f_a, f_b) > 1e-4


def test_nt_xent_symmetric_in_the_views() -> None:
    """Swapping the views permutes the anchors; the mean is unchanged."""
    f_a, f_b, _, _ = _views(5, 6, seed=2)
    assert_close(nt_xent(f_a, f_b), nt_xent(f_b, f_a))


# ---------------------------------------------------------------- gradients


def _assert_grad(t: torch.Tensor) -> None:
    assert t.grad is not None
    assert torch.isfinite(t.grad).all()
    assert t.grad.abs().sum() > 0


def test_gradients_flow_through_every_loss() -> None:
    """backward() works and gives finite, non-zero gradients for every term."""
    batch, books, dim, words = 4, 2, 3, 8
    tensors = [t.float().requires_grad_() for t in _views(batch, books * dim, seed=5)]
    f_a, f_b, z_a, z_b = tensors
    codebooks = _randn(books, words, dim, seed=9).float().requires_grad_()
    losses = [
        nt_xent(f_a, f_b, 0.5),
        cross_quantized_contrastive(f_a, f_b, z_a, z_b, 0.5),
        consistent_contrastive(f_a + z_a, f_b + z_b, 0.2),
        part_neighbour_consistency(z_a, z_b, books, 2, 0.5),
        codeword_diversity(torch.cat([f_a, f_b]), codebooks),
    ]
    for loss in losses:
        assert torch.isfinite(loss)
    sum(losses).backward()
    for t in (*tensors, codebooks):
        _assert_grad(t)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a, b: nt_xent(a, b, 0.1), id="nt_xent"),
        pytest.param(lambda a, b: consistent_contrastive(a, b), id="cc"),
        pytest.param(lambda a, b: part_neighbour_consistency(a, b, 2, 2), id="pn"),
        pytest.param(lambda a, b: codeword_diversity(torch.cat([a, b]), _CODEBOOKS), id="cd"),
    ],
)
def test_each_loss_backward_finite(make) -> None:
    """Each term alone back-propagates finite, non-zero gradients to both views."""
    a = _randn(3, 4, seed=1).requires_grad_()
    b = _randn(3, 4, seed=2).requires_grad_()
    make(a, b).backward()
    _assert_grad(a)
    _assert_grad(b)


# ---------------------------------------------------------------- invalid inputs


@pytest.mark.parametrize(
    "call",
    [
        lambda a, b, one: nt_xent(a, b[:, :3]),
        lambda a, b, one: nt_xent(a, b[:2]),
        lambda a, b, one: nt_xent(one, one),
        lambda a, b, one: nt_xent(a[0], b[0]),
        lambda a, b, one: cross_quantized_contrastive(a, b, a, b[:, :2]),
        lambda a, b, one: cross_quantized_contrastive(one, one, one, one),
        lambda a, b, one: consistent_contrastive(a, b[:, :3]),
        lambda a, b, one: consistent_contrastive(one, one),
        lambda a, b, one: part_neighbour_consistency(a, b[:, :2], 2),
        lambda a, b, one: part_neighbour_consistency(one, one, 2),
        lambda a, b, one: part_neighbour_consistency(a, b, 3),  # 4 not divisible by 3
        lambda a, b, one: codeword_diversity(a, _CODEBOOKS[0]),
        lambda a, b, one: codeword_diversity(a[:, :3], _CODEBOOKS),  # 3 not divisible by M = 2
    ],
)
def test_invalid_inputs_raise_value_error(call) -> None:
    """Mismatched shapes, wrong ranks and a batch of one are rejected with ValueError."""
    a, b, one = _randn(3, 4, seed=0), _randn(3, 4, seed=1), _randn(1, 4, seed=2)
    with pytest.raises(ValueError):
        call(a, b, one)


def test_codeword_diversity_rejects_wrong_codeword_dim() -> None:
    """f of width M*d' with d' != d must raise ValueError like every other shape check."""
    f = _randn(6, 2 * 3, seed=0)  # M = 2 books of d' = 3
    with pytest.raises(ValueError):
        codeword_diversity(f, _CODEBOOKS)  # (2, 4, 2): d = 2


# ---------------------------------------------------------------- Objective


def _objective_inputs(batch: int = 4, books: int = 2, dim: int = 3, words: int = 16):
    f_a, f_b, z_a, z_b = (t.float() for t in _views(batch, books * dim, seed=21))
    codebooks = _randn(books, words, dim, seed=22).float()
    return f_a, f_b, z_a, z_b, codebooks


def _all_terms_config(**overrides) -> LossConfig:
    values = {
        "w_icf": 0.7,
        "w_icz": 1.3,
        "w_cc": 0.4,
        "w_pn": 0.15,
        "w_cd": 0.2,
        "w_xqc": 0.5,
        "tau_ic": 0.3,
        "tau_cc": 0.7,
        "tau_pn": 0.9,
        "tau_xqc": 0.6,
        "top_n": 3,
    }
    values.update(overrides)
    return LossConfig(**values)


def test_objective_total_is_weighted_sum_of_terms() -> None:
    """loss == sum_t w_t * term_t over the returned terms, all six present."""
    config = _all_terms_config()
    out = Objective(config, num_books=2)(*_objective_inputs())
    assert set(out) == {"loss", *TERMS}
    expected = sum(getattr(config, f"w_{name}") * out[name] for name in TERMS)
    assert_close(out["loss"], expected)


def test_objective_terms_use_their_own_temperatures() -> None:
    """Each term equals the reference computed with its configured temperature and top-N."""
    config = _all_terms_config()
    f_a, f_b, z_a, z_b, codebooks = _objective_inputs()
    out = Objective(config, num_books=2)(f_a, f_b, z_a, z_b, codebooks)
    _check(out["icf"], ref_nt_xent(f_a, f_b, config.tau_ic))
    _check(out["icz"], ref_nt_xent(z_a, z_b, config.tau_ic))
    _check(out["cc"], ref_consistent(f_a + z_a, f_b + z_b, config.tau_cc))
    _check(out["pn"], ref_part_neighbour(z_a, z_b, 2, config.top_n, config.tau_pn))
    _check(out["cd"], ref_codeword_diversity(torch.cat([f_a, f_b]), codebooks))
    xqc = ref_nt_xent(f_a, z_b, config.tau_xqc) + ref_nt_xent(f_b, z_a, config.tau_xqc)
    _check(out["xqc"], xqc)


@pytest.mark.parametrize(
    ("fusion", "make"),
    [
        ("sum", lambda f, z: f + z),
        ("concat", lambda f, z: torch.cat([f, z], dim=1)),
        ("embedding", lambda f, z: f),
        ("quantized", lambda f, z: z),
    ],
)
def test_objective_cc_fusion(fusion: str, make) -> None:
    """L_cc is computed on the configured fusion of f and z."""
    config = _all_terms_config(fusion=fusion)
    f_a, f_b, z_a, z_b, codebooks = _objective_inputs()
    out = Objective(config, num_books=2)(f_a, f_b, z_a, z_b, codebooks)
    _check(out["cc"], ref_consistent(make(f_a, z_a), make(f_b, z_b), config.tau_cc))
    assert_close(fuse(f_a, z_a, fusion), make(f_a, z_a))


def test_fuse_rejects_unknown_mode() -> None:
    """An unknown fusion name is a ValueError."""
    f = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        fuse(f, f, "product")


def test_objective_zero_weight_terms_absent() -> None:
    """Terms with weight 0 are neither returned nor added."""
    config = _all_terms_config(w_cc=0.0, w_pn=0.0, w_xqc=0.0)
    out = Objective(config, num_books=2)(*_objective_inputs())
    assert set(out) == {"loss", "icf", "icz", "cd"}
    expected = config.w_icf * out["icf"] + config.w_icz * out["icz"] + config.w_cd * out["cd"]
    assert_close(out["loss"], expected)


@pytest.mark.parametrize(
    ("preset", "terms"),
    [
        ("spq", {"xqc"}),
        ("hqc", {"icf", "icz", "cc", "pn", "cd"}),
        ("hqc-ref", {"cc", "pn", "cd"}),
    ],
)
def test_objective_presets(preset: str, terms: set[str]) -> None:
    """Presets switch on exactly their terms; spq's total is L_xqc itself."""
    config = LossConfig()
    apply_loss_preset(config, preset)
    assert config.preset == preset
    out = Objective(config, num_books=2)(*_objective_inputs())
    assert set(out) == {"loss", *terms}
    expected = sum(getattr(config, f"w_{name}") * out[name] for name in terms)
    assert_close(out["loss"], expected)
    if preset == "spq":
        assert_close(out["loss"], out["xqc"])


def test_hqc_preset_weights_match_method() -> None:
    """docs/method.md: w_icf = w_icz = 1, 0.4 L_cc, 0.1 L_pn, 0.2 L_cd."""
    config = LossConfig()
    apply_loss_preset(config, "hqc")
    weights = {name: getattr(config, f"w_{name}") for name in TERMS}
    assert weights == {"icf": 1.0, "icz": 1.0, "cc": 0.4, "pn": 0.1, "cd": 0.2, "xqc": 0.0}


def test_every_term_has_one_weight_key_and_a_weight_in_every_preset() -> None:
    """The term names are one list: the weight keys of the loss section and of every preset."""
    weight_keys = [f.name for f in dataclasses.fields(LossConfig) if f.name.startswith("w_")]
    assert weight_keys == [f"w_{term}" for term in TERMS]
    assert all(list(weights) == weight_keys for weights in LOSS_PRESETS.values())


def test_unknown_preset_and_bad_config_raise() -> None:
    """Unknown presets, all-zero weights and unknown fusions are rejected (ValueError)."""
    with pytest.raises(ValueError):
        apply_loss_preset(LossConfig(), "nope")
    zero = LossConfig(w_icf=0, w_icz=0, w_cc=0, w_pn=0, w_cd=0, w_xqc=0)
    with pytest.raises(ConfigError):
        Objective(zero, num_books=2)
    with pytest.raises(ConfigError):
        Objective(LossConfig(fusion="product"), num_books=2)


def test_objective_backward() -> None:
    """The total back-propagates to embeddings, quantized vectors and codebooks."""
    f_a, f_b, z_a, z_b, codebooks = (t.requires_grad_() for t in _objective_inputs())
    out = Objective(_all_terms_config(), num_books=2)(f_a, f_b, z_a, z_b, codebooks)
    out["loss"].backward()
    for t in (f_a, f_b, z_a, z_b, codebooks):
        _assert_grad(t)


def test_over_views_of_two_views_is_the_objective() -> None:
    """Without small views, over_views is the pair (view 0, view 1) itself, bit for bit."""
    f_a, f_b, z_a, z_b, codebooks = _objective_inputs()
    objective = Objective(_all_terms_config(), num_books=2)
    pair = objective(f_a, f_b, z_a, z_b, codebooks)
    views = objective.over_views([f_a, f_b], [z_a, z_b], codebooks)
    assert set(views) == set(pair)
    for name, value in pair.items():
        assert torch.equal(views[name], value)


def test_over_views_averages_the_pairs_with_a_main_view() -> None:
    """Multi-crop: with small views s, every pairwise term is the mean over (0, 1), (0, s),
    (1, s) of its reference value (small views never paired with each other); L_cd is taken
    once over every view's embeddings."""
    config = _all_terms_config()
    f_a, f_b, z_a, z_b, codebooks = _objective_inputs()
    f_s = [f_a + 0.4 * _randn(*f_a.shape, seed=30 + i).float() for i in range(2)]
    z_s = [f + 0.3 * _randn(*f.shape, seed=40 + i).float() for i, f in enumerate(f_s)]
    fs, zs = [f_a, f_b, *f_s], [z_a, z_b, *z_s]
    out = Objective(config, num_books=2).over_views(fs, zs, codebooks)
    assert set(out) == {"loss", *TERMS}
    pairs = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]

    def mean(term) -> float:
        return sum(term(a, b) for a, b in pairs) / len(pairs)

    _check(out["icf"], mean(lambda a, b: ref_nt_xent(fs[a], fs[b], config.tau_ic)))
    _check(out["icz"], mean(lambda a, b: ref_nt_xent(zs[a], zs[b], config.tau_ic)))
    cc = mean(lambda a, b: ref_consistent(fs[a] + zs[a], fs[b] + zs[b], config.tau_cc))
    _check(out["cc"], cc)
    pn = mean(lambda a, b: ref_part_neighbour(zs[a], zs[b], 2, config.top_n, config.tau_pn))
    _check(out["pn"], pn)
    xqc = mean(
        lambda a, b: (
            ref_nt_xent(fs[a], zs[b], config.tau_xqc) + ref_nt_xent(fs[b], zs[a], config.tau_xqc)
        )
    )
    _check(out["xqc"], xqc)
    _check(out["cd"], ref_codeword_diversity(torch.cat(fs), codebooks))
    expected = sum(getattr(config, f"w_{name}") * out[name] for name in TERMS)
    assert_close(out["loss"], expected)
    with pytest.raises(ValueError, match="same number"):
        Objective(config, num_books=2).over_views([f_a], [z_a], codebooks)
