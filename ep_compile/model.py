"""Convergent ConvNets with static input: the architecture (ModelConfig), the model (EPNet) and its
primitive function Phi.

A model is a set of states and the interactions (synapses, layers.py) between pairs of them: the
chain layers, layer n connecting s^{n-1} to s^n (s^0 = x), and optional skip interactions between
non-adjacent states (Hopfield-ResNet13's). The primitive function is the sum of the interaction
terms (Eq. 7, 33, 37); a state's drive sums the forward term of every interaction into it and the
feedback of every interaction out of it. Each state has its activation, a clamp(slope u, lo, hi).
Output modes:
  'mse': the output layer is the last state and takes part in the dynamics (Eq. 15-16, App. D.2.1);
  'ce' : a softmax read-out w_out on the last state, outside the dynamics (Eq. 17-19, App. D.2.2).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvPool, Dense, Synapse, avg_unpool, gather_pool, numel, real_linear  # noqa: F401  (re-exported)
from .settings import INTS_GE1, ConfigError, check_fields, check_name, closest, setting  # noqa: F401  (re-exported)

# name -> (slope, lo, hi) of clamp(slope u, lo, hi): Eq. 51, Eq. 50; relu6 = clip(u, 0, 6) and
# clipped-relu-C = clip(u, 0, C) of the 2025 Hopfield-ResNet recipe (Elayedam & Srinivasan 2025);
# identity for a linear output layer (its recipe's mse output). holo-sigmoid is a holomorphic, smooth
# version of the slope-1/2 hard sigmoid (holomorphic EP, Laborieux & Zenke 2022), slope ~1/2 at u = 1
ACTIVATIONS = {
    "hard-sigmoid": (0.5, 0.0, 1.0),
    "hard-sigmoid-1": (1.0, 0.0, 1.0),
    "holo-sigmoid": (0.5, 0.0, 1.0),
    "relu6": (1.0, 0.0, 6.0),
    "identity": (1.0, -math.inf, math.inf),
}
CLIPPED_RELU = "clipped-relu-"  # clipped-relu-C: clip(u, 0, C), C > 0
HOLO_SHARPNESS = 1.0  # a in holo_sigmoid; its poles sit at |Im u| = pi / a


def activation_form(name: str) -> tuple[float, float, float]:
    """(slope, lo, hi) of activation `name`: a name of ACTIVATIONS or clipped-relu-C."""
    if isinstance(name, str) and name.startswith(CLIPPED_RELU):
        try:
            ceiling = float(name[len(CLIPPED_RELU) :])
        except ValueError:
            ceiling = float("nan")
        if not 0 < ceiling < math.inf:
            raise ConfigError(f"activation {name!r}: the ceiling C of clipped-relu-C must be a number > 0")
        return (1.0, 0.0, ceiling)
    check_name("activation", name, [*ACTIVATIONS, CLIPPED_RELU + "C"])
    return ACTIVATIONS[name]


def holo_sigmoid(u: torch.Tensor, a: float = HOLO_SHARPNESS) -> torch.Tensor:
    """0.5 u sigmoid(a u) + (1 - 0.5 u) sigmoid(a (u - 2)): ~clamp(u/2, 0, 1) for large a, holomorphic
    away from the poles of the logistic, so it takes complex states (real or complex u)."""
    return 0.5 * u * torch.sigmoid(a * u) + (1 - 0.5 * u) * torch.sigmoid(a * (u - 2))


POOLS = ("max", "avg", "none", "stride")  # "stride": a stride-2 conv downsamples instead of a pool
SKIP_DOWN = ("max", "avg", "stride", "none")  # how a skip interaction reaches a smaller state
LOSSES = ("mse", "ce")


def conv_out(size: int, kernel: int, padding: int, stride: int = 1) -> int:
    """Output size of a convolution: the one formula of the Python side (the C++ loader has its own,
    once)."""
    return (size + 2 * padding - kernel) // stride + 1


def parse_skip(text: str) -> tuple[int, int, int | None, str | None]:
    """'SRC:DST[:kK][:DOWN]' -> (src, dst, kernel or None, down or None): a skip interaction from state
    SRC (0 = the input) to state DST, a K x K conv (default 1, 'same' padding), reaching a smaller
    state by DOWN (max / avg pooling, stride, none; default stride where the sizes differ)."""
    parts = str(text).split(":")
    try:
        src, dst = int(parts[0]), int(parts[1])
        kernel, down = None, None
        for p in parts[2:]:
            if p.startswith("k"):
                kernel = int(p[1:])
            elif p in SKIP_DOWN:
                down = p
            else:
                raise ValueError(p)
    except (ValueError, IndexError):
        raise ConfigError(
            f"skip {text!r}: expected SRC:DST[:kK][:DOWN], e.g. 0:2 or 2:4:k1:stride (DOWN: {', '.join(SKIP_DOWN)})"
        ) from None
    if kernel is not None and (kernel < 1 or kernel % 2 == 0):
        raise ConfigError(f"skip {text!r}: the kernel must be odd (same padding), got {kernel}")
    return src, dst, kernel, down


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One synapse layer as every consumer sees it: kind, the state shapes below and above it, and for
    a conv its kernel, padding, pooling and the (C, Hc, Wc) map before pooling."""

    kind: str  # "conv" or "dense"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int = 0
    padding: int = 0
    pool: str = "none"  # max / avg: f x f pooling after the conv; none (a strided conv has none)
    conv_shape: tuple[int, ...] = ()
    src: int = 0  # the state it reads (0: the input)
    dst: int = 1  # the state it drives
    stride: int = 1  # of the conv
    factor: int = 2  # the pooling window f
    bias: bool = True  # skip interactions have none: each state's bias sits on its chain layer

    @property
    def out_padding(self) -> tuple[int, int]:
        """Rows and columns of the input a strided conv leaves out (its transpose's output_padding):
        the one formula, read by ConvPool and the ONNX export."""
        if self.kind != "conv":
            return (0, 0)
        k, p, s = self.kernel, self.padding, self.stride
        return tuple(h - ((c - 1) * s - 2 * p + k) for h, c in zip(self.in_shape[1:], self.conv_shape[1:]))

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the forward op per example (its transpose, the feedback, costs the same)."""
        if self.kind == "conv":
            return math.prod(self.conv_shape) * self.in_shape[0] * self.kernel**2
        return math.prod(self.in_shape) * math.prod(self.out_shape)


@dataclass
class ModelConfig:
    """Architecture of a convergent ConvNet (the model section of a run). Lists run over the conv
    layers (kernels, paddings, pools) or over the hidden state layers (dropout); a scalar kernel
    applies to every conv layer. The defaults are the paper's CIFAR-10 net (App. E.1)."""

    in_shape: tuple[int, int, int] = setting((3, 32, 32), "input shape C H W (set by the data set)", flag=None)
    channels: list[int] = setting(
        [128, 256, 512, 512], "conv output channels, e.g. 128 256 512 512", many=True, type=int, check=INTS_GE1
    )
    kernels: list[int] | int = setting(3, "conv kernel sizes, one per conv layer", many=True, type=int, check=INTS_GE1)
    paddings: list[int] = setting(
        [1, 1, 1, 0],
        "conv paddings, one per conv layer",
        many=True,
        type=int,
        check=(lambda v: isinstance(v, int) and v >= 0, "integers >= 0"),
    )
    pools: list[str] = setting(
        ["max"] * 4,
        "pooling after each conv: max, avg, none, or stride (a stride-2 conv instead)",
        many=True,
        type=str,
    )
    fc: list[int] = setting([], "hidden fully connected layer sizes", many=True, type=int, check=INTS_GE1)
    n_classes: int = setting(
        10, "number of classes (set by the data set)", flag=None, check=(lambda v: v >= 2, "an integer >= 2")
    )
    loss: str = setting("ce", "mse (output layer in the dynamics) or ce (softmax read-out)")
    activation: str = setting(
        "hard-sigmoid",
        "every state's activation: hard-sigmoid (slope 1/2, Eq. 51), hard-sigmoid-1 (Eq. 50), relu6, "
        "clipped-relu-C (clip(u, 0, C)), identity, or holo-sigmoid",
    )
    activations: list[str] = setting(
        [], "one activation per state layer (overrides --activation), e.g. relu6 relu6 identity", many=True, type=str
    )
    skips: list[str] = setting(
        [],
        "skip interactions SRC:DST[:kK][:DOWN] between non-adjacent states (0 = input), e.g. 0:2 2:4:k1:stride",
        many=True,
        type=str,
    )
    dropout: list[float] = setting(
        [],
        "dropout probability per hidden state layer",
        many=True,
        type=float,
        check=(lambda v: 0 <= v < 1, "probabilities in [0, 1)"),
    )
    asymmetric: bool = setting(
        False, "separate backward weights w^b for every layer but the first (App. D.3; vf, kp-vf, bptt)"
    )
    init_gain: float = setting(
        1.0,
        "multiply PyTorch's default init of every synapse weight by this",
        check=(lambda v: 0 < v < 100, "a number in (0, 100)"),
    )
    init_gains: list[float] = setting(
        [],
        "one init gain per interaction (chain layers bottom to top, then the skips; overrides --init-gain)",
        many=True,
        type=float,
        check=(lambda v: 0 < v < 100, "numbers in (0, 100)"),
    )

    def __post_init__(self):
        self.in_shape = tuple(int(v) for v in self.in_shape)
        if isinstance(self.kernels, int):
            self.kernels = [self.kernels] * len(self.channels)
        self.channels, self.kernels = list(self.channels), list(self.kernels)
        self.paddings, self.pools, self.fc = list(self.paddings), list(self.pools), list(self.fc)
        self.dropout, self.activations = list(self.dropout), list(self.activations)
        self.skips, self.init_gains = [str(v) for v in self.skips], list(self.init_gains)
        nconv = len(self.channels)
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise ConfigError(f"in_shape must be (C, H, W) with positive sizes, got {self.in_shape}")
        check_fields(self)
        for name in ("kernels", "paddings", "pools"):
            if len(getattr(self, name)) != nconv:
                raise ConfigError(
                    f"{name} has {len(getattr(self, name))} entries for {nconv} conv layers "
                    f"(channels={self.channels}); give one per conv layer"
                )
        for p in self.pools:
            check_name("pool", p, POOLS)
        check_name("loss", self.loss, LOSSES)
        activation_form(self.activation)
        if nconv + len(self.fc) == 0 and self.loss == "ce":
            raise ConfigError("a 'ce' model needs at least one hidden layer to read out")
        n_hidden = nconv + len(self.fc)
        if self.dropout and len(self.dropout) != n_hidden:
            raise ConfigError(f"dropout has {len(self.dropout)} entries for {n_hidden} hidden state layers")
        n_states = len(self.state_shapes())  # raises if the spatial sizes collapse
        if self.activations:
            if len(self.activations) != n_states:
                raise ConfigError(f"activations has {len(self.activations)} entries for {n_states} state layers")
            for a in self.activations:
                activation_form(a)
                if a == "holo-sigmoid" or self.activation == "holo-sigmoid":
                    raise ConfigError("holo-sigmoid is one activation for every state (--activation), not per state")
        n_inter = len(self.interaction_specs())  # raises on a bad skip
        if self.init_gains and len(self.init_gains) != n_inter:
            raise ConfigError(
                f"init_gains has {len(self.init_gains)} entries for {n_inter} interactions "
                f"({n_inter - len(self.skips)} chain layers + {len(self.skips)} skips)"
            )

    def state_activations(self) -> list[str]:
        """The activation of every state layer s^1..s^N."""
        return self.activations or [self.activation] * len(self.state_shapes())

    def layer_specs(self) -> list[LayerSpec]:
        """Every synapse layer, bottom to top: convs, then the fully connected layers, then (for 'mse')
        the output layer. The one description read by the layers, the ONNX metadata and the MAC count."""
        c, h, w = self.in_shape
        specs = []
        for i, (co, k, p, pool) in enumerate(zip(self.channels, self.kernels, self.paddings, self.pools)):
            stride = 2 if pool == "stride" else 1
            hc, wc = conv_out(h, k, p, stride), conv_out(w, k, p, stride)
            oh, ow = (hc // 2, wc // 2) if pool in ("max", "avg") else (hc, wc)
            if min(hc, wc, oh, ow) < 1:
                raise ConfigError(
                    f"conv layer {i + 1} (kernel {k}, padding {p}, pool {pool}) leaves no pixels "
                    f"for input shape {self.in_shape}"
                )
            kind = "none" if pool == "stride" else pool
            specs.append(LayerSpec("conv", (c, h, w), (co, oh, ow), k, p, kind, (co, hc, wc), i, i + 1, stride))
            c, h, w = co, oh, ow
        prev = specs[-1].out_shape if specs else self.in_shape
        for n in self.fc + ([self.n_classes] if self.loss == "mse" else []):
            specs.append(LayerSpec("dense", tuple(prev), (n,), src=len(specs), dst=len(specs) + 1))
            prev = (n,)
        return specs

    def skip_specs(self) -> list[LayerSpec]:
        """The skip interactions, in the order given: shapes checked against the states they link."""
        chain = self.layer_specs()
        shapes = [self.in_shape] + [sp.out_shape for sp in chain]
        specs, seen = [], set()
        for text in self.skips:
            src, dst, k, down = parse_skip(text)
            if not 0 <= src < dst <= len(chain) or dst == src + 1 or (src, dst) in seen:
                why = "a chain layer links them" if dst == src + 1 else "given twice" if (src, dst) in seen else ""
                raise ConfigError(
                    f"skip {text!r}: needs 0 <= SRC < DST - 1 <= {len(chain) - 1} over states 0..{len(chain)} "
                    f"(0 = input){'; ' + why if why else ''}"
                )
            seen.add((src, dst))
            a, b = shapes[src], shapes[dst]
            if len(b) == 1:  # into a dense state: a dense interaction, whatever the source
                if k is not None or down is not None:
                    raise ConfigError(f"skip {text!r}: state {dst} is dense; a dense skip takes no kernel or DOWN")
                specs.append(LayerSpec("dense", a, b, src=src, dst=dst, bias=False))
                continue
            if len(a) == 1:
                raise ConfigError(f"skip {text!r}: from a dense state {src} into a conv state {dst} is not supported")
            k = 1 if k is None else k
            f = max(a[1] // b[1], 1)
            down = down or ("stride" if f > 1 else "none")
            stride = f if down == "stride" else 1
            conv = (b[0], conv_out(a[1], k, k // 2, stride), conv_out(a[2], k, k // 2, stride))
            out = (b[0], conv[1] // f, conv[2] // f) if down in ("max", "avg") else conv
            if out != tuple(b):
                raise ConfigError(
                    f"skip {text!r}: a {k}x{k} conv with {down} from state {src} {tuple(a)} gives {out}, "
                    f"not state {dst}'s {tuple(b)}"
                )
            pool = down if down in ("max", "avg") else "none"
            specs.append(LayerSpec("conv", a, b, k, k // 2, pool, conv, src, dst, stride, f, bias=False))
        return specs

    def interaction_specs(self) -> list[LayerSpec]:
        """Every interaction: the chain layers bottom to top, then the skips. The one architecture
        description read by the layers, the MAC count and the memory estimate."""
        return self.layer_specs() + self.skip_specs()

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-example shape of every state layer s^1..s^N (the output layer last for 'mse')."""
        return [s.out_shape for s in self.layer_specs()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(names)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"model config {str(d)[:100]}: a value has the wrong type ({e})") from None


ARCHITECTURES = {  # name -> overrides of ModelConfig's defaults, which are the paper's CIFAR-10 net
    "cifar10": {},  # App. E.1: 128-256-512-512, paddings 1-1-1-0, max-pool after each conv
    # CIFAR-10 on two CPU cores (presets.py cifar10-cpu): the paper's family narrowed, the slope-1 sigmoid
    "cifar10-cpu": dict(channels=[32, 64, 128, 256], activation="hard-sigmoid-1"),
    # MNIST-size net (Ernoult et al. 2019 style), 28x28 grey input
    "mnist": dict(in_shape=(1, 28, 28), channels=[32, 64], paddings=[1, 1], pools=["max"] * 2),
    # scikit-learn digits: 8x8 grey input; the net of the digits presets (presets.DIGITS)
    "digits": dict(in_shape=(1, 8, 8), channels=[32, 64], paddings=[1, 1], pools=["max"] * 2),
    # the same, narrowed to 16-32: the quick start's and the gradient checks' net (seconds)
    "digits-small": dict(in_shape=(1, 8, 8), channels=[16, 32], paddings=[1, 1], pools=["max"] * 2),
}


def model_config(arch: str | dict, **overrides) -> ModelConfig:
    """A ModelConfig from a preset name, a JSON string/file path, or a dict, plus overrides."""
    if isinstance(arch, str):
        if arch in ARCHITECTURES:
            d = dict(ARCHITECTURES[arch])
        elif arch.lstrip().startswith("{") or arch.endswith(".json"):
            try:
                d = json.loads(arch) if arch.lstrip().startswith("{") else json.loads(Path(arch).read_text())
            except (OSError, ValueError) as e:
                why = e.strerror if isinstance(e, OSError) else f"not JSON: {e}"
                raise ConfigError(f"architecture {arch[:80]!r}: {why}") from None
            if not isinstance(d, dict):
                raise ConfigError(f"architecture {arch[:80]!r}: expected a JSON object of ModelConfig fields")
        else:
            raise ConfigError(f"unknown architecture {arch!r}; give a name ({', '.join(ARCHITECTURES)}) or a JSON file")
    else:
        d = dict(arch)
    d.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(d)


# ----------------------------------------------------------------------------- model


class EPNet(nn.Module):
    """A convergent RNN: layers[n] connects s^n to s^{n+1} (s^0 = x), skips[j] links two non-adjacent
    states; optional softmax read-out."""

    def __init__(self, cfg: ModelConfig | dict):
        super().__init__()
        if isinstance(cfg, dict):  # a preset or a stored config: checked like any ModelConfig
            cfg = ModelConfig.from_dict(cfg)
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(
                f"EPNet takes a ModelConfig or a dict of its fields, got {type(cfg).__name__}; "
                "build one with ep_compile.model_config('digits')"
            )
        self.cfg = cfg
        self.acts = [activation_form(a) for a in cfg.state_activations()]  # (slope, lo, hi) per state
        self.slope = activation_form(cfg.activation)[0]  # of --activation (the export's HardSigmoid)
        self.specs = cfg.layer_specs()
        self.skip_specs = cfg.skip_specs()
        self.state_shapes = [s.out_shape for s in self.specs]
        self.layers = nn.ModuleList([self._synapse(sp) for sp in self.specs])
        last = self.specs[-1].out_shape if self.specs else cfg.in_shape
        self.readout = nn.Linear(numel(last), cfg.n_classes) if cfg.loss == "ce" else None
        self.skips = nn.ModuleList([self._synapse(sp) for sp in self.skip_specs])
        self.colours = colour_classes(len(self.state_shapes), [(sp.src, sp.dst) for sp in self.all_specs])
        gains = cfg.init_gains or [cfg.init_gain] * len(self.all_specs)
        if any(g != 1.0 for g in gains):
            # PyTorch's default init divides by sqrt(3 fan_in); with the slope-1/2 hard sigmoid every
            # layer then shrinks its input by ~5x and the top states of a 4-layer net start at ~1e-3
            with torch.no_grad():
                for layer, gain in zip(self.interactions(), gains):
                    layer.weight_f.mul_(gain)
                    if layer.weight_b is not None:
                        layer.weight_b.mul_(gain)

    def _synapse(self, sp: LayerSpec) -> Synapse:
        asym = self.cfg.asymmetric and sp.src > 0  # what reads the static input has no w^b
        if sp.kind == "conv":
            c_in, c_out = sp.in_shape[0], sp.out_shape[0]
            layer = ConvPool(
                c_in, c_out, sp.kernel, sp.padding, sp.pool, sp.conv_shape[1:], asym, sp.stride, sp.factor, sp.bias,
                out_pad=sp.out_padding,
            )  # fmt: skip
        else:
            layer = Dense(sp.in_shape, sp.out_shape[0], asym, sp.bias)
        layer.src, layer.dst = sp.src, sp.dst
        return layer

    @property
    def all_specs(self) -> list[LayerSpec]:
        return self.specs + self.skip_specs

    def interactions(self) -> list[Synapse]:
        """Every synapse: the chain layers bottom to top, then the skips (the order of all_specs)."""
        return [*self.layers, *self.skips]

    def macs_per_step(self) -> int:
        """Multiply-accumulates of one synchronous step per example: every interaction's forward op,
        plus the transposed op of every interaction that reads a state (the feedback; what reads the
        input feeds back to no state)."""
        return sum(s.macs * (2 if s.src > 0 else 1) for s in self.all_specs)

    # --- states and inputs
    def init_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        """s = 0 for every layer: [(B, *shape_n)]."""
        return [like.new_zeros(batch, *s) for s in self.state_shapes]

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.cfg.in_shape:
            raise ConfigError(
                f"input of shape {tuple(x.shape)} does not fit the first layer: expected "
                f"(B, {', '.join(map(str, self.cfg.in_shape))})"
            )

    def sigma(self, u: torch.Tensor, n: int) -> torch.Tensor:
        """State n's activation: clamp(slope * u, lo, hi) (the hard sigmoids of Eq. 50/51, relu6, a
        clipped ReLU), the identity, or the holomorphic holo-sigmoid."""
        if self.cfg.activation == "holo-sigmoid":
            return holo_sigmoid(u)
        slope, lo, hi = self.acts[n]
        if lo == -math.inf:
            return u * slope
        return (u * slope).clamp(lo, hi)

    def dropout_masks(self, batch: int, like: torch.Tensor, generator=None) -> list | None:
        """One mask per example and hidden layer, scaled by 1/(1-p); fixed for a whole iteration
        (all phases and steps, App. E.3). None when the model has no dropout."""
        if not any(self.cfg.dropout):
            return None
        masks = []
        for p, shape in zip(self.cfg.dropout, self.state_shapes):
            if p == 0:
                masks.append(None)
                continue
            keep = torch.rand((batch, *shape), generator=generator, device=like.device, dtype=like.dtype)
            masks.append((keep >= p).to(like.dtype) / (1 - p))
        return masks + [None] * (len(self.state_shapes) - len(masks))

    @staticmethod
    def apply_masks(states, masks):
        if masks is None:
            return list(states)
        return [s if m is None else s * m for s, m in zip(states, masks)]

    # --- primitive function, loss and read-out (the reference everything is tested against)
    def phi(self, x: torch.Tensor, states, masks=None) -> torch.Tensor:
        """Phi(x, s) of Eq. 7 per example (B,); dropped-out units are zero in every term."""
        layers = [x] + self.apply_masks(states, masks)
        return sum(layer.phi(layers[layer.src], layers[layer.dst]) for layer in self.interactions())

    def logits(self, states, masks=None) -> torch.Tensor:
        """Class scores (B, n_classes): the read-out w_out . s^N ('ce') or the output layer ('mse')."""
        last = self.apply_masks(states, masks)[-1]
        if self.readout is None:
            return last
        if last.is_complex():  # holomorphic EP's complex states: the real read-out part by part
            return real_linear(lambda t: F.linear(t.flatten(1), self.readout.weight), last) + self.readout.bias
        return self.readout(last.flatten(1))

    def loss(self, states, y: torch.Tensor, masks=None) -> torch.Tensor:
        """l(s, y) per example (B,): 1/2 ||s^N - y||^2 (Eq. 15) or cross-entropy of the read-out (Eq. 18)."""
        z = self.logits(states, masks)
        if self.readout is None:
            return 0.5 * (z - F.one_hot(y, self.cfg.n_classes).to(z.dtype)).pow(2).sum(dim=1)
        return F.cross_entropy(z, y, reduction="none")

    def dloss_ds(self, states, y: torch.Tensor, masks=None) -> torch.Tensor:
        """dl/ds~^N for the last (dropped-out) state, explicit: s - y, or w_out^T (softmax - y)."""
        z = self.logits(states, masks)
        err = (z.softmax(dim=1) if self.readout is not None else z) - F.one_hot(y, self.cfg.n_classes).to(z.dtype)
        if self.readout is None:
            return err  # (B, n_classes)
        return (err @ self.readout.weight).view_as(states[-1])  # (B, *shape_N)

    def phi_tilde(self, x: torch.Tensor, states, masks=None) -> torch.Tensor:
        """Sum over layers of the per-layer functions Phi~_n of Eq. 46, arranged so that d/ds^n of the
        sum is dPhi~_n/ds^n: forward terms see the pre-synaptic state as a constant, backward terms
        the post-synaptic one. Its state gradient is the asymmetric drive (Eq. 47); with w^b = w^f it
        equals dPhi/ds. Not a primitive function: only its state gradient has a meaning."""
        layers = [x] + self.apply_masks(states, masks)
        total = 0
        for layer in self.interactions():
            pre, post = layers[layer.src], layers[layer.dst]
            total = total + layer.phi(pre.detach(), post)
            if layer.src > 0:
                total = total + layer.phi_b(pre, post.detach())
        return total


def layer_groups(model: EPNet) -> list[tuple[str, list[int]]]:
    """Names for reporting ('conv1', 'fc1', 'out', 'readout'; 'conv2_b' for backward weights) and
    the indices of their parameters in list(model.parameters()); the weight comes first."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    groups, nconv = [], len(model.cfg.channels)

    def add(name: str, layer: Synapse):
        groups.append((name, [index[id(p)] for p in layer.parameters() if p is not layer.weight_b]))
        if layer.weight_b is not None:
            groups.append((f"{name}_b", [index[id(layer.weight_b)]]))

    for n, layer in enumerate(model.layers):
        if n < nconv:
            add(f"conv{n + 1}", layer)
        elif model.readout is None and n == len(model.layers) - 1:
            add("out", layer)
        else:
            add(f"fc{n - nconv + 1}", layer)
    if model.readout is not None:
        groups.append(("readout", [index[id(p)] for p in model.readout.parameters()]))
    for layer in model.skips:
        add(f"skip{layer.src}_{layer.dst}", layer)
    return groups


def colour_classes(n_states: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """Greedy colouring of the state graph (0-based state indices; edges as (src, dst) over 0 = input):
    each state takes the lowest colour none of its linked, already coloured states has. Classes share
    no interaction, so updating one class from the others is an exact block step. A chain gives the
    even and odd layers (the even/odd schedule); a skip between two states of the same parity (e.g.
    Hopfield-ResNet13's 2 -> 4 over the triangle 2-3-4) needs a third class."""
    nbrs = [set() for _ in range(n_states)]
    for a, b in edges:
        if a > 0:  # the input is no state
            nbrs[a - 1].add(b - 1)
            nbrs[b - 1].add(a - 1)
    colour: list[int] = []
    for n in range(n_states):
        used = {colour[m] for m in nbrs[n] if m < n}
        colour.append(next(c for c in range(n_states + 1) if c not in used))
    return [[n for n in range(n_states) if colour[n] == c] for c in range(max(colour, default=-1) + 1)]
