"""Shared by the recipe pilots that inspect a trained net: the CIFAR-10 splits, a checkpoint's net in
float64, and the cosine per weight between two gradient estimates."""

import torch

from ep_compile.checkpoint import load_checkpoint
from ep_compile.config import model_from_config
from ep_compile.data import make_splits


def cifar_splits():
    """The full CIFAR-10 splits from the shared archive, no validation split, quiet."""
    return make_splits("cifar10", "../shared/data/cifar10-jpeg.tar.gz", 0, None, None, 0, None, log=lambda *a: None)


def load_float64(path):
    """(checkpoint, its config, its net in float64)."""
    ck = load_checkpoint(path)
    m = model_from_config(ck["config"])
    m.load_state_dict(ck["model"])
    return ck, ck["config"], m.double()


def weight_cosines(model, grads, ref) -> list[float]:
    """Cosine between two estimates per weight tensor (biases left out), in parameter order."""
    return [
        torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0).item()
        for (name, _), g, r in zip(model.named_parameters(), grads, ref)
        if name.endswith("weight")
    ]
