"""Multigrid CNNs of the seed papers on the mgiad_kernels backends, and their training CLI."""
from .models import (MGICBlock, MGICResNet, MGiaD, MgNet, MultigridConv2d, MultigridNet, MultigridResidualUnit,
                     PolyMgNet, SiC, mgic_resnet56, multigrid_net, resnet18_cifar, resnet20)

__all__ = ["MGICBlock", "MGICResNet", "MGiaD", "MgNet", "MultigridConv2d", "MultigridNet", "MultigridResidualUnit",
           "PolyMgNet", "SiC", "mgic_resnet56", "multigrid_net", "resnet18_cifar", "resnet20"]
