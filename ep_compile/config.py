"""One run configuration, composed of the sections that own its settings: the model (ModelConfig,
model.py), the phases (Phases), the spiking encoders (SpikeConfig), the optimizer, the data and the
run itself, each a dataclass whose fields carry their one default, help, flag and check
(settings.py). The estimator and the neuron model sit on top. Access is typed: `cfg.phases.T`.

    cfg = RunConfig.from_args(args)          # a preset, then the flags given, then validate()
    cfg = RunConfig.from_dict(ck["config"])  # a checkpoint's stored config (checked the same way)

The defaults are the paper's CIFAR-10 net and cross-entropy recipe (`ce-symmetric`, App. E); a
preset (presets.py) overrides some of them. A stored config is flat, one key per setting (the names
are unique across sections; the spiking section is stored as one dict): checkpoints of every
version of this file load.
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
from .checkpoint import load_checkpoint
from .data import DATASETS
from .dynamics import SCHEDULES as STEP_SCHEDULES
from .model import EPNet, ModelConfig
from .optim import OPTIMIZERS
from .presets import PRESETS
from .registry import check_compatible
from .settings import (
    FINITE,
    FINITE_GE0,
    FINITE_GT0,
    INT_GE0,
    INT_GE1,
    ConfigError,
    check_fields,
    check_name,
    closest,
    default_of,
    finite,
    flag_of,
    setting,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}  # --dtype: the parameters' and states' dtype
QUANTIZERS = ("sigma-delta", "stochastic")  # spiking.py: how a unit encodes its activation into spikes
SPIKE_SCHEDULES = ("harmonic", "constant", "power")  # the decoders' step size lambda_t
VF_FORMS = ("linearized", "paper-code")  # estimators.vf_gradient: which backward weights VF uses
# --amp: bf16 runs every phase under bfloat16 autocast; bf16-free only the free phase, the nudged
# phases (whose difference is the estimate) and BPTT's unrolled steps staying in float32
AMP_MODES = ("bf16", "bf16-free")
NEURONS = ("rate", "spiking")
UNIT = (lambda v: finite(v) and 0 < v <= 1, "a number in (0, 1]")
FRACTION = (lambda v: finite(v) and 0 <= v <= 1, "a fraction in [0, 1] (0: off)")


@dataclass
class Phases:
    """Lengths of the phases and the nudging strength, and how to run them (the phases section,
    read by every estimator). The defaults are the paper's cross-entropy recipe (Table 3)."""

    T: int = setting(250, "free-phase steps", flag="--T", check=INT_GE1)
    K: int = setting(25, "nudged-phase steps", flag="--K", check=INT_GE1)
    beta: float = setting(1.0, "nudging strength", check=FINITE)
    bptt_steps: int | None = setting(
        None,
        "truncate BPTT to the last k free steps (default: all T)",
        check=(lambda v: isinstance(v, int) and v >= 1, "an integer in [1, T]"),
    )
    schedule: str = setting("sync", "sync (all layers from s_t) or evenodd (asynchronous, fewer steps)")
    tol: float = setting(
        0.0, "stop the free phase once no state changes by more than tol in a step (0: run T)", check=FINITE_GE0
    )
    check_every: int = setting(10, "measure the state change every N steps (fewer host syncs)", check=INT_GE1)
    fused: bool = setting(False, "run the +beta and -beta phases as one batch of 2B")
    amp: str | None = setting(
        None,
        "bf16: every phase under bfloat16 autocast; bf16-free: the free phase only, the nudged phases in "
        "float32 (the estimate is always taken in float32)",
    )
    vf_form: str = setting(
        "linearized", "vf backward weights: linearized (Eq. 41-42) or paper-code (each phase's own pool winners)"
    )
    hep_points: int = setting(
        4,
        "holomorphic: number N of complex nudges on the circle |beta|",
        check=(lambda v: isinstance(v, int) and 2 <= v <= 64, "an integer in [2, 64]"),
    )
    lr: float = setting(1e-6, "continual estimators without an update callback: their SGD step", stored=False)
    spiking: object = setting(None, "the spiking section for the spiking estimators (None: its defaults)", stored=False)

    def __post_init__(self):
        check_fields(self)
        check_name("schedule", self.schedule, STEP_SCHEDULES)
        check_name("vf_form", self.vf_form, VF_FORMS)
        if self.amp is not None and self.amp not in AMP_MODES:
            raise ConfigError(f"--amp {self.amp}: expected one of {', '.join(AMP_MODES)} (or no --amp)")
        if self.bptt_steps is not None and self.bptt_steps > self.T:
            raise ConfigError(f"--bptt-steps {self.bptt_steps}: expected an integer in [1, T={self.T}]")
        self.beta = float(self.beta)

    def require_beta(self, estimator: str) -> None:
        if not self.beta > 0:
            raise ConfigError(f"estimator {estimator!r} nudges: beta must be > 0, got {self.beta!r}")

    def check_lengths(self, unrolled: bool = False) -> None:
        """The nudged phase is at most as long as the free one (BPTT's K is only its truncation)."""
        if self.K > self.T and not unrolled:
            raise ConfigError(f"--K {self.K} exceeds --T {self.T}: the nudged phase is at most as long as the free one")


@dataclass
class SpikeConfig:
    """The spiking section (--spike-*, spiking.py): the encoder and the decoders' step sizes."""

    quantizer: str = setting(
        "sigma-delta", "spiking: sigma-delta (deterministic) or stochastic", flag="--spike-quantizer"
    )
    schedule: str = setting("harmonic", "spiking decoder step size: harmonic, constant, power", flag="--spike-schedule")
    t0: float = setting(0.0, "spiking: harmonic/power offset t0 of the free phase", flag="--spike-t0", check=FINITE_GE0)
    nudge_t0: float = setting(
        10.0,
        "spiking: t0 of the nudged phases (they start from the free rates)",
        flag="--spike-nudge-t0",
        check=FINITE_GE0,
    )
    lam: float = setting(0.05, "spiking: step of the constant schedule", flag="--spike-lam", check=UNIT)
    kappa: float = setting(0.8, "spiking: exponent of the power schedule", flag="--spike-kappa", check=UNIT)

    def __post_init__(self):
        check_name("spike quantizer", self.quantizer, QUANTIZERS)
        check_name("step-size schedule", self.schedule, SPIKE_SCHEDULES)
        check_fields(self)

    def step_size(self, t: int, t0: float) -> float:
        if self.schedule == "constant":
            return self.lam
        if self.schedule == "power":
            return min(1.0, (t + t0) ** -self.kappa)
        return 1.0 / (t + t0)

    def changed(self) -> dict:
        """The settings that differ from the defaults (how a run stores this section)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != default_of(f)
        }


@dataclass
class OptimConfig:
    """The optimizer section (optim.py): optimizer, per-layer rates, schedule, length, batch."""

    optimizer: str = setting(
        "sgd",
        "sgd (SGD with momentum, the paper's), adam (AdamW: scale-free steps) or adam-phase (AdamW with "
        "statistics moved once per iteration: time-local increments add up to the EP step)",
    )
    lrs: list = setting(
        [0.25, 0.15, 0.1, 0.08, 0.05],
        "layer-wise initial learning rates, bottom to top (read-out last)",
        many=True,
        type=float,
        check=(FINITE_GT0[0], "finite numbers > 0"),
    )
    momentum: float = setting(0.9, "SGD momentum", check=(lambda v: finite(v) and 0 <= v < 1, "a number in [0, 1)"))
    weight_decay: float = setting(3e-4, "weight decay (all layers)", check=FINITE_GE0)
    lr_min: float = setting(1e-5, "final learning rate of the cosine schedule", check=FINITE_GE0)
    decay_epochs: int = setting(100, "cosine annealing length in epochs", check=INT_GE0)
    warmup_epochs: float = setting(
        0.0, "linear learning-rate warm-up from lr/10 over this many epochs", check=FINITE_GE0
    )
    lr_per_step: bool = setting(False, "move the learning-rate schedule every step, not every epoch")
    wd_compensation: bool = setting(False, "continual estimators: divide increment k by (1 - lr wd)^(K-1-k)")
    epochs: int = setting(120, "number of epochs", check=INT_GE1)
    batch_size: int = setting(128, "global batch size (split across processes)", check=INT_GE1)

    def __post_init__(self):
        check_name("optimizer", self.optimizer, OPTIMIZERS)
        check_fields(self)


@dataclass
class DataConfig:
    """The data section (data.py): which set, where, which part, and the preprocessing contract."""

    dataset: str = setting("cifar10", "data set: " + ", ".join(DATASETS))
    data_root: str | None = setting(None, "local data: torchvision folder, ImageFolder tree or .tar.gz of one")
    cache_dir: str | None = setting(None, "where decoded data sets are cached (default ~/.cache/ep_compile)")
    val_size: int | None = setting(None, "validation examples held out of the training set", check=INT_GE0)
    train_subset: int | None = setting(None, "train on the first N examples only", check=INT_GE1)
    test_subset: int | None = setting(None, "evaluate on the first N test examples only", check=INT_GE1)
    std_scale: float = setting(
        3.0, "inputs are divided by std_scale * std (3 as in the paper's code)", check=FINITE_GT0
    )
    augment: bool = setting(True, "random crop and flip (the paper's augmentation)", flag=None)
    mean: list | None = setting(None, "per-channel mean of the training set (set from the data)", flag=None)
    std: list | None = setting(None, "per-channel std of the training set (set from the data)", flag=None)
    classes: list | None = setting(None, "class names (set from the data)", flag=None)

    def __post_init__(self):
        check_name("dataset", self.dataset, DATASETS)
        check_fields(self)
        if self.data_root and self.dataset == "digits":
            raise ConfigError(
                f"--data-root {self.data_root}: the digits set ships with scikit-learn and takes no data root"
            )


@dataclass
class RunOptions:
    """The run section: seed, run folder, checkpoints and evaluation, precision, compilation, stops."""

    preset: str | None = setting(None, "the preset this run started from", flag=None)
    seed: int = setting(
        0,
        "seed for weights, data order, augmentation, dropout and random signs",
        # checkpoint.step_generator mixes (seed, epoch, step) into one 64-bit generator seed
        check=(lambda v: isinstance(v, int) and 0 <= v < 2**24, f"an integer in [0, {2**24})"),
    )
    out: str | None = setting(None, "run folder for checkpoints, metrics.jsonl, config.json, curves.png")
    checkpoint_every: int = setting(
        0,
        "also checkpoint every N steps within an epoch (0: per epoch)",
        check=(INT_GE0[0], "an integer >= 0 (0: once per epoch)"),
    )
    eval_batch_size: int = setting(500, "batch size of the evaluation passes", check=INT_GE1)
    eval_every: float = setting(
        0.0,
        "also evaluate the test set every f epochs inside an epoch (e.g. 0.5)",
        check=(FINITE_GE0[0], "a finite number >= 0 (0: once per epoch)"),
    )
    dtype: str = setting("float32", "float32, or float64 for checks that need rounding out of the way")
    compile: bool = setting(True, "torch.compile the step (--no-compile: eager)", flag=None)
    compile_mode: str | None = setting(None, "torch.compile mode, e.g. reduce-overhead (CUDA graphs on a GPU)")
    channels_last: bool = setting(True, "channels_last memory format (faster convs)")
    stop_at_accuracy: float = setting(
        0.0, "stop after the first epoch whose test accuracy reaches this", check=FRACTION
    )
    max_hours: float = setting(
        0.0,
        "stop after the last epoch that ends within this many hours of training",
        check=(FINITE_GE0[0], "a number of hours >= 0 (0: off)"),
    )

    def __post_init__(self):
        check_name("dtype", self.dtype, DTYPES)
        check_fields(self)


SECTIONS = {"model": ModelConfig, "phases": Phases, "optim": OptimConfig, "data": DataConfig, "run": RunOptions}


@dataclass
class RunConfig:
    """A whole run: the estimator and the neuron model, and the sections."""

    estimator: str = setting("symmetric", "gradient estimator")
    neuron: str = setting("rate", "rate units, or binary spikes through sigma-delta encoders")
    model: ModelConfig = field(default_factory=ModelConfig)
    phases: Phases = field(default_factory=Phases)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunOptions = field(default_factory=RunOptions)

    # ------------------------------------------------------------------ the flat stored form
    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """A RunConfig from a flat dict of settings (a preset, a checkpoint's config, a config.json);
        a setting it leaves out takes its one default. Unknown names are refused by name."""
        top, parts, spike = {}, {name: {} for name in SECTIONS}, {}
        for key, v in d.items():
            if key in TOP:
                top[key] = v
            elif key == "spike":
                if not isinstance(v, dict):
                    raise ConfigError(f"spike settings {v!r}: expected a dict of SpikeConfig fields")
                spike = v
            elif key in OWNER:
                parts[OWNER[key]][key] = v
            else:
                hit = closest(key, list(TOP) + list(OWNER))
                raise ConfigError(
                    f"unknown run setting {key!r}{f' (did you mean {hit!r}?)' if hit else ''}; "
                    f"valid: {', '.join(sorted([*TOP, *OWNER, 'spike']))}"
                )
        try:
            built = {name: SECTIONS[name](**kw) for name, kw in parts.items()}
            built["spike"] = SpikeConfig(**spike)
        except TypeError as e:
            raise ConfigError(f"run config {str(d)[:100]}: a value has the wrong type ({e})") from None
        check_name("neuron model", top.get("neuron", "rate"), NEURONS)
        return cls(**top, **built)

    def to_dict(self) -> dict:
        """The flat stored form: one key per setting (JSON types), the spiking section as one dict."""
        out = {name: getattr(self, name) for name in TOP}
        for name in SECTIONS:
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                if f.metadata.get("stored", True):
                    out[f.name] = getattr(section, f.name)
        out["spike"] = self.spike.changed()
        return json.loads(json.dumps(out))

    def get(self, key: str):
        """A setting by its flat name (the stored form's key): for the few callers that walk names."""
        return self.to_dict()[key] if key == "spike" else getattr(self.section_of(key), key)

    def set(self, key: str, value) -> None:
        setattr(self.section_of(key), key, value)

    def section_of(self, key: str):
        return self if key in TOP else getattr(self, OWNER[key])

    # ------------------------------------------------------------------ the flags
    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        """One flag per setting (default None: 'not given'), in one argument group per section."""
        for name, f in flag_fields():
            group = _group(parser, TOP_GROUP[f.name] if name == "top" else name)
            flag = flag_of(f)
            if f.type == "bool" or f.type is bool:
                group.add_argument(
                    flag, dest=_dest(name, f), action="store_true", default=None, help=f.metadata["help"]
                )
                continue
            typ = _flag_type(f)
            nargs = "+" if f.metadata["many"] else None
            hlp = f.metadata["help"] + (": " + ", ".join(registry.ENTRIES) if f.name == "estimator" else "")
            group.add_argument(
                flag, dest=_dest(name, f), type=typ, nargs=nargs, default=None, help=f"{hlp} {_shown(f)}"
            )
        g = _group(parser, "data")
        g.add_argument("--no-augment", action="store_true", help="no random crop / flip")
        g.add_argument("--augment", action="store_true", help="random crop and flip (the paper's augmentation)")
        g = _group(parser, "run")
        g.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the step")
        g.add_argument("--no-compile", dest="compile", action="store_false", help="run the step eagerly")

    @staticmethod
    def given(args) -> dict:
        """The settings whose flags were given on the command line, by flat name (spike: a dict)."""
        out, spike = {}, {}
        for name, f in flag_fields():
            v = getattr(args, _dest(name, f), None)
            if v is not None:
                (spike if name == "spike" else out)[f.name] = v
        if spike:
            out["spike"] = spike
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
        if d.get("spike") and d.get("neuron", "rate") != "spiking":
            raise ConfigError(f"spike options {sorted(d['spike'])} need --neuron spiking")
        cfg = cls.from_dict(d)
        if cfg.run.out is None:
            cfg.run.out = f"runs/{args.preset}"
        cfg.validate(set(given))
        check_out(cfg.run.out)
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
        cfg.run.out = str(path if path.is_dir() else path.parent)
        check_folder_config(Path(cfg.run.out), stored)
        check_out(cfg.run.out)
        for key, v in cls.given(args).items():
            now = cfg.get(key)
            if v == now:
                continue
            flag = "--" + key.replace("_", "-") if key not in ("T", "K") else f"--{key}"
            if key == "out":
                raise ConfigError(f"--resume {path} continues in {cfg.run.out}; drop --out {v}")
            if key not in RESUME_MAY_CHANGE:
                may = ", ".join("--" + k.replace("_", "-") for k in sorted(RESUME_MAY_CHANGE))
                raise ConfigError(
                    f"--resume continues the stored run, which has {key}={now!r}; {flag} {v!r} would "
                    f"change it (may change: {may})"
                )
            print(f"cifar.py: resuming with {key}={v!r} (was {now!r})", file=sys.stderr)
            cfg.set(key, v)
        cfg = cls.from_dict(cfg.to_dict())  # the changed values pass their sections' checks
        return cfg

    # ------------------------------------------------------------------ the combination, in one place
    def validate(self, given: set = frozenset()) -> None:
        """The sections checked their own values; here the combination: the estimator known and
        honoured by the neuron model, the phase lengths, the memory, the model it builds and the
        settings that path would ignore. One ConfigError naming the flag and the value, before
        anything is built or written."""
        if self.neuron == "spiking":  # the spiking form of the rate estimator asked for (registry.rate_form)
            spiking = registry.spiking_form(self.estimator)
            if spiking is None:
                forms = [e.rate_form for e in registry.ENTRIES.values() if e.rate_form]
                raise ConfigError(f"--neuron spiking supports estimators {' and '.join(forms)}, not {self.estimator!r}")
            self.estimator = spiking
        elif registry.entry(self.estimator).spiking:
            raise ConfigError(f"estimator {self.estimator!r} needs --neuron spiking")
        e = registry.entry(self.estimator)  # unknown names, listing the valid ones
        self.phases.check_lengths(e.unrolled)
        check_memory(self)  # before the model below is allocated
        model = EPNet(self.model)
        check_compatible(self.estimator, model)
        if self.neuron == "spiking":
            check_spiking(model)
        check_honoured(self, given)

    def make_phases(self) -> Phases:
        """The phases the estimator runs: this section, with the spiking section for the spiking ones."""
        phases = dataclasses.replace(self.phases, spiking=self.spike if self.neuron == "spiking" else None)
        if not registry.entry(self.estimator).unrolled:  # BPTT has no beta
            phases.require_beta(self.estimator)
        return phases


TOP = ("estimator", "neuron")
OWNER = {  # flat setting name -> the section that owns it
    f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata.get("stored", True)
}
# may change on --resume (applied, said so): how long and how often, and compiling the step or not
RESUME_MAY_CHANGE = {"epochs", "checkpoint_every", "eval_batch_size", "stop_at_accuracy", "max_hours", "compile"}


def flag_fields():
    """(section name, field) of every setting with a flag of its own, top-level ones first."""
    out = [("top", f) for f in dataclasses.fields(RunConfig) if f.name in TOP]
    for name, cls in {**SECTIONS, "spike": SpikeConfig}.items():
        out += [(name, f) for f in dataclasses.fields(cls) if f.metadata.get("flag") is not None]
    return out


def _dest(section: str, f) -> str:
    return f"spike_{f.name}" if section == "spike" else f.name


GROUPS = {"model": "model", "spike": "model", "phases": "phases", "optim": "optimizer", "data": "data", "run": "run"}
TOP_GROUP = {"estimator": "phases", "neuron": "model"}


def _group(parser, section: str):
    """The --help group of a section, made in the sections' order on first use."""
    groups = parser.__dict__.setdefault("_ep_groups", {})
    if not groups:
        for title in dict.fromkeys(GROUPS.values()):
            groups[title] = parser.add_argument_group(title)
    return groups[GROUPS.get(section, section)]


def _flag_type(f):
    """The argparse type of a setting's flag: the field's declared item type, else from its annotation."""
    return f.metadata["type"] or {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)


def _shown(f) -> str:
    """'(default: X)' for --help: the section's default, which a preset may override."""
    d = default_of(f)
    if d is None or d == [] or d == {}:
        return "(default: unset)"
    return f"(default: {' '.join(map(str, d)) if isinstance(d, (list, tuple)) else d})"


def add_flags(parser, section, names, **help_more) -> None:
    """Flags of some settings of one section, with the section's own defaults, help and types: the
    tools other than the trainer (gradcheck, benchmarks) take their settings from the same fields."""
    fields = {f.name: f for f in dataclasses.fields(section)}
    for name in names:
        f = fields[name]
        typ = _flag_type(f)
        hlp = f.metadata["help"] + help_more.get(name, "")
        parser.add_argument(flag_of(f), dest=name, type=typ, default=default_of(f), help=f"{hlp} {_shown(f)}")


def model_from_config(config) -> EPNet:
    """The model of a run config (a RunConfig or the flat dict stored in a checkpoint)."""
    return EPNet((config if isinstance(config, RunConfig) else RunConfig.from_dict(config)).model)


def check_spiking(model: EPNet) -> None:
    """Spiking nets run every interaction of the rate network (conv with max, average or no pooling,
    strided, dense, skips); binary spikes decode rates in [0, 1], so every state's activation must
    be a hard sigmoid."""
    if not model.layers:
        raise ConfigError("a spiking network needs at least one layer")
    bad = sorted({a for a, (_, lo, hi) in zip(model.cfg.state_activations(), model.acts) if (lo, hi) != (0.0, 1.0)})
    if bad:
        raise ConfigError(
            f"activation {bad[0]!r}: binary spikes decode rates in [0, 1]; a spiking net needs "
            "hard-sigmoid or hard-sigmoid-1 on every state"
        )


def cautions(cfg: RunConfig) -> list[str]:
    """Combinations that run but were measured to train to chance, each as one line naming what
    works (RESULTS.md section 3): the caller prints them before training."""
    out = []
    e = registry.entry(cfg.estimator)
    if e.time_local and not e.spiking and cfg.model.channels and cfg.optim.optimizer == "sgd":
        out.append(
            f"caution: --estimator {cfg.estimator} with --optimizer sgd on a ConvNet was measured to train to "
            "chance (SGD's in-phase steps run away); --optimizer adam-phase or --preset digits-cep-conv learn"
        )
    return out


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
    mc = cfg.model
    specs = mc.layer_specs()
    weights = 0
    for sp in mc.interaction_specs():
        n = (
            sp.in_shape[0] * sp.out_shape[0] * sp.kernel**2
            if sp.kind == "conv"
            else math.prod(sp.in_shape) * sp.out_shape[0]
        )
        weights += n * (2 if mc.asymmetric else 1)
    weights += math.prod(specs[-1].out_shape if specs else mc.in_shape) * mc.n_classes  # the read-out
    states = sum(math.prod(sp.conv_shape or sp.out_shape) for sp in specs)
    batch = cfg.optim.batch_size * 12 + cfg.run.eval_batch_size * 3
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
            f"--channels {' '.join(map(str, cfg.model.channels)) or '(none)'} --fc {' '.join(map(str, cfg.model.fc)) or '(none)'} "
            f"--batch-size {cfg.optim.batch_size}: the run needs about {need / 2**30:.0f} GiB, this machine has "
            f"{total / 2**30:.0f} GiB"
        )


# when an optional setting (registry.OPTIONAL) is in use; None: when its flag was given
IN_USE = {
    "fused": lambda c: c.phases.fused,
    "tol": lambda c: c.phases.tol > 0,
    "amp": lambda c: c.phases.amp is not None,
    "vf_form": lambda c: c.phases.vf_form != "linearized",
    "hep_points": None,
    "bptt_steps": None,
    "wd_compensation": lambda c: c.optim.wd_compensation,
    "compile": lambda c: c.run.compile,
    "schedule": lambda c: c.phases.schedule != "sync",
    "channels_last": lambda c: c.run.channels_last,
}


def check_honoured(cfg: RunConfig, given: set) -> None:
    """Refuse, in one line, every setting the chosen estimator would silently ignore: each optional
    setting in use that its registry entry does not honour."""
    e = registry.entry(cfg.estimator)
    ignored = []
    for key, used in IN_USE.items():
        if key in e.honours or not (key in given if used is None else used(cfg)):
            continue
        v = cfg.get(key)
        readers = [n for n, x in registry.ENTRIES.items() if key in x.honours]
        only = f" (only {', '.join(readers)})" if len(readers) <= 4 else ""
        ignored.append(f"--{key.replace('_', '-')}{'' if isinstance(v, bool) or used is None else f' {v}'}{only}")
    if ignored:
        what = f"--neuron spiking with estimator {cfg.estimator!r}" if e.spiking else f"estimator {cfg.estimator!r}"
        raise ConfigError(f"{what} would ignore {', '.join(ignored)}: drop it or change the estimator")
