"""Models of the seed papers, built on mgiad_kernels so that ``backend`` applies to every conv."""
from .mgiad import MGiaD, SiC
from .mgic import MGICBlock, MGICResNet, mgic_resnet56
from .mgnet import MgNet
from .multigrid import MultigridConv2d, MultigridNet, MultigridResidualUnit, multigrid_net
from .polymgnet import PolyMgNet
from .resnet import resnet18_cifar, resnet20

__all__ = ["MGICBlock", "MGICResNet", "MGiaD", "MgNet", "MultigridConv2d", "MultigridNet", "MultigridResidualUnit",
           "PolyMgNet", "SiC", "mgic_resnet56", "multigrid_net", "resnet18_cifar", "resnet20"]
