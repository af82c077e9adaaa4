"""ep_compile: Equilibrium Propagation for convergent ConvNets.

The public API, used from your own code (README, "Use it from Python"; examples/quickstart.py):

    cfg = ep_compile.model_config("digits")                  # an architecture preset, a dict or JSON
    model = ep_compile.EPNet(cfg)                            # states, layers, Phi (Eq. 7)
    x = ep_compile.normalize(raw_uint8, mean, std, 3.0)      # or preprocess(raw, meta) by a contract
    est = ep_compile.get_estimator("symmetric")(model, x, y, ep_compile.Phases(T=30, K=10, beta=0.5))
    ep_compile.set_grads(model, est.grads); optimizer.step()

Importing the package registers every estimator (registry.py): the base rules and BPTT, time-local,
spiking and holomorphic EP. The ONNX exporter (`build_onnx`, `export_checkpoint`) is loaded on first
use, so `import ep_compile` does not import onnx.
"""

from . import continual, estimators, holomorphic, spiking  # noqa: F401  (each registers its estimators)
from .data import load_source, normalize, preprocess
from .dynamics import make_step, relax, relax_until, step, step_evenodd
from .estimators import Estimate, Phases, set_grads
from .model import ARCHITECTURES, ConfigError, EPNet, ModelConfig, layer_groups, model_config
from .optim import make_optimizer
from .registry import ENTRIES, ESTIMATORS, entry, get_estimator

__all__ = [
    "ARCHITECTURES",
    "ENTRIES",
    "ESTIMATORS",
    "ConfigError",
    "EPNet",
    "Estimate",
    "ModelConfig",
    "Phases",
    "build_onnx",
    "entry",
    "export_checkpoint",
    "get_estimator",
    "layer_groups",
    "load_source",
    "make_optimizer",
    "make_step",
    "model_config",
    "normalize",
    "preprocess",
    "relax",
    "relax_until",
    "set_grads",
    "step",
    "step_evenodd",
]


def __getattr__(name: str):
    if name in ("build_onnx", "export_checkpoint"):
        from . import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'ep_compile' has no attribute {name!r}")
