"""Models by name, built from the training CLI's options (``mgiad train --model NAME ...``)."""
from __future__ import annotations

from torch import nn

from .mgiad import MGiaD
from .mgic import mgic_resnet56
from .mgnet import MgNet
from .multigrid import multigrid_net
from .polymgnet import PolyMgNet
from .resnet import resnet18_cifar, resnet20

MODELS = ("mgiad", "mgnet", "resnet18", "resnet20", "mgic-resnet56", "polymgnet", "multigrid")


def build_model(args, dataset: str, num_classes: int, in_channels: int) -> nn.Module:
    """The model ``args.model`` with the CLI's options; unset options take the paper's defaults, or
    small ones on the embedded digits set. Raises the models' own ValueError on a bad configuration."""
    small = dataset == "digits"
    widths = args.widths or ((16, 32, 64) if small else (64, 128, 256, 256))
    steps = args.smoothing_steps or (2,) * len(widths)
    common = dict(num_classes=num_classes, in_channels=in_channels, backend=args.backend)
    if args.model == "mgiad":
        return MGiaD(widths=widths, smoothing_steps=steps,
                     coarsest_channels=args.coarsest_channels or (8 if small else 64),
                     group_size=args.group_size or (4 if small else 8), channel_scale=args.channel_scale,
                     post_smoothing=args.post_smoothing, **common)
    if args.model == "mgnet":
        return MgNet(widths=widths, smoothing_steps=steps, share=None if args.share == "none" else args.share,
                     group_size=args.group_size, **common)
    if args.model == "mgic-resnet56":
        return mgic_resnet56(group_size=args.group_size or 8, coarsest_channels=args.coarsest_channels or 16, **common)
    if args.model == "polymgnet":
        return PolyMgNet(widths=widths, smoothing_steps=steps, degree=args.degree, roots=args.roots, **common)
    if args.model == "multigrid":
        return multigrid_net(args.network, **common)
    if args.model in ("resnet18", "resnet20"):
        return (resnet18_cifar if args.model == "resnet18" else resnet20)(**common)
    raise ValueError(f"model must be one of {MODELS}, got {args.model!r}")
