"""The layers of a convergent ConvNet: the synapses (interactions) between two states (conv + pool or
strided conv, dense). A synapse reads state `src` and drives state `dst` (0 is the input x): the chain
layers link neighbours, skip interactions link non-adjacent states (EPNet sets src and dst).

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


def avg_unpool(post: torch.Tensor, size: tuple[int, int], f: int = 2) -> torch.Tensor:
    """Adjoint of avg_pool2d(f, f): spread each value over its f x f window (/f^2), zero-pad odd edges."""
    up = repeat(post, "b c h w -> b c (h i) (w j)", i=f, j=f) / (f * f)  # (B, C, f h, f w)
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
    src: int = -1  # the state it reads (0: the input x); set by EPNet
    dst: int = -1  # the state it drives

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
    """s^{src} (B, Cin, H, W) -> P(w * s^{src}) (B, Cout, H', W'): a convolution of stride `stride`, then
    f x f pooling (max or avg, f = `factor`) or none. The chain's layers are stride-1 convs with 2x2
    pooling (the paper's) or stride-2 convs; skip interactions downsample by pooling or stride."""

    def __init__(
        self,
        c_in,
        c_out,
        kernel,
        padding,
        pool,
        conv_hw,
        asymmetric=False,
        stride=1,
        factor=2,
        bias=True,
        out_pad=(0, 0),
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias)
        self.padding, self.pool, self.conv_hw = padding, pool, tuple(conv_hw)
        self.stride, self.factor = stride, factor
        # the transposed conv's output_padding: strided convs drop up to stride - 1 rows / columns
        self.out_pad = tuple(out_pad)  # LayerSpec.out_padding
        self._init_backward(asymmetric)

    @property
    def weight_f(self) -> torch.Tensor:
        return self.conv.weight

    def _conv(self, t: torch.Tensor, w, b=None) -> torch.Tensor:
        if self.stride == 1:
            return F.conv2d(t, w, b, padding=self.padding)
        return F.conv2d(t, w, b, stride=self.stride, padding=self.padding)

    def forward(self, pre: torch.Tensor, weight=None, bias=True, winners=None):
        """(P(w * s^{src} + b), max-pool indices). winners: fixed max-pool winners (the indices of an
        earlier call), as holomorphic EP keeps those of s*; needed for complex states."""
        w = self.conv.weight if weight is None else weight
        b = self.conv.bias if bias else None
        if pre.is_complex():  # part by part, then the bias (real)
            u = real_linear(lambda t: self._conv(t, w), pre)
            u = u + b.view(1, -1, 1, 1) if b is not None else u  # (B, Cout, Hc, Wc)
        else:
            u = self._conv(pre, w, b)  # (B, Cout, Hc, Wc)
        f = self.factor
        if self.pool == "max":
            if winners is not None:
                return gather_pool(u, winners), winners
            return F.max_pool2d(u, f, f, return_indices=True)  # (B, Cout, H', W'), indices
        if self.pool == "avg":
            if u.is_complex():  # avg_pool2d is real only: the same window mean (floor at odd sizes)
                h, w_ = u.shape[-2] // f, u.shape[-1] // f
                win = rearrange(u[..., : f * h, : f * w_], "b c (h i) (w j) -> b c h w (i j)", i=f, j=f)
                return win.mean(dim=-1), None
            return F.avg_pool2d(u, f, f), None
        return u, None

    def feedback_ctx(self, pre: torch.Tensor, fwd_ctx):
        """Pooling indices for the feedback: those of the forward conv when w^b = w^f, else those of
        the backward conv w^b * s^{src} (Eq. 45-47: each weight unpools with its own indices)."""
        if self.weight_b is None or self.pool != "max":
            return fwd_ctx
        return self.forward(pre, self.weight_b, bias=False)[1]

    def feedback(self, post: torch.Tensor, ctx) -> torch.Tensor:
        """w~^b * P^-1(s^{dst}): unpool with the given indices, then transposed conv (B, Cin, H, W)."""
        f = self.factor
        if self.pool == "max" and post.is_complex():  # max_unpool2d is real only: the same scatter
            B, C = post.shape[:2]
            flat = post.new_zeros(B, C, self.conv_hw[0] * self.conv_hw[1])
            post = flat.scatter(2, ctx.flatten(2), post.flatten(2)).view(B, C, *self.conv_hw)
        elif self.pool == "max":
            post = F.max_unpool2d(post, ctx, f, f, output_size=self.conv_hw)  # (B, Cout, Hc, Wc)
        elif self.pool == "avg":
            post = avg_unpool(post, self.conv_hw, f)
        if self.stride == 1:
            return real_linear(lambda t: F.conv_transpose2d(t, self.w_back, padding=self.padding), post)
        return real_linear(
            lambda t: F.conv_transpose2d(
                t, self.w_back, stride=self.stride, padding=self.padding, output_padding=self.out_pad
            ),
            post,
        )  # (B, Cin, H, W)


class Dense(Synapse):
    """s^{src} (B, *in_shape) -> w . F(s^{src}) (B, n_out); flattens a conv state."""

    def __init__(self, in_shape: tuple[int, ...], n_out: int, asymmetric=False, bias=True):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.lin = nn.Linear(numel(in_shape), n_out, bias=bias)
        self._init_backward(asymmetric)

    @property
    def weight_f(self) -> torch.Tensor:
        return self.lin.weight

    def forward(self, pre: torch.Tensor, weight=None, bias=True, winners=None):
        w = self.lin.weight if weight is None else weight
        if pre.is_complex():
            u = real_linear(lambda t: F.linear(t.flatten(1), w), pre)
            return (u + self.lin.bias if bias and self.lin.bias is not None else u), None  # (B, n_out)
        return F.linear(pre.flatten(1), w, self.lin.bias if bias else None), None  # (B, n_out)

    def feedback_ctx(self, pre, fwd_ctx):
        return None

    def feedback(self, post: torch.Tensor, ctx) -> torch.Tensor:
        return real_linear(lambda t: t @ self.w_back, post).view(-1, *self.in_shape)  # (B, *in_shape)
