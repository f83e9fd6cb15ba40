"""One call that puts a model's convolutions on the kernels: ``use_kernels(model)``, and its undo.

The swap replaces each chosen ``nn.Conv2d`` child in its parent with a ``GroupedConv2d`` twin that holds the
conv's own state: the same ``_parameters`` and ``_buffers`` dicts (so the same Parameter objects: an optimizer
built before the call still steps them, and the state_dict keeps its keys and values), the same hook dicts
and attributes; it only adds ``backend``. A module shared by several parents gets one twin everywhere. The
twin keeps the module it replaced (outside the module tree: no state_dict entry, no submodule), which is what
``restore_convs`` and ``ConversionReport.undo`` put back, with the attributes the twin changed since (its
training flag, a reassigned attribute). Nothing in torch is patched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from ..backend import check_backend
from ..runtime.triton_support import TRITON_DTYPES
from .module import GroupedConv2d

__all__ = ["ConversionReport", "restore_convs", "use_kernels"]

_REPLACED = "_replaced_conv"  # a twin's attribute: the nn.Conv2d it replaced
_TWIN_ONLY = ("backend", _REPLACED)  # what a twin holds that the module it replaced does not
_DTYPES = ", ".join(sorted(str(d).removeprefix("torch.") for d in TRITON_DTYPES))


@dataclass
class ConversionReport:
    """What ``use_kernels`` did: ``swapped`` the names of the convolutions now on the kernels, ``left`` each
    nn.Conv2d it did not swap, by name, with the reason. ``undo()`` puts the original modules back."""

    backend: str
    swapped: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    _places: list = field(default_factory=list, repr=False)  # (parent, child name, twin) of every swap

    def undo(self) -> int:
        """Put back the original module at every place this call swapped and that still holds its twin;
        returns how many places it restored (0 on a second call)."""
        restored = sum(_restore(parent, name, twin) for parent, name, twin in self._places)
        self._places.clear()
        return restored

    def __str__(self) -> str:
        n = len(self.swapped)
        lines = [f"{n} convolution{'' if n == 1 else 's'} on the kernels (backend={self.backend!r}), "
                 f"{len(self.left)} left"]
        lines += [f"  swapped {name}" for name in self.swapped]
        lines += [f"  left    {name}: {reason}" for name, reason in self.left.items()]
        return "\n".join(lines)


def _check_select(select) -> None:
    if select is None or callable(select) or (isinstance(select, str) and select == "all"):
        return
    if isinstance(select, str):
        raise ValueError(f"select must be None (every nn.Conv2d with groups > 1), 'all', or a predicate "
                         f"select(name, module) -> bool, got {select!r}")
    raise TypeError(f"select must be None, 'all' or a callable select(name, module) -> bool, "
                    f"got {type(select).__name__}")


def _selected(select, name: str, conv: nn.Conv2d) -> str | None:
    """None when ``select`` takes the conv, else why not."""
    if select is None:
        return None if conv.groups > 1 else "groups=1: the default takes grouped convolutions (select='all' takes it)"
    if isinstance(select, str):
        return None
    chosen = select(name, conv)
    if not isinstance(chosen, bool):
        raise TypeError(f"select({name!r}, module) must return a bool, got {type(chosen).__name__}")
    return None if chosen else "not chosen by select"


def _unservable(conv: nn.Conv2d) -> str | None:
    """Why a GroupedConv2d cannot take this conv's place, or None when it can."""
    kind = type(conv).__qualname__
    if parametrize.is_parametrized(conv):
        return "its parameters are parametrized (torch.nn.utils.parametrize): the weight is computed by its class"
    if isinstance(conv, LazyModuleMixin) and conv.has_uninitialized_params():
        return f"{kind}: its parameters are not initialized yet (run a forward pass first)"
    if type(conv) is not nn.Conv2d:
        if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
            return f"a subclass of nn.Conv2d ({kind}) with its own forward"
        return f"a subclass of nn.Conv2d ({kind}): a GroupedConv2d in its place would drop what its class adds"
    if conv.weight.dtype not in TRITON_DTYPES:
        return f"its weight is {conv.weight.dtype}: the kernels compute in {_DTYPES}"
    return None


def _why_left(model: nn.Module, select, name: str, conv: nn.Conv2d) -> str | None:
    """Why ``use_kernels`` leaves the conv ``name`` of ``model`` as it is, or None when it swaps it."""
    if isinstance(conv, GroupedConv2d):
        return f"already a GroupedConv2d (backend={conv.backend!r})"
    if conv is model:
        return "the model itself: use_kernels swaps children (use GroupedConv2d, or convert its parent)"
    return _selected(select, name, conv) or _unservable(conv)


def _twin(conv: nn.Conv2d, backend: str) -> GroupedConv2d:
    """A GroupedConv2d sharing ``conv``'s state (its __dict__'s entries: the same parameter, buffer and hook
    dicts, the same attributes), keeping ``conv`` outside the module tree."""
    twin = GroupedConv2d.__new__(GroupedConv2d)
    twin.__dict__.update(conv.__dict__)
    twin.backend = backend
    object.__setattr__(twin, _REPLACED, conv)  # not a submodule: no state_dict entry, not visited
    return twin


def _restore(parent: nn.Module, name: str, twin: GroupedConv2d) -> bool:
    """Put the module ``twin`` replaced back at ``parent.name``, if ``twin`` is still there."""
    if parent._modules.get(name) is not twin:
        return False
    original = twin.__dict__[_REPLACED]
    original.__dict__.update({k: v for k, v in twin.__dict__.items() if k not in _TWIN_ONLY})
    parent._modules[name] = original
    return True


def _places(model: nn.Module):
    """Every (parent, child name, child) of the module tree, a shared child once under each parent."""
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if child is not None:
                yield parent, name, child


def use_kernels(model: nn.Module, *, select: str | Callable[[str, nn.Module], bool] | None = None,
                backend: str = "auto") -> ConversionReport:
    """Put ``model``'s convolutions on the kernels, in place: each chosen ``nn.Conv2d`` becomes a
    ``GroupedConv2d`` on ``backend`` holding the same Parameter objects and state_dict entries.

    ``select``: None (default) every nn.Conv2d with groups > 1 (grouped and depthwise: what the kernels are
    for), 'all' every nn.Conv2d, or a predicate ``select(name, module) -> bool`` (name as in
    ``named_modules``). A conv the kernels cannot take is left, with the reason: a dtype other than
    float32/float16/bfloat16, a subclass of nn.Conv2d (its own forward or behaviour), parametrized or lazy
    parameters, already a GroupedConv2d, or ``model`` itself. Every padding mode is served (non-zero modes pad
    with ``F.pad`` first, as nn.Conv2d does). ``backend``: as GroupedConv2d's ('auto': the kernels on CUDA
    tensors, F.conv2d elsewhere). Returns a ConversionReport; ``report.undo()`` or ``restore_convs(model)``
    put the original modules back.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_select(select)
    backend = check_backend(backend)
    report, twins = ConversionReport(backend), {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        why = _why_left(model, select, name, module)
        if why is not None:
            report.left[name] = why
            continue
        twins[id(module)] = _twin(module, backend)
        report.swapped.append(name)
    for parent, name, child in _places(model):
        if id(child) in twins:
            parent._modules[name] = twins[id(child)]
            report._places.append((parent, name, twins[id(child)]))
    return report


def restore_convs(model: nn.Module) -> int:
    """Put back every module ``use_kernels`` replaced in ``model`` (by any number of calls); returns how many
    places it restored."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(_restore(parent, name, child) for parent, name, child in list(_places(model))
               if isinstance(child, GroupedConv2d) and _REPLACED in child.__dict__)
