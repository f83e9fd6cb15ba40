"""Models of the seed papers, built on mgiad_kernels so that ``backend`` applies to every conv."""
from .mgiad import MGiaD, SiC
from .mgnet import MgNet
from .resnet import resnet18_cifar, resnet20

__all__ = ["MGiaD", "MgNet", "SiC", "resnet18_cifar", "resnet20"]
