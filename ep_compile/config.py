"""One run configuration: every setting of a training run with its one default, its flag, its help
and its check, in one typed dataclass (sections: model, phases, optimizer, data, run).

    cfg = RunConfig.from_args(args)          # a preset, then the flags given, then validate()
    cfg = RunConfig.from_dict(ck["config"])  # a checkpoint's stored config (checked the same way)

Presets (presets.py) are small overrides of these defaults, which are the `digits-ce-symmetric`
preset, the script's embedded one. Library functions read a config by
key (`cfg["T"]`), so a RunConfig and the plain dict stored in a checkpoint work alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import registry
from .data import DATASETS
from .model import ConfigError, EPNet, ModelConfig, closest
from .presets import PRESETS
from .registry import check_compatible
from .training import MODEL_KEYS, load_checkpoint

DTYPES = {"float32": torch.float32, "float64": torch.float64}  # --dtype: the parameters' and states' dtype
QUANTIZERS = ("sigma-delta", "stochastic")  # spiking.py: how a unit encodes its activation into spikes
SCHEDULES = ("harmonic", "constant", "power")  # the decoders' step size lambda_t


@dataclass
class SpikeConfig:
    """The spiking section (--spike-*, spiking.py): the encoder and the decoders' step sizes."""

    quantizer: str = "sigma-delta"
    schedule: str = "harmonic"
    t0: float = 0.0  # free phase: lambda_1 = 1 / (1 + t0)
    nudge_t0: float = 10.0  # nudged phases start from the free rates, which weigh like t0 spikes
    lam: float = 0.05  # the constant schedule's step
    kappa: float = 0.8  # the power schedule's exponent

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"unknown spike quantizer {self.quantizer!r}; valid: {', '.join(QUANTIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown step-size schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.t0 < 0 or self.nudge_t0 < 0 or not 0 < self.lam <= 1 or not 0 < self.kappa <= 1:
            raise ConfigError(f"spike schedule out of range: t0, nudge_t0 >= 0, lam and kappa in (0, 1]: {self}")

    def step_size(self, t: int, t0: float) -> float:
        if self.schedule == "constant":
            return self.lam
        if self.schedule == "power":
            return min(1.0, (t + t0) ** -self.kappa)
        return 1.0 / (t + t0)


def check_spiking(model: EPNet) -> None:
    """Spiking nets run every layer kind of the rate network (conv with max, average or no pooling,
    dense); nothing to refuse. Kept as the one place for such checks."""
    if not model.layers:
        raise ConfigError("a spiking network needs at least one layer")


def _f(default, help: str, section: str, *, flag: str | None = "", many: bool = False, typ=None):
    """A field with its flag (None: no flag of its own; '': --name-with-dashes) and help."""
    factory = (lambda: list(default)) if isinstance(default, list) else (lambda: dict(default))
    meta = {"help": help, "section": section, "flag": flag, "many": many, "type": typ}
    if isinstance(default, (list, dict)):
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # --- model (ModelConfig's keys, plus the neuron model)
    in_shape: list = _f([1, 8, 8], "input shape C H W (set by the data set)", "model", flag=None)
    channels: list = _f([32, 64], "conv output channels, e.g. 128 256 512 512", "model", many=True, typ=int)
    kernels: list = _f([3, 3], "conv kernel sizes, one per conv layer", "model", many=True, typ=int)
    paddings: list = _f([1, 1], "conv paddings, one per conv layer", "model", many=True, typ=int)
    pools: list = _f(["max", "max"], "pooling after each conv: max, avg or none", "model", many=True, typ=str)
    fc: list = _f([], "hidden fully connected layer sizes", "model", many=True, typ=int)
    n_classes: int = _f(10, "number of classes (set by the data set)", "model", flag=None)
    loss: str = _f("ce", "mse (output layer in the dynamics) or ce (softmax read-out)", "model")
    activation: str = _f(
        "hard-sigmoid", "hard-sigmoid (slope 1/2, Eq. 51), hard-sigmoid-1 (Eq. 50) or holo-sigmoid", "model"
    )
    dropout: list = _f([], "dropout probability per hidden state layer", "model", many=True, typ=float)
    asymmetric: bool = _f(False, "separate backward weights (for vf, kp-vf, bptt)", "model")
    init_gain: float = _f(1.0, "multiply PyTorch's default init of every synapse weight by this", "model")
    neuron: str = _f("rate", "rate units, or binary spikes through sigma-delta encoders", "model")
    spike: dict = _f({}, "spiking options (--spike-*)", "model", flag=None)
    # --- phases
    estimator: str = _f("symmetric", "gradient estimator", "phases")
    T: int = _f(30, "free-phase steps", "phases", flag="--T")
    K: int = _f(10, "nudged-phase steps", "phases", flag="--K")
    beta: float = _f(0.5, "nudging strength", "phases")
    bptt_steps: int | None = _f(None, "truncate BPTT to the last k free steps (default: all T)", "phases")
    schedule: str = _f("sync", "sync (all layers from s_t) or evenodd (asynchronous, fewer steps)", "phases")
    tol: float = _f(0.0, "stop the free phase once no state changes by more than tol in a step (0: run T)", "phases")
    check_every: int = _f(10, "measure the state change every N steps (fewer host syncs)", "phases")
    fused: bool = _f(False, "run the +beta and -beta phases as one batch of 2B", "phases")
    amp: str | None = _f(None, "bf16: run the phases under bfloat16 autocast (estimate taken in float32)", "phases")
    vf_form: str = _f(
        "linearized",
        "vf backward weights: linearized (Eq. 41-42) or paper-code (each phase's own pool winners)",
        "phases",
    )
    hep_points: int = _f(4, "holomorphic: number N of complex nudges on the circle |beta|", "phases")
    # --- optimizer
    optimizer: str = _f(
        "sgd",
        "sgd (SGD with momentum, the paper's), adam (AdamW: scale-free steps) or adam-phase (AdamW with "
        "statistics moved once per iteration: time-local increments add up to the EP step)",
        "optimizer",
    )
    lrs: list = _f(
        [0.2, 0.1, 0.05],
        "layer-wise initial learning rates, bottom to top (read-out last)",
        "optimizer",
        many=True,
        typ=float,
    )
    momentum: float = _f(0.9, "SGD momentum", "optimizer")
    weight_decay: float = _f(3e-4, "weight decay (all layers)", "optimizer")
    lr_min: float = _f(1e-4, "final learning rate of the cosine schedule", "optimizer")
    decay_epochs: int = _f(15, "cosine annealing length in epochs", "optimizer")
    warmup_epochs: float = _f(0.0, "linear learning-rate warm-up from lr/10 over this many epochs", "optimizer")
    lr_per_step: bool = _f(False, "move the learning-rate schedule every step, not every epoch", "optimizer")
    wd_compensation: bool = _f(False, "continual estimators: divide increment k by (1 - lr wd)^(K-1-k)", "optimizer")
    epochs: int = _f(15, "number of epochs", "optimizer")
    batch_size: int = _f(64, "global batch size (split across processes)", "optimizer")
    # --- data
    dataset: str = _f("digits", "data set: digits, fashion-mnist, cifar10, cifar100", "data")
    data_root: str | None = _f(None, "local data: torchvision folder, ImageFolder tree or .tar.gz of one", "data")
    cache_dir: str | None = _f(None, "where decoded data sets are cached (default ~/.cache/ep_compile)", "data")
    val_size: int | None = _f(None, "validation examples held out of the training set", "data")
    train_subset: int | None = _f(None, "train on the first N examples only", "data")
    test_subset: int | None = _f(None, "evaluate on the first N test examples only", "data")
    std_scale: float = _f(3.0, "inputs are divided by std_scale * std (3 as in the paper's code)", "data")
    augment: bool = _f(False, "random crop and flip (the paper's augmentation)", "data", flag=None)
    mean: list | None = _f(None, "per-channel mean of the training set (set from the data)", "data", flag=None)
    std: list | None = _f(None, "per-channel std of the training set (set from the data)", "data", flag=None)
    classes: list | None = _f(None, "class names (set from the data)", "data", flag=None)
    # --- run
    preset: str = _f("digits-ce-symmetric", "the preset this run started from", "run", flag=None)
    seed: int = _f(0, "seed for weights, data order, augmentation, dropout and random signs", "run")
    out: str | None = _f(None, "run folder for checkpoints, metrics.jsonl, config.json, curves.png", "run")
    checkpoint_every: int = _f(0, "also checkpoint every N steps within an epoch (0: per epoch)", "run")
    eval_batch_size: int = _f(500, "batch size of the evaluation passes", "run")
    eval_every: float = _f(0.0, "also evaluate the test set every f epochs inside an epoch (e.g. 0.5)", "run")
    dtype: str = _f("float32", "float32, or float64 for checks that need rounding out of the way", "run")
    compile: bool = _f(False, "torch.compile the step", "run", flag=None)
    compile_mode: str | None = _f(None, "torch.compile mode, e.g. reduce-overhead (CUDA graphs on a GPU)", "run")
    channels_last: bool = _f(False, "channels_last memory format (faster convs)", "run")
    stop_at_accuracy: float = _f(0.0, "stop after the first epoch whose test accuracy reaches this", "run")
    max_hours: float = _f(0.0, "stop after the last epoch that ends within this many hours of training", "run")

    # ------------------------------------------------------------------ access and conversion
    def __getitem__(self, key: str):
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key, default)

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict({k: getattr(self, k) for k in MODEL_KEYS})

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown run settings {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**d)

    # ------------------------------------------------------------------ the flags
    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        """One flag per setting (default None: 'not given'), in one argument group per section."""
        groups = {}
        for f in dataclasses.fields(RunConfig):
            m = f.metadata
            if m["flag"] is None:
                continue
            g = groups.get(m["section"]) or groups.setdefault(m["section"], parser.add_argument_group(m["section"]))
            flag = m["flag"] or "--" + f.name.replace("_", "-")
            if f.type == "bool":
                g.add_argument(flag, dest=f.name, action="store_true", default=None, help=m["help"])
                continue
            typ = m["type"] or {"int": int, "float": float}.get(f.type.split(" |")[0], str)
            nargs = "+" if m["many"] else None
            hlp = m["help"] + (": " + ", ".join(registry.ENTRIES) if f.name == "estimator" else "")
            g.add_argument(flag, dest=f.name, type=typ, nargs=nargs, default=None, help=f"{hlp} {_shown(f)}")
        g = groups["data"]
        g.add_argument("--no-augment", action="store_true", help="no random crop / flip")
        g.add_argument("--augment", action="store_true", help="random crop and flip (the paper's augmentation)")
        g = groups["run"]
        g.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the step")
        g.add_argument("--no-compile", dest="compile", action="store_false", help="run the step eagerly")
        g = groups["model"]
        for key, hlp, typ in SPIKE_FLAGS:
            g.add_argument(f"--spike-{key.replace('_', '-')}", dest=f"spike_{key}", type=typ, default=None, help=hlp)

    @staticmethod
    def given(args) -> dict:
        """The settings whose flags were given on the command line."""
        out = {}
        for f in dataclasses.fields(RunConfig):
            if f.metadata["flag"] is not None and getattr(args, f.name, None) is not None:
                out[f.name] = getattr(args, f.name)
        if getattr(args, "compile", None) is not None:
            out["compile"] = args.compile
        if args.no_augment and args.augment:
            raise ConfigError("--augment and --no-augment contradict each other: give one")
        if args.no_augment or args.augment:
            out["augment"] = bool(args.augment)
        return out

    @classmethod
    def from_args(cls, args) -> RunConfig:
        """The preset, the flags given over it, validated."""
        if args.preset not in PRESETS:
            hit = closest(args.preset, PRESETS)
            hint = f"did you mean {hit!r}?" if hit else "see --list-presets"
            raise ConfigError(f"unknown preset {args.preset!r}; {hint}")
        given = cls.given(args)
        d = {**PRESETS[args.preset], "preset": args.preset, **given}
        spike = dict(d.get("spike", {}))
        spike.update(
            {k: getattr(args, f"spike_{k}") for k, _, _ in SPIKE_FLAGS if getattr(args, f"spike_{k}") is not None}
        )
        if spike and d.get("neuron", "rate") != "spiking":
            raise ConfigError(f"spike options {sorted(spike)} need --neuron spiking")
        d["spike"] = spike
        cfg = cls.from_dict(d)
        if cfg.out is None:
            cfg.out = f"runs/{args.preset}"
        cfg.validate(set(given))
        check_out(cfg.out)
        return cfg

    @classmethod
    def resume(cls, args) -> RunConfig:
        """The checkpoint's own config; --resume FILE continues in that file's folder. Flags that would
        change the run are refused unless they repeat the stored value; the few that may change are
        applied and reported."""
        path = Path(args.resume)
        if getattr(args, "overwrite", False):
            raise ConfigError(f"--resume {path} continues the run, --overwrite would replace it: give one")
        stored = load_checkpoint(path)["config"]
        cfg = cls.from_dict(stored)
        cfg.out = str(path if path.is_dir() else path.parent)
        check_folder_config(Path(cfg.out), stored)
        check_out(cfg.out)
        for key, v in cls.given(args).items():
            if v == cfg[key]:
                continue
            flag = "--" + key.replace("_", "-") if key not in ("T", "K") else f"--{key}"
            if key == "out":
                raise ConfigError(f"--resume {path} continues in {cfg.out}; drop --out {v}")
            if key not in RESUME_MAY_CHANGE:
                may = ", ".join("--" + k.replace("_", "-") for k in sorted(RESUME_MAY_CHANGE))
                raise ConfigError(
                    f"--resume continues the stored run, which has {key}={cfg[key]!r}; {flag} {v!r} would "
                    f"change it (may change: {may})"
                )
            print(f"cifar.py: resuming with {key}={v!r} (was {cfg[key]!r})", file=sys.stderr)
            setattr(cfg, key, v)
        check_values(cfg)
        return cfg

    # ------------------------------------------------------------------ validation, in one place
    def validate(self, given: set = frozenset()) -> None:
        """Every value in range, names known, the combination honoured: one ConfigError naming the
        flag and the value, before anything is built or written."""
        SpikeConfig(**self.spike)  # unknown quantizer / schedule names fail here, naming the valid ones
        if self.neuron not in ("rate", "spiking"):
            raise ConfigError(f"--neuron {self.neuron!r}: expected rate or spiking")
        if self.neuron == "spiking":  # the spiking form of the rate estimator asked for (registry.rate_form)
            spiking = registry.spiking_form(self.estimator)
            if spiking is None:
                forms = [e.rate_form for e in registry.ENTRIES.values() if e.rate_form]
                raise ConfigError(f"--neuron spiking supports estimators {' and '.join(forms)}, not {self.estimator!r}")
            self.estimator = spiking
        elif registry.entry(self.estimator).spiking:
            raise ConfigError(f"estimator {self.estimator!r} needs --neuron spiking")
        registry.entry(self.estimator)  # unknown names, listing the valid ones
        check_values(self)
        for key, valid in (("dtype", DTYPES), ("dataset", DATASETS)):
            if self[key] not in valid:
                raise ConfigError(f"unknown {key} {self[key]!r}; valid: {', '.join(valid)}")
        check_memory(self)  # before the model below is allocated
        model = EPNet(self.model_config())
        check_compatible(self.estimator, model)
        if self.neuron == "spiking":
            check_spiking(model)
        check_honoured(self, given)


def _shown(f) -> str:
    """'(default: X)' for --help: RunConfig's default, which a preset may override."""
    d = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if d is None or d == [] or d == {}:
        return "(default: unset)"
    return f"(default: {' '.join(map(str, d)) if isinstance(d, list) else d})"


def cautions(cfg: RunConfig) -> list[str]:
    """Combinations that run but were measured to train to chance, each as one line naming what
    works (RESULTS.md section 3): the caller prints them before training."""
    out = []
    e = registry.entry(cfg.estimator)
    if e.time_local and not e.spiking and cfg.channels and cfg.optimizer == "sgd":
        out.append(
            f"caution: --estimator {cfg.estimator} with --optimizer sgd on a ConvNet was measured to train to "
            "chance (SGD's in-phase steps run away); --optimizer adam-phase or --preset digits-cep-conv learn"
        )
    return out


SPIKE_FLAGS = (  # --spike-KEY -> RunConfig.spike[KEY]
    ("quantizer", "spiking: sigma-delta (deterministic) or stochastic", str),
    ("schedule", "spiking decoder step size: harmonic, constant, power", str),
    ("t0", "spiking: harmonic/power offset t0 of the free phase", float),
    ("nudge_t0", "spiking: t0 of the nudged phases", float),
    ("lam", "spiking: step of the constant schedule", float),
    ("kappa", "spiking: exponent of the power schedule", float),
)
# may change on --resume (applied, said so): how long and how often, and compiling the step or not
RESUME_MAY_CHANGE = {"epochs", "checkpoint_every", "eval_batch_size", "stop_at_accuracy", "max_hours", "compile"}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# setting -> (test every value must pass, what the message says is expected); flags are --key-with-dashes
VALUE_RULES = {
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "T": (lambda v: v >= 1, "an integer >= 1"),
    "K": (lambda v: v >= 1, "an integer >= 1"),
    "beta": (_finite, "a finite number"),
    "tol": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "check_every": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: v >= 0, "an integer >= 0 (0: once per epoch)"),
    "lrs": (lambda v: _finite(v) and v > 0, "finite numbers > 0"),
    "momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "lr_min": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "decay_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "warmup_epochs": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "eval_every": (lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0: once per epoch)"),
    "std_scale": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "channels": (lambda v: v >= 1, "integers >= 1"),
    "kernels": (lambda v: v >= 1, "integers >= 1"),
    "paddings": (lambda v: v >= 0, "integers >= 0"),
    "fc": (lambda v: v >= 1, "integers >= 1"),
    "dropout": (lambda v: _finite(v) and 0 <= v < 1, "probabilities in [0, 1)"),
    "val_size": (lambda v: v >= 0, "an integer >= 0"),
    "train_subset": (lambda v: v >= 1, "an integer >= 1"),
    "test_subset": (lambda v: v >= 1, "an integer >= 1"),
    "stop_at_accuracy": (lambda v: _finite(v) and 0 <= v <= 1, "a fraction in [0, 1] (0: off)"),
    "max_hours": (lambda v: _finite(v) and v >= 0, "a number of hours >= 0 (0: off)"),
    # training.step_generator mixes (seed, epoch, step) into one 64-bit generator seed
    "seed": (lambda v: isinstance(v, int) and 0 <= v < 2**24, f"an integer in [0, {2**24})"),
}


def check_values(config) -> None:
    """Every numeric setting in its range (a RunConfig or a dict): one ConfigError naming the flag
    and the value it got."""
    for key, (ok, expected) in VALUE_RULES.items():
        v = config.get(key)
        if v is None:
            continue
        values = v if isinstance(v, (list, tuple)) else [v]
        if not all(isinstance(x, (int, float)) and ok(x) for x in values):
            shown = " ".join(str(x) for x in values)
            raise ConfigError(f"--{key.replace('_', '-')} {shown}: expected {expected}")
    e = registry.ENTRIES.get(config.get("estimator"))
    if config.get("K", 0) > config.get("T", 0) and not (e and e.unrolled):  # BPTT's K is its truncation
        raise ConfigError(
            f"--K {config['K']} exceeds --T {config['T']}: the nudged phase is at most as long as the free one"
        )
    if config.get("bptt_steps") is not None and not 1 <= config["bptt_steps"] <= config.get("T", 0):
        raise ConfigError(f"--bptt-steps {config['bptt_steps']}: expected an integer in [1, T={config.get('T')}]")
    if config.get("data_root") and config.get("dataset") == "digits":
        raise ConfigError(
            f"--data-root {config['data_root']}: the digits set ships with scikit-learn and takes no data root"
        )


def check_folder_config(out: Path, stored: dict) -> None:
    """The folder's config.json describes the checkpoint's run: a hand-edited config.json or a
    last.pt copied in from another run is refused, not overwritten (settings a resume may change
    are left out of the comparison)."""
    f = out / "config.json"
    if not f.exists():
        return
    try:
        on_disk = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{f} is unreadable ({type(e).__name__}): move it away to resume from last.pt") from None
    if not isinstance(on_disk, dict):
        raise ConfigError(f"{f} is not a run config: move it away to resume from last.pt")
    differ = sorted(
        k
        for k in set(on_disk) | set(stored)
        if k not in RESUME_MAY_CHANGE and k != "out" and on_disk.get(k) != stored.get(k)
    )
    if differ:
        k = differ[0]
        raise ConfigError(
            f"{f} does not describe {out / 'last.pt'} ({k}: {on_disk.get(k)!r} vs {stored.get(k)!r}"
            f"{f' and {len(differ) - 1} more' if len(differ) > 1 else ''}): one of them was edited or copied in"
        )


def check_out(out: str) -> None:
    """The run folder can be made and written: one line naming it, before anything is loaded."""
    if not out or not str(out).strip():
        raise ConfigError(
            f"--out {out!r}: expected a folder name (an empty one would write into the working directory)"
        )
    path = Path(out)
    long = [part for part in path.parts if len(part.encode()) > 255]
    if long:
        raise ConfigError(f"--out {out[:60]}...: the name {long[0][:24]}... is over 255 bytes")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {out}: {probe} is a file, so no folder can be made under it")
    try:  # a real write: permissions, read-only mounts and pseudo file systems all answer here
        import tempfile

        Path(tempfile.mkdtemp(prefix=".ep-probe-", dir=probe)).rmdir()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write in {probe} ({e.strerror or type(e).__name__})") from None


def memory_estimate(cfg) -> int:
    """Bytes a run needs about, from the architecture alone (nothing allocated): the weights with
    their gradients, optimizer moments and checkpoint copy (x6, x2 again for backward weights), and
    the states of a training batch (x12: free, nudged and scratch copies) and of an eval batch (x3)."""
    mc = cfg.model_config()
    specs = mc.layer_specs()
    weights = 0
    for sp in specs:
        n = (
            sp.in_shape[0] * sp.out_shape[0] * sp.kernel**2
            if sp.kind == "conv"
            else math.prod(sp.in_shape) * sp.out_shape[0]
        )
        weights += n * (2 if mc.asymmetric else 1)
    weights += math.prod(specs[-1].out_shape if specs else mc.in_shape) * mc.n_classes  # the read-out
    states = sum(math.prod(sp.conv_shape or sp.out_shape) for sp in specs)
    batch = cfg.batch_size * 12 + cfg.eval_batch_size * 3
    return 4 * (6 * weights + states * batch)


def check_memory(cfg) -> None:
    """Refuse a run that cannot fit in this machine's memory, before anything is built."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    need = memory_estimate(cfg)
    if need > total:
        raise ConfigError(
            f"--channels {' '.join(map(str, cfg.channels)) or '(none)'} --fc {' '.join(map(str, cfg.fc)) or '(none)'} "
            f"--batch-size {cfg.batch_size}: the run needs about {need / 2**30:.0f} GiB, this machine has "
            f"{total / 2**30:.0f} GiB"
        )


def check_honoured(cfg: RunConfig, given: set) -> None:
    """Refuse, in one line, every setting the chosen path would silently ignore."""
    est, e = cfg.estimator, registry.entry(cfg.estimator)
    spiking, bptt = cfg.neuron == "spiking", e.unrolled
    fusable = e.two_sided and e.rule is not None and not (e.time_local or e.spiking)  # symmetric, vf, kp-vf
    ignored = []
    if spiking:  # the spiking phases run their own eager loop with a decoder schedule
        ignored += [f for f, on in (("--compile", cfg.compile), ("--fused", cfg.fused)) if on]
        ignored += [f"--schedule {cfg.schedule}"] if cfg.schedule != "sync" else []
        ignored += [f"--tol {cfg.tol}"] if cfg.tol > 0 else []
        ignored += [f"--amp {cfg.amp}"] if cfg.amp else []
        ignored += ["--channels-last"] if cfg.channels_last else []
    if cfg.fused and not fusable and not spiking:
        ignored.append("--fused (only two-phase estimators: symmetric, vf, kp-vf)")
    if cfg.tol > 0 and bptt:
        ignored.append(f"--tol {cfg.tol} (BPTT unrolls all T steps)")
    if cfg.amp and e.time_local and not spiking:
        ignored.append(f"--amp {cfg.amp} (time-local estimators run their nudged steps in full precision)")
    if cfg.vf_form != "linearized" and not e.takes_vf_form:
        vf = " and ".join(n for n, x in registry.ENTRIES.items() if x.takes_vf_form)
        ignored.append(f"--vf-form {cfg.vf_form} (only {vf})")
    if "hep_points" in given and not e.complex_nudge:
        ignored.append("--hep-points (only --estimator holomorphic)")
    if cfg.amp and e.complex_nudge:
        ignored.append(f"--amp {cfg.amp} (holomorphic runs its complex phases in full precision)")
    if cfg.wd_compensation and not e.time_local:
        ignored.append("--wd-compensation (only time-local estimators)")
    if "bptt_steps" in given and not bptt:
        ignored.append("--bptt-steps (only --estimator bptt)")
    if ignored:
        what = f"--neuron spiking with estimator {est!r}" if spiking else f"estimator {est!r}"
        raise ConfigError(f"{what} would ignore {', '.join(ignored)}: drop it or change the estimator")
