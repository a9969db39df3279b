"""Local response normalisation across channels (AlexNet paper §3.3).

    b[c] = a[c] / (k + alpha * sum_{j = c - n//2}^{c + n//2} a[j]^2) ** beta

with the sum clipped at the first and last channel. Everything in cnnctl uses this, the paper's,
meaning: alpha is **not** divided by n. Other libraries divide it by n, so they are converted
explicitly (`from_torch`, `from_caffe`, `to_torch`). Paper values: k=2, n=5, alpha=1e-4, beta=0.75.

`lrn` is a fused autograd Function. torch's eager `local_response_norm` builds about ten autograd
nodes and allocates a fresh tensor for each; here the forward allocates three tensors and the
backward two, and the gradient is analytic:

    d = k + alpha * W(a^2),   b = a * d^-beta
    grad_a = g * d^-beta - 2 * alpha * beta * a * W(g * b / d)

where W is the channel-window sum, which is its own transpose (the window is centred), so forward and
backward share one helper. The forward saves a, d^-beta and r = -2*alpha*beta * b / d (in d's
memory), so the backward is one product, one window sum and two fused updates. Deviation: only odd
n, as in the paper, Caffe and cuda-convnet; an even window has no centre, and torch and Caffe
disagree about which side gets the extra channel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class LRNParams(NamedTuple):
    """LRN hyper-parameters in the paper's convention (alpha not divided by n)."""

    n: int = 5
    k: float = 2.0
    alpha: float = 1e-4
    beta: float = 0.75


PAPER = LRNParams()


def check_n(n: int) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1 or n % 2 == 0:
        raise ValueError(f"LRN window n must be a positive odd integer (the paper uses 5), got {n!r}")
    return int(n)


def from_torch(size: int, alpha: float, beta: float = 0.75, k: float = 1.0) -> LRNParams:
    """Paper-convention params for `torch.nn.LocalResponseNorm(size, alpha, beta, k)`.

    torch computes `k + alpha/size * sum`, so the paper's alpha is torch's alpha / size.
    """
    return LRNParams(n=check_n(size), k=float(k), alpha=float(alpha) / size, beta=float(beta))


def from_caffe(local_size: int, alpha: float, beta: float = 0.75, k: float = 1.0) -> LRNParams:
    """Paper-convention params for a Caffe `LRN` layer (ACROSS_CHANNELS).

    Caffe also computes `k + alpha/local_size * sum`: bvlc_alexnet's (5, 1e-4, 0.75, k=1) is the
    paper's alpha divided by 5.
    """
    return LRNParams(n=check_n(local_size), k=float(k), alpha=float(alpha) / local_size, beta=float(beta))


def to_torch(p: LRNParams) -> dict:
    """Keyword arguments for `torch.nn.functional.local_response_norm` that give the same result."""
    return {"size": p.n, "alpha": p.alpha * p.n, "beta": p.beta, "k": p.k}


def _padded(x: torch.Tensor, h: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A buffer shaped like x, (N, G, Cg, ...), with h channels of `fill` on both sides of dim 2 and
    an uninitialised middle, which is returned as a view too. The buffer keeps x's layout (channels
    innermost for channels_last) so the channel slices of `_window_sum` stay cheap.
    """
    n, g, c, *rest = x.shape
    if len(rest) == 2 and x.stride(2) == 1 and x.stride(1) == c and not x.is_contiguous():
        # channels_last: the pads are 2h values in every pixel; one dense fill beats strided ones.
        buf = torch.full((n, *rest, g, c + 2 * h), fill, dtype=x.dtype, device=x.device).permute(0, 3, 4, 1, 2)
    else:
        buf = torch.empty((n, g, c + 2 * h, *rest), dtype=x.dtype, device=x.device)
        buf[:, :, :h].fill_(fill)
        buf[:, :, c + h :].fill_(fill)
    return buf, buf[:, :, h : h + c]


def _window_sum(buf: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """out[:, :, i] = sum_{j<n} buf[:, :, i + j]: the centred window sum of a padded buffer's middle."""
    if n == 1:
        return buf[:, :, :c].clone()
    out = buf[:, :, 0:c] + buf[:, :, 1 : c + 1]
    for j in range(2, n):
        out += buf[:, :, j : j + c]
    return out


def _inverse_power(d: torch.Tensor, beta: float, out: torch.Tensor) -> torch.Tensor:
    """d ** -beta. The paper's beta = 0.75 is (d * sqrt(d)) ** -0.5: sqrt and rsqrt are single
    vector instructions, and the three passes cost about half of one transcendental `pow`."""
    if beta == 0.75:
        return torch.sqrt(d, out=out).mul_(d).rsqrt_()
    return torch.pow(d, -beta, out=out)


class _LRNFunction(torch.autograd.Function):
    # Works on (N, G, Cg, ...) views: the window never crosses a group (tower) boundary.
    # Constants ride along inside passes that are needed anyway; memory traffic is the cost here.
    @staticmethod
    def forward(ctx, a: torch.Tensor, n: int, k: float, alpha: float, beta: float) -> torch.Tensor:
        # Every window holds n entries, pads included: pads of k/n and entries alpha*a^2 + k/n sum
        # to k + alpha * (sum of a^2) in one window sum, edge channels too.
        buf, mid = _padded(a, n // 2, k / n)
        torch.addcmul(a.new_full((), k / n), a, a, value=alpha, out=mid)
        d = _window_sum(buf, n, a.shape[2])
        p = _inverse_power(d, beta, out=mid)  # the squares are no longer needed
        b = a * p
        r = torch.addcdiv(a.new_zeros(()), b, d, value=-2.0 * alpha * beta, out=d)  # -2ab b/d, over d
        ctx.save_for_backward(a, p, r)
        ctx.n = n
        return b

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        a, p, r = ctx.saved_tensors
        buf, mid = _padded(a, ctx.n // 2, 0.0)
        torch.mul(g, r, out=mid)
        grad = _window_sum(buf, ctx.n, a.shape[2]).mul_(a).addcmul_(g, p)
        return grad, None, None, None, None


def lrn(
    x: torch.Tensor, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75, groups: int = 1
) -> torch.Tensor:
    """Paper LRN over dim 1 of an (N, C, ...) tensor; see the module docstring.

    `groups` splits the channels into equal blocks normalised separately: in the two-tower AlexNet
    each GPU normalised only its own kernel maps, so the window stops at the tower boundary.
    """
    n = check_n(n)
    if x.dim() < 3:
        raise ValueError(f"LRN expects (N, C, ...) with at least 3 dims, got shape {tuple(x.shape)}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(f"LRN groups={groups} must divide the {x.shape[1]} channels")
    # In bf16/fp16, k + alpha * sum(a^2) rounds to k for most activations (8 mantissa bits at k = 2
    # resolve 0.008, and alpha = 1e-4): the normalisation is computed in fp32 and cast back.
    low = x.dtype in (torch.bfloat16, torch.float16)
    a = x.float() if low else x
    y = _LRNFunction.apply(a.unflatten(1, (groups, x.shape[1] // groups)), n, float(k), float(alpha), float(beta))
    return y.flatten(1, 2).to(x.dtype) if low else y.flatten(1, 2)


class LRN(nn.Module):
    """`lrn` as a layer; arguments in the paper's convention (alpha not divided by n)."""

    def __init__(self, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75, groups: int = 1):
        super().__init__()
        self.n, self.k, self.alpha, self.beta = check_n(n), float(k), float(alpha), float(beta)
        self.groups = int(groups)

    @classmethod
    def from_params(cls, p: LRNParams, groups: int = 1) -> "LRN":
        return cls(*p, groups=groups)

    @property
    def params(self) -> LRNParams:
        return LRNParams(self.n, self.k, self.alpha, self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn(x, self.n, self.k, self.alpha, self.beta, self.groups)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}, alpha={self.alpha}, beta={self.beta}, groups={self.groups}"
