"""The models' rules, each written once with one message: argument checks and the channel hierarchy.

Every model (MGiaD, SiC, MgNet, Poly-MgNet, MGIC, the ResNets, the multigrid-convolution
networks) and the training CLI call these, so a bad configuration gets the same message from
a constructor and from ``mgiad train``.
"""
from __future__ import annotations

import math


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """An int (not a bool) of at least ``minimum`` (and at most ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        most = "" if maximum is None else f" and at most {maximum}"
        raise ValueError(f"{name} must be an int of at least {minimum}{most}, got {value!r}")
    return value


def check_real(name: str, value, low: float, high: float = math.inf, low_closed: bool = True,
               high_closed: bool = False) -> float:
    """A finite real number in the interval from ``low`` to ``high`` (closed or open at each end)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_closed else value > low) and (value <= high if high_closed else value < high)
    if not ok:
        interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: tuple):
    if (isinstance(value, bool) and value not in [c for c in choices if isinstance(c, bool)]) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_int_tuple(name: str, value) -> tuple[int, ...]:
    """A non-empty sequence of positive ints (widths, smoothing steps, blocks, channels per grid)."""
    if isinstance(value, (int, str)) or not hasattr(value, "__len__") or len(value) == 0 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return tuple(value)


def check_per_level(name: str, values: tuple, widths: tuple) -> tuple:
    if len(values) != len(widths):
        raise ValueError(f"{name} must have one entry per level: {len(widths)} widths, got {len(values)} "
                         f"({values})")
    return values


def check_model_args(num_classes, in_channels, widths, smoothing_steps) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The arguments every FAS network (MgNet, MGiaD, Poly-MgNet) takes; returns (widths, steps) as tuples."""
    check_int("num_classes", num_classes)
    check_int("in_channels", in_channels)
    widths = check_int_tuple("widths", widths)
    steps = check_per_level("smoothing_steps", check_int_tuple("smoothing_steps", smoothing_steps), widths)
    return widths, steps


def check_width_multiples(widths) -> tuple[int, ...]:
    """Each resolution level (or stage) is at least as wide as the previous one, by an integer factor:
    the depthwise stride-2 transfer between them has groups = the previous width."""
    for prev, c in zip(widths, widths[1:]):
        if c % prev:
            raise ValueError(f"each level's width must be a multiple of the previous one (the depthwise stride-2 "
                             f"transfer has groups = the previous width): {c} after {prev} in widths {tuple(widths)}")
    return tuple(widths)


def check_group_size_divides(group_size: int, widths) -> int:
    """Grouped convolutions with ``group_size`` channels per group at every width (MgNet^{A,B} with groups)."""
    check_int("group_size", group_size)
    bad = [c for c in widths if c % group_size]
    if bad:
        raise ValueError(f"group_size={group_size} must divide every width, but not {bad}")
    return group_size


def channel_levels(channels: int, coarsest_channels: int) -> list[int]:
    """Channels of a channel hierarchy (SiC, MGIC): halve while the count is even and half of it is at
    least ``coarsest_channels``; the last level is the coarsest (fully coupled) one."""
    levels = [channels]
    while levels[-1] % 2 == 0 and levels[-1] // 2 >= coarsest_channels:
        levels.append(levels[-1] // 2)
    return levels


def check_channel_levels(channels: int, coarsest_channels: int, group_size: int) -> list[int]:
    """The channel hierarchy of ``channels``, checked: every fine level is split into groups of
    ``group_size`` channels, and the grouped 1x1 restriction halves each group, so ``group_size`` must
    be even and divide every fine level. Returns the levels."""
    check_int("channels", channels)
    check_int("coarsest_channels", coarsest_channels)
    check_int("group_size", group_size)
    levels = channel_levels(channels, coarsest_channels)
    if any(c % group_size for c in levels[:-1]) or (len(levels) > 1 and group_size % 2):
        raise ValueError(f"group_size={group_size} must be even and divide every grouped channel level (the 1x1 "
                         f"restriction halves each group); {channels} channels with "
                         f"coarsest_channels={coarsest_channels} have levels {levels}")
    return levels


def check_coarsest_fits(coarsest_channels: int, widths) -> int:
    """MGiaD: every resolution level has at least the coarsest channel level's channels."""
    for c in widths:
        if coarsest_channels > c:
            raise ValueError(f"coarsest_channels={coarsest_channels} is larger than the level width {c} "
                             f"(widths x channel_scale = {tuple(widths)})")
    return coarsest_channels
