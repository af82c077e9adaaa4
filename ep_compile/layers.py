"""The layers of a convergent ConvNet: the synapses between two states (conv + pool, dense).

Each layer knows its operations, real or complex (holomorphic EP runs them on complex states, the
weights real-linear maps of the real and imaginary parts):
  forward(pre)          -> P(w * s^{n-1}) and the pooling context (max-pool indices); winners= fixes them,
  feedback(post, ctx)   -> the adjoint of forward applied to s^n (max-unpool + transposed conv),
  phi(pre, post)        -> s^n . P(w * s^{n-1}), the layer's term of Phi (Eq. 7), per example,
  phi_b(pre, post)      -> the same through the backward weights w^b, no bias (Phi~, Eq. 46).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def avg_unpool(post: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adjoint of avg_pool2d(2, 2): spread each value over its 2x2 window (/4), zero-pad odd edges."""
    up = repeat(post, "b c h w -> b c (h i) (w j)", i=2, j=2) / 4  # (B, C, 2h, 2w)
    return F.pad(up, (0, size[1] - up.shape[-1], 0, size[0] - up.shape[-2]))


def real_linear(op, z: torch.Tensor) -> torch.Tensor:
    """A real-linear map (real weights) of a real tensor, or of a complex one part by part: the
    layers' operations on the complex states of holomorphic EP."""
    return torch.complex(op(z.real), op(z.imag)) if z.is_complex() else op(z)


def gather_pool(u: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
    """u (B, C, Hc, Wc) at fixed 2x2 max-pool winners (B, C, H', W', flat indices into Hc x Wc)."""
    B, C = winners.shape[:2]
    return u.flatten(2).gather(2, winners.flatten(2)).view(B, C, *winners.shape[2:])  # (B, C, H', W')


class Synapse(nn.Module):
    """Shared by both layer kinds. Forward weights w^f live in the wrapped conv/linear module; an
    asymmetric layer adds backward weights w^b (same shape, no bias, own init; App. D.3). A symmetric
    layer has weight_b = None and feeds back through w^f: the symmetric model is the special case
    w^b = w^f, not a second copy of the code."""

    weight_b: nn.Parameter | None

    def _init_backward(self, asymmetric: bool):
        if asymmetric:
            self.weight_b = nn.Parameter(torch.empty_like(self.weight_f))
            nn.init.kaiming_uniform_(self.weight_b, a=math.sqrt(5))  # PyTorch's default init
        else:
            self.register_parameter("weight_b", None)

    @property
    def w_back(self) -> torch.Tensor:
        return self.weight_f if self.weight_b is None else self.weight_b

    def phi(self, pre: torch.Tensor, post: torch.Tensor, winners=None) -> torch.Tensor:
        """s^n . P(w^f * s^{n-1}) per example (B,): this layer's term of Phi (Eq. 7); winners: fixed
        max-pool winners (see forward)."""
        out = self.forward(pre, winners=winners)[0]
        return (out * post).flatten(1).sum(dim=1)

    def phi_b(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """s^n . P(w^b * s^{n-1}) per example (B,): the backward term of Phi~ (Eq. 46), no bias."""
        out = self.forward(pre, self.w_back, bias=False)[0]
        return (out * post).flatten(1).sum(dim=1)


class ConvPool(Synapse):
    """s^{n-1} (B, Cin, H, W) -> P(w * s^{n-1}) (B, Cout, H', W'): stride-1 conv, then 2x2 pooling."""

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int, pool: str, conv_hw, asymmetric=False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=1, padding=padding)
        self.padding, self.pool, self.conv_hw = padding, pool, tuple(conv_hw)
        self._init_backward(asymmetric)

    @property
    def weight_f(self) -> torch.Tensor:
        return self.conv.weight

    def forward(self, pre: torch.Tensor, weight=None, bias=True, winners=None):
        """(P(w * s^{n-1} + b), max-pool indices). winners: fixed max-pool winners (the indices of an
        earlier call), as holomorphic EP keeps those of s*; needed for complex states."""
        w = self.conv.weight if weight is None else weight
        if pre.is_complex():  # part by part, then the bias (real)
            u = real_linear(lambda t: F.conv2d(t, w, padding=self.padding), pre)
            u = u + self.conv.bias.view(1, -1, 1, 1) if bias else u  # (B, Cout, Hc, Wc)
        else:
            u = F.conv2d(pre, w, self.conv.bias if bias else None, padding=self.padding)  # (B, Cout, Hc, Wc)
        if self.pool == "max":
            if winners is not None:
                return gather_pool(u, winners), winners
            return F.max_pool2d(u, 2, 2, return_indices=True)  # (B, Cout, H', W'), indices
        if self.pool == "avg":
            if u.is_complex():  # avg_pool2d is real only: the same window mean (floor at odd sizes)
                h, w_ = u.shape[-2] // 2, u.shape[-1] // 2
                win = rearrange(u[..., : 2 * h, : 2 * w_], "b c (h i) (w j) -> b c h w (i j)", i=2, j=2)
                return win.mean(dim=-1), None
            return F.avg_pool2d(u, 2, 2), None
        return u, None

    def feedback_ctx(self, pre: torch.Tensor, fwd_ctx):
        """Pooling indices for the feedback: those of the forward conv when w^b = w^f, else those of
        the backward conv w^b * s^{n-1} (Eq. 45-47: each weight unpools with its own indices)."""
        if self.weight_b is None or self.pool != "max":
            return fwd_ctx
        return self.forward(pre, self.weight_b, bias=False)[1]

    def feedback(self, post: torch.Tensor, ctx) -> torch.Tensor:
        """w~^b * P^-1(s^n): max-unpool with the given indices, then transposed conv (B, Cin, H, W)."""
        if self.pool == "max" and post.is_complex():  # max_unpool2d is real only: the same scatter
            B, C = post.shape[:2]
            flat = post.new_zeros(B, C, self.conv_hw[0] * self.conv_hw[1])
            post = flat.scatter(2, ctx.flatten(2), post.flatten(2)).view(B, C, *self.conv_hw)
        elif self.pool == "max":
            post = F.max_unpool2d(post, ctx, 2, 2, output_size=self.conv_hw)  # (B, Cout, Hc, Wc)
        elif self.pool == "avg":
            post = avg_unpool(post, self.conv_hw)
        return real_linear(lambda t: F.conv_transpose2d(t, self.w_back, padding=self.padding), post)  # (B, Cin, H, W)


class Dense(Synapse):
    """s^{n-1} (B, *in_shape) -> w . F(s^{n-1}) (B, n_out); flattens a conv state."""

    def __init__(self, in_shape: tuple[int, ...], n_out: int, asymmetric=False):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.lin = nn.Linear(numel(in_shape), n_out)
        self._init_backward(asymmetric)

    @property
    def weight_f(self) -> torch.Tensor:
        return self.lin.weight

    def forward(self, pre: torch.Tensor, weight=None, bias=True, winners=None):
        w = self.lin.weight if weight is None else weight
        if pre.is_complex():
            u = real_linear(lambda t: F.linear(t.flatten(1), w), pre)
            return (u + self.lin.bias if bias else u), None  # (B, n_out)
        return F.linear(pre.flatten(1), w, self.lin.bias if bias else None), None  # (B, n_out)

    def feedback_ctx(self, pre, fwd_ctx):
        return None

    def feedback(self, post: torch.Tensor, ctx) -> torch.Tensor:
        return real_linear(lambda t: t @ self.w_back, post).view(-1, *self.in_shape)  # (B, *in_shape)
