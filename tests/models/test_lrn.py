import pytest
import torch
import torch.nn.functional as F

from cnnctl.models.lrn import LRN, PAPER, LRNParams, from_caffe, from_torch, lrn, to_torch

PARAMS = [
    LRNParams(5, 2.0, 1e-4, 0.75),  # the paper's
    LRNParams(5, 1.0, 1e-2, 0.75),
    LRNParams(3, 0.5, 0.3, 0.5),
    LRNParams(1, 1.0, 0.1, 1.0),
    LRNParams(9, 2.0, 0.05, 0.9),  # window wider than the 7 channels below
]


def paper_loop(a: torch.Tensor, n: int, k: float, alpha: float, beta: float) -> torch.Tensor:
    """The paper's §3.3 formula, one channel at a time, clipped at the first and last channel."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        total = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        out[:, i] = a[:, i] / (k + alpha * total) ** beta
    return out


@pytest.mark.parametrize("p", PARAMS, ids=str)
def test_matches_paper_formula(p):
    torch.manual_seed(0)
    a = torch.randn(3, 7, 4, 5, dtype=torch.float64) * 4
    expected = paper_loop(a, *p)
    torch.testing.assert_close(lrn(a, *p), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LRN(*p)(a.float()), expected.float(), rtol=1e-5, atol=1e-6)


def test_alpha_is_not_divided_by_n():
    # One pixel, channels 1..5: the centre sees all five, 1 + 4 + 9 + 16 + 25 = 55.
    a = torch.arange(1.0, 6.0, dtype=torch.float64).view(1, 5, 1, 1)
    b = lrn(a, n=5, k=2.0, alpha=0.1, beta=0.75)
    assert b[0, 2, 0, 0].item() == pytest.approx(3 / (2 + 0.1 * 55) ** 0.75, rel=1e-12)
    # Channel 0 is clipped at the edge: 1 + 4 + 9 = 14.
    assert b[0, 0, 0, 0].item() == pytest.approx(1 / (2 + 0.1 * 14) ** 0.75, rel=1e-12)


def test_paper_defaults():
    assert PAPER == LRNParams(n=5, k=2.0, alpha=1e-4, beta=0.75)
    assert LRN().params == PAPER


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (3, 0.3, 0.5, 1.0), (7, 5e-2, 0.9, 0.5)])
def test_from_torch_matches_torch(size, alpha, beta, k):
    torch.manual_seed(1)
    a = torch.randn(2, 11, 6, 6) * 5
    p = from_torch(size, alpha, beta, k)
    assert p == LRNParams(size, k, alpha / size, beta)
    torch.testing.assert_close(lrn(a, *p), F.local_response_norm(a, size, alpha, beta, k))
    assert to_torch(p) == pytest.approx({"size": size, "alpha": alpha, "beta": beta, "k": k})


def test_from_caffe_bvlc_alexnet():
    # bvlc_alexnet: local_size 5, alpha 1e-4, beta 0.75, k 1 -> the paper's alpha divided by 5.
    p = from_caffe(5, 1e-4, 0.75, 1.0)
    assert p == LRNParams(5, 1.0, pytest.approx(2e-5), 0.75)
    torch.manual_seed(2)
    a = torch.randn(2, 16, 5, 5) * 30
    # Caffe's ACROSS_CHANNELS formula for odd sizes is torch's: k + alpha/n * centred sum.
    torch.testing.assert_close(lrn(a, *p), F.local_response_norm(a, 5, 1e-4, 0.75, 1.0))


def test_paper_params_through_torch():
    torch.manual_seed(3)
    a = torch.randn(2, 12, 4, 4) * 50
    torch.testing.assert_close(lrn(a, *PAPER), F.local_response_norm(a, size=5, alpha=5e-4, beta=0.75, k=2.0))


@pytest.mark.parametrize(
    "make", [lambda: LRN(n=4), lambda: lrn(torch.ones(1, 4, 2, 2), n=2), lambda: from_torch(4, 1e-4),
             lambda: from_caffe(6, 1e-4), lambda: LRN(n=0)],
)
def test_even_or_nonpositive_n_refused(make):
    with pytest.raises(ValueError, match="positive odd"):
        make()


def test_groups_normalise_each_block_alone():
    torch.manual_seed(4)
    a = torch.randn(2, 8, 3, 3) * 10
    p = LRNParams(5, 1.0, 0.1, 0.75)
    grouped = lrn(a, *p, groups=2)
    halves = torch.cat([paper_loop(a[:, :4], *p), paper_loop(a[:, 4:], *p)], dim=1)
    torch.testing.assert_close(grouped, halves)
    assert not torch.allclose(grouped, lrn(a, *p))  # the window really stops at the boundary
    with pytest.raises(ValueError, match="divide"):
        lrn(a, *p, groups=3)


@pytest.mark.parametrize("groups", [1, 2])
def test_channels_last_same_values_and_layout(groups):
    torch.manual_seed(5)
    a = (torch.randn(2, 6, 5, 4) * 6).requires_grad_()
    a_cl = a.detach().to(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 6, 5, 4)
    b, b_cl = lrn(a, 3, 1.0, 0.2, 0.75, groups), lrn(a_cl, 3, 1.0, 0.2, 0.75, groups)
    assert b_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(b_cl, b)
    b.backward(g)
    b_cl.backward(g)
    torch.testing.assert_close(a_cl.grad, a.grad)


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 6, 2, 3, 2)])
def test_other_ranks_match_torch(shape):
    a = torch.randn(*shape) * 5
    torch.testing.assert_close(lrn(a, *PAPER), F.local_response_norm(a, **to_torch(PAPER)))


@pytest.mark.parametrize(
    "p,groups,channels_last",
    [(LRNParams(5, 2.0, 0.3, 0.75), 1, False), (LRNParams(3, 0.5, 0.5, 0.5), 2, False),
     (LRNParams(1, 1.0, 0.2, 1.3), 1, True), (LRNParams(7, 1.0, 0.1, 0.75), 2, True)],
)
def test_gradcheck(p, groups, channels_last):
    torch.manual_seed(6)
    a = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    if channels_last:
        a = a.to(memory_format=torch.channels_last)
    a.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn(t, *p, groups=groups), (a,))


def test_gradient_matches_torch_autograd():
    torch.manual_seed(7)
    a = (torch.randn(4, 16, 6, 6) * 20).requires_grad_()
    g = torch.randn(4, 16, 6, 6)
    (ours,) = torch.autograd.grad(lrn(a, *PAPER), a, g)
    (ref,) = torch.autograd.grad(F.local_response_norm(a, **to_torch(PAPER)), a, g)
    torch.testing.assert_close(ours, ref)
