"""ep_compile: Equilibrium Propagation for convergent ConvNets. Importing the package registers every
estimator (registry.py): the base rules and BPTT, time-local, spiking and holomorphic EP."""

from . import continual, estimators, holomorphic, spiking  # noqa: F401  (each registers its estimators)
