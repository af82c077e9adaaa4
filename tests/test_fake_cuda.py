"""Every training path on a simulated accelerator, on the CPU, with no numbers computed. Two simulations:
  - the meta device, for one whole training iteration of every registered estimator through the
    Trainer (autograd included, which fake CUDA tensors cannot run without a CUDA driver), an
    evaluation, and the checkpoint that export reads;
  - FakeTensorMode's fake CUDA tensors, for the evaluation and the phases of the speed paths
    (channels_last, bf16 autocast on CUDA, the fused +-beta batch, the residual stop).
Either fails on
  - a device mismatch (both raise on mixing the device with host tensors of one or more dims),
  - a floating-point tensor made on the host inside the iteration (the data pipeline's uint8 images
    and int64 labels / indices are host tensors by design: they are copied once per batch),
  - a random draw from any generator other than the one the trainer made for the device,
  - a host sync (item, tolist, bool, float, int) beyond the iteration's one read of its statistics
    (and, for random-sign EP, one of the sign).
torch can make no generator on either simulated device, so the trainer's device generator is stood in
for by a CPU generator registered as the device's: the test checks which generator is used, not where
its numbers come from."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from ep_compile import registry, trainer
from ep_compile.checkpoint import checkpoint_payload
from ep_compile.config import RunConfig
from ep_compile.data import Dataset, Splits
from ep_compile.presets import PRESETS

HOST_OK = (torch.uint8, torch.int64, torch.bool)  # the host data pipeline: raw images, labels, indices
SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__}


def _dummy(t: torch.Tensor, func):
    """What a read of a fake tensor returns: ones (a sign of +1, a finite flag, a count)."""
    if func is torch.Tensor.tolist:

        def nest(shape):
            return [nest(shape[1:]) for _ in range(shape[0])] if shape else 1.0

        return nest(list(t.shape))
    return {torch.Tensor.__bool__: True, torch.Tensor.__int__: 1}.get(func, 1.0)


def _caller() -> str:
    """file:line of the innermost frame in the package (where a sync or host tensor comes from)."""
    import traceback

    frames = [f for f in traceback.extract_stack() if "/ep_compile/" in f.filename]
    return f"{frames[-1].filename.rsplit('/', 1)[1]}:{frames[-1].lineno}" if frames else "?"


class DeviceGuard(TorchFunctionMode):
    """Records every host tensor, foreign generator and host sync while `on`."""

    def __init__(self, device_generators: set[int], device: str):
        super().__init__()
        self.device_generators, self.device, self.on = device_generators, device, False
        self.problems: list[str] = []
        self.syncs: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCS:
            if self.on and args[0].device.type == self.device:  # a read of the device
                self.syncs.append(f"{getattr(func, '__name__', func)} at {_caller()}")
            return _dummy(args[0], func)
        gen = kwargs.get("generator")
        if self.on and gen is not None and id(gen) not in self.device_generators:
            self.problems.append(f"{func.__name__}: drawn from a generator that is not the device's at {_caller()}")
        out = func(*args, **kwargs)
        if self.on:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.device.type != self.device and t.dtype not in HOST_OK:
                    name = getattr(func, "__name__", str(func))
                    self.problems.append(f"{name}: a {t.dtype} tensor {tuple(t.shape)} made on the host at {_caller()}")
        return out


class FakeAccelerator:
    """Two processes of which this is rank 0, on `device`: the slice and the all-reduce path run."""

    num_processes, process_index = 2, 0
    is_main_process = is_local_main_process = True

    def __init__(self, device: str):
        self.device = torch.device(device)

    def prepare(self, loader):
        return loader

    def gather_for_metrics(self, t):
        return t

    def reduce(self, t, reduction="mean"):
        return t * 1  # a new tensor on the same device, as NCCL's all-reduce gives

    def wait_for_everyone(self):
        pass

    def print(self, *a, **k):
        pass


def run_config(name: str) -> RunConfig:
    e = registry.entry(name)
    d = dict(PRESETS["digits-ce-symmetric"], channels=[4, 6], n_classes=4, T=3, K=2, beta=0.5)
    d.update(batch_size=8, eval_batch_size=8, estimator=name, lrs=[0.1, 0.1, 0.1], epochs=1, mean=[0.5], std=[0.2])
    d["dropout"] = [0.2, 0.1]
    if e.needs_asymmetric:
        d["asymmetric"] = True
    if e.spiking:
        d.update(neuron="spiking", spike={"quantizer": "stochastic"})
    if e.time_local:
        d["optimizer"] = "adam-phase"
    if name == "bptt":
        d["bptt_steps"] = 2
    cfg = RunConfig.from_dict(d)
    cfg.validate()
    return cfg


def splits() -> Splits:
    g = torch.Generator().manual_seed(0)

    def ds(n):
        return Dataset(
            torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 4, list("abcd")
        )

    return Splits(ds(16), ds(8), ds(8), [0.5], [0.2])


def stand_in_generators(monkeypatch, device: str) -> set[int]:
    """trainer.step_generator, with a CPU generator standing in for the device's (registered)."""
    device_gens: set[int] = set()
    real = trainer.step_generator

    def step_generator(seed, epoch, step, where="cpu"):
        g = real(seed, epoch, step)
        if torch.device(where).type == device:
            device_gens.add(id(g))
        return g

    monkeypatch.setattr(trainer, "step_generator", step_generator)
    return device_gens


def guarded_host_pipeline(monkeypatch, guard: DeviceGuard) -> None:
    host_batch = trainer.Trainer.host_batch

    def unguarded(self, *a):  # the host data pipeline: uint8 crops and flips, labels
        guard.on = False
        try:
            return host_batch(self, *a)
        finally:
            guard.on = True

    monkeypatch.setattr(trainer.Trainer, "host_batch", unguarded)


def meta_iteration(cfg: RunConfig, monkeypatch):
    """One training iteration and one evaluation of the Trainer on the meta device, under the guard."""
    guard = DeviceGuard(stand_in_generators(monkeypatch, "meta"), "meta")
    guarded_host_pipeline(monkeypatch, guard)
    data = splits()
    with guard:
        t = trainer.Trainer(cfg, FakeAccelerator("meta"), data, log=lambda *a: None)
        assert all(p.device.type == "meta" for p in t.model.parameters())
        guard.on = True
        t.train_step(0, 0, torch.arange(16))
        train_syncs = list(guard.syncs)
        guard.syncs.clear()
        t.evaluate(data.test)
        guard.on = False
    return guard, train_syncs, t


@pytest.mark.parametrize("name", list(registry.ENTRIES))
def test_one_iteration_on_a_simulated_device(name, monkeypatch):
    cfg = run_config(name)
    guard, train_syncs, t = meta_iteration(cfg, monkeypatch)
    assert guard.problems == [], guard.problems
    e = registry.entry(name)
    allowed = 1 + (1 if e.random_sign else 0)  # the statistics; the sign of beta
    assert len(train_syncs) <= allowed + (2 if e.spiking else 0), train_syncs  # + the spike reports
    assert len(guard.syncs) <= 1 + e.spiking, guard.syncs  # evaluation: the error (+ the spike count)


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # autocast off without a driver
@pytest.mark.parametrize(
    "over", [dict(), dict(channels_last=True), dict(amp="bf16"), dict(fused=True), dict(tol=1e-3)], ids=str
)
def test_phases_on_fake_cuda(over, monkeypatch):
    """The free and nudged phases of symmetric EP, and an evaluation, with fake CUDA tensors."""
    from ep_compile.estimators import free_phase, nudged_states, phase_autocast

    cfg = RunConfig.from_dict({**run_config("symmetric").to_dict(), **over})
    guard = DeviceGuard(stand_in_generators(monkeypatch, "cuda"), "cuda")
    guarded_host_pipeline(monkeypatch, guard)

    def module_to(self, *args, **kwargs):  # nn.Module.to swaps fake parameters, which cannot be
        for m in self.modules():  # swapped: replace them instead, as _apply does without swapping
            for k, p in m._parameters.items():
                if p is not None:  # memory formats apply to 4-d tensors only, as in nn.Module.to
                    kw = kwargs if p.dim() == 4 else {k: v for k, v in kwargs.items() if k != "memory_format"}
                    m._parameters[k] = torch.nn.Parameter(p.data.to(*args, **kw), p.requires_grad)
        return self

    monkeypatch.setattr(torch.nn.Module, "to", module_to)
    data = splits()
    with FakeTensorMode(allow_non_fake_inputs=True), guard:
        t = trainer.Trainer(cfg, FakeAccelerator("cuda"), data, log=lambda *a: None)
        assert all(p.device.type == "cuda" for p in t.model.parameters())
        guard.on = True
        x, y, masks, _ = t.batch(0, 0, torch.arange(16))
        s_free, _ = free_phase(t.model, x, t.phases, masks, t.step_fn)
        with phase_autocast(t.phases, x):
            s_pos, s_neg = nudged_states(t.model, x, y, s_free, 2, 0.5, True, masks, t.step_fn, fused=t.phases.fused)
        assert all(s.device.type == "cuda" for s in s_pos + s_neg)
        phase_syncs = list(guard.syncs)
        t.evaluate(data.test)
        guard.on = False
        # what export reads: every tensor of the checkpoint on the host
        payload = checkpoint_payload(t.model, t.optimizer, cfg.to_dict(), 1, 0, None, [])
        assert all(v.device.type == "cpu" for v in payload["model"].values())
    assert guard.problems == [], guard.problems
    # the residual stop reads the device once every check_every (10) steps, here once for T=3
    assert len(phase_syncs) == (1 if over.get("tol") else 0), phase_syncs
