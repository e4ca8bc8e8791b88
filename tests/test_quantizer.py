"""ProductQuantizer, QuantizationEncoder and backbones."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from quantrieve.config import ModelConfig
from quantrieve.models import ProductQuantizer, QuantizationEncoder, build_backbone


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quantizer(books: int, words: int, dim: int, seed: int, tau_sq: float = 0.2):
    torch.manual_seed(seed)
    return ProductQuantizer(books, words, dim, tau_sq)


def brute_codes(f: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """argmin_k ||f_m - c_mk||^2 by explicit loops in float64."""
    books, words, dim = codebooks.shape
    f, c = f.double(), codebooks.detach().double()
    out = torch.empty(len(f), books, dtype=torch.long)
    for i in range(len(f)):
        for m in range(books):
            fm = f[i, m * dim : (m + 1) * dim]
            dists = [float(((fm - c[m, k]) ** 2).sum()) for k in range(words)]
            out[i, m] = min(range(words), key=dists.__getitem__)
    return out


def brute_soft(f: torch.Tensor, codebooks: torch.Tensor, tau_sq: float) -> torch.Tensor:
    """z_m = sum_k softmax_k(-||f_m - c_mk||^2 / tau_sq) c_mk, loops over items and books."""
    books, words, dim = codebooks.shape
    f, c = f.double(), codebooks.detach().double()
    z = torch.empty_like(f)
    for i in range(len(f)):
        for m in range(books):
            fm = f[i, m * dim : (m + 1) * dim]
            logits = torch.stack([-((fm - c[m, k]) ** 2).sum() / tau_sq for k in range(words)])
            z[i, m * dim : (m + 1) * dim] = torch.softmax(logits, 0) @ c[m]
    return z


@pytest.mark.parametrize(
    ("books", "words", "bits"), [(8, 16, 32), (4, 256, 32), (4, 16, 16), (16, 16, 64), (3, 2, 3)]
)
def test_bits(books: int, words: int, bits: int) -> None:
    """bits = M * log2(K), for the quantizer and for ModelConfig."""
    assert ProductQuantizer(books, words, 2).bits == bits
    assert ModelConfig(num_books=books, num_codewords=words).bits == bits


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_codewords": 15},
        {"num_codewords": 512},
        {"num_codewords": 1},
        {"num_codewords": 0},
        {"num_books": 0},
        {"codeword_dim": 0},
        {"tau_sq": 0.0},
        {"tau_sq": -0.5},
    ],
)
def test_invalid_arguments(kwargs: dict) -> None:
    """Invalid sizes and temperatures raise ValueError."""
    args = {"num_books": 2, "num_codewords": 16, "codeword_dim": 4, "tau_sq": 0.2, **kwargs}
    with pytest.raises(ValueError):
        ProductQuantizer(**args)


def test_shapes_and_parameters() -> None:
    """Codebooks are one trainable (M, K, d) parameter."""
    pq = ProductQuantizer(3, 8, 5)
    assert pq.codebooks.shape == (3, 8, 5)
    assert pq.codebooks.requires_grad
    assert [p for p in pq.parameters()] == [pq.codebooks]
    assert pq.dim == 15


@pytest.mark.parametrize(
    ("books", "words", "dim"), [(1, 2, 1), (2, 16, 3), (4, 16, 4), (2, 256, 4)]
)
def test_encode_is_brute_force_argmin(books: int, words: int, dim: int) -> None:
    """encode gives uint8 (B, M) codes equal to a loop argmin of squared distances."""
    pq = _quantizer(books, words, dim, seed=books + words)
    f = torch.randn(9, books * dim, generator=_gen(dim))
    codes = pq.encode(f)
    assert codes.dtype == torch.uint8
    assert codes.shape == (9, books)
    assert torch.equal(codes.long(), brute_codes(f, pq.codebooks))


@pytest.mark.parametrize(("books", "words", "dim"), [(2, 16, 3), (4, 256, 4)])
def test_decode_encode_roundtrips(books: int, words: int, dim: int) -> None:
    """decode(encode(f)) is the nearest codewords; encode(decode(codes)) gives codes back."""
    pq = _quantizer(books, words, dim, seed=1)
    f = torch.randn(7, books * dim, generator=_gen(2))
    nearest = brute_codes(f, pq.codebooks)
    expected = torch.cat([pq.codebooks[m, nearest[:, m]] for m in range(books)], dim=1)
    decoded = pq.decode(pq.encode(f))
    assert decoded.shape == f.shape
    assert torch.equal(decoded, expected.detach())
    codes = torch.randint(0, words, (11, books), generator=_gen(3)).to(torch.uint8)
    assert torch.equal(pq.encode(pq.decode(codes)), codes)


def test_decode_rejects_wrong_book_count() -> None:
    """Codes must have M columns; embeddings must be M*d wide."""
    pq = ProductQuantizer(2, 16, 3)
    with pytest.raises(ValueError):
        pq.decode(torch.zeros(4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError):
        pq.encode(torch.zeros(4, 5))
    with pytest.raises(ValueError):
        pq(torch.zeros(4, 7))


@pytest.mark.parametrize("tau_sq", [0.05, 0.2, 1.0])
def test_soft_assignment_and_forward_match_reference(tau_sq: float) -> None:
    """Assignment rows sum to 1 and z equals the loop soft quantization."""
    pq = _quantizer(3, 16, 2, seed=4, tau_sq=tau_sq)
    f = torch.randn(6, 6, generator=_gen(5))
    assign = pq.soft_assign(f)
    assert assign.shape == (6, 3, 16)
    assert (assign >= 0).all()
    assert_close(assign.sum(-1), torch.ones(6, 3))
    z = pq(f)
    assert z.shape == f.shape
    assert_close(z.double(), brute_soft(f, pq.codebooks, tau_sq), rtol=1e-4, atol=1e-5)


def test_tiny_temperature_forward_is_hard_quantization() -> None:
    """As tau_sq -> 0 the soft quantization becomes decode(encode(f))."""
    pq = _quantizer(4, 16, 3, seed=6, tau_sq=1e-6)
    f = torch.randn(10, 12, generator=_gen(7))
    hard = pq.decode(pq.encode(f))
    assert_close(pq(f), hard, rtol=0, atol=1e-5)
    pq.tau_sq = 1.0
    assert (pq(f) - hard).abs().max() > 1e-2  # a warm softmax is visibly different


def test_codebooks_receive_gradient() -> None:
    """A loss on forward() back-propagates into the codebooks and the embeddings."""
    pq = _quantizer(2, 16, 4, seed=8)
    f = torch.randn(5, 8, generator=_gen(9), requires_grad=True)
    target = torch.randn(5, 8, generator=_gen(10))
    ((pq(f) - target) ** 2).sum().backward()
    assert pq.codebooks.requires_grad
    assert pq.codebooks.grad is not None
    assert torch.isfinite(pq.codebooks.grad).all()
    assert pq.codebooks.grad.abs().sum() > 0
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_encode_decode_carry_no_graph() -> None:
    """Hard codes and decoded codewords are detached (storage side)."""
    pq = ProductQuantizer(2, 16, 4)
    f = torch.randn(3, 8, requires_grad=True)
    assert not pq.encode(f).requires_grad
    assert not pq.decode(pq.encode(f)).requires_grad


@pytest.mark.parametrize("in_channels", [1, 3])
def test_encoder_backward_reaches_codebooks(in_channels: int) -> None:
    """QuantizationEncoder: (f, z) of width M*d; a loss on z trains codebooks and backbone."""
    torch.manual_seed(0)
    config = ModelConfig(backbone="small_cnn", width=4, num_books=2, codeword_dim=4)
    encoder = QuantizationEncoder(config, in_channels)
    x = torch.randn(2, in_channels, 12, 12, generator=_gen(in_channels))
    f, z = encoder(x)
    assert f.shape == z.shape == (2, 8)
    assert_close(encoder.embed(x), f)
    target = torch.randn(2, 8, generator=_gen(11))
    ((z - target) ** 2).sum().backward()
    grad = encoder.quantizer.codebooks.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    first_conv = encoder.backbone.features[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    codes = encoder.quantizer.encode(f.detach())
    assert codes.shape == (2, 2) and codes.dtype == torch.uint8


@pytest.mark.parametrize(
    ("name", "in_channels", "shape", "out_dim"),
    [
        ("small_cnn", 1, (2, 1, 12, 12), 16),
        ("small_cnn", 3, (2, 3, 28, 28), 16),
        ("resnet18_cifar", 3, (2, 3, 16, 16), 512),
        ("resnet18", 3, (1, 3, 32, 32), 512),
        ("resnet50", 2, (1, 2, 32, 32), 2048),
    ],
)
def test_backbones_output_shape(name: str, in_channels: int, shape: tuple, out_dim: int) -> None:
    """Every backbone maps (B, C, H, W) to (B, out_dim), with any channel count."""
    torch.manual_seed(0)
    net = build_backbone(name, in_channels, width=4).eval()
    assert net.out_dim == out_dim
    with torch.no_grad():
        out = net(torch.randn(*shape))
    assert out.shape == (shape[0], out_dim)
    assert torch.isfinite(out).all()


def test_small_cnn_stages_set_depth_and_output_width() -> None:
    """Each extra small_cnn stage halves the resolution and doubles the output width."""
    for stages, out_dim in ((1, 4), (3, 16), (4, 32)):
        net = build_backbone("small_cnn", 1, width=4, stages=stages).eval()
        assert net.out_dim == out_dim
        with torch.no_grad():
            assert net(torch.randn(2, 1, 28, 28)).shape == (2, out_dim)
    with pytest.raises(ValueError, match="stages"):
        build_backbone("small_cnn", 1, width=4, stages=0)


def test_build_backbone_rejects_bad_arguments() -> None:
    """Unknown names and non-positive channel counts raise ValueError."""
    with pytest.raises(ValueError):
        build_backbone("vgg16", 3)
    with pytest.raises(ValueError):
        build_backbone("small_cnn", 0)


def test_code_length_is_books_times_log2_of_codewords() -> None:
    from quantrieve.pq import bits_per_book, code_bits, is_codeword_count

    assert [code_bits(8, 16), code_bits(4, 256), code_bits(16, 2)] == [32, 32, 16]
    assert code_bits(4, 256) != int(4 * 256**0.5)  # not SPQ's M * sqrt(K) (equal at K = 16)
    for bad in (0, 1, 3, 12, 512):
        assert not is_codeword_count(bad)
        with pytest.raises(ValueError, match="power of two"):
            bits_per_book(bad)


def test_init_from_embeddings_places_codewords_at_cluster_centres() -> None:
    """Four well-separated clusters per book: k-means (K = 4) finds their centres, and every
    codeword is used by the codes of the data it was fitted on."""
    gen = torch.Generator().manual_seed(0)
    q = ProductQuantizer(num_books=2, num_codewords=4, codeword_dim=3)
    centres = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])
    labels = torch.arange(400) % 4
    f = torch.cat([centres[labels], centres[(labels + 1) % 4]], dim=1)
    f = f + 0.1 * torch.randn(400, 6, generator=gen)
    q.init_from_embeddings(f, torch.Generator().manual_seed(1))
    for m in range(2):
        found = q.codebooks[m].detach()
        nearest = torch.cdist(found, centres).min(1)
        assert nearest.values.max() < 0.1 and sorted(nearest.indices.tolist()) == [0, 1, 2, 3]
    codes = q.encode(f)
    assert all(len(torch.unique(codes[:, m])) == 4 for m in range(2))
    with pytest.raises(ValueError, match="k-means needs >= 4"):
        q.init_from_embeddings(f[:3], torch.Generator())
