"""Multigrid CNNs of the seed papers on the mgiad_kernels backends, and their training CLI."""
from .models import MGiaD, MgNet, SiC, resnet18_cifar, resnet20

__all__ = ["MGiaD", "MgNet", "SiC", "resnet18_cifar", "resnet20"]
