"""The models' rules (mgiad.models.rules): each written once, with one message that every model and
the training CLI give."""
import re

import pytest

from mgiad import (MGICBlock, MGICResNet, MGiaD, MgNet, MultigridConv2d, MultigridNet, PolyMgNet, SiC, mgic_resnet56,
                   multigrid_net, resnet18_cifar, resnet20)
from mgiad.cli import main
from mgiad.models import rules
from mgiad.models.mgiad import channel_levels


def _message(rule, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        rule(*args, **kwargs)
    return str(info.value)


def _cli_error(argv, capsys, monkeypatch) -> str:
    """The one stderr line of `mgiad train ARGV`, which must stop before any data is read."""
    monkeypatch.setattr("mgiad.train.train", lambda args: pytest.fail("reached training"))
    monkeypatch.setattr("mgiad.data.load_dataset", lambda *a: pytest.fail("reached the data"))
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("mgiad train: error: "), err
    return err.strip()


# (rule call giving the message, models that must raise it, CLI argv that must print it)
SAME_MESSAGE = {
    "channel-levels": (
        lambda: rules.check_channel_levels(18, 4, 3),
        [lambda: MGiaD(widths=(18,), smoothing_steps=(1,), coarsest_channels=4, group_size=3),
         lambda: SiC(18, 4, 3, 1, 1, "torch"), lambda: MGICBlock(18, 3, 4)],
        ["--widths", "18", "--smoothing-steps", "1", "--coarsest-channels", "4", "--group-size", "3"]),
    "positive-int": (
        lambda: rules.check_int("group_size", 0),
        [lambda: MGiaD(group_size=0), lambda: MgNet(group_size=0), lambda: SiC(16, 4, 0, 1, 1, "torch"),
         lambda: MGICBlock(16, 0, 4), lambda: mgic_resnet56(group_size=0)],
        ["--group-size", "0"]),
    "non-negative-int": (
        lambda: rules.check_int("post_smoothing", -1, 0),
        [lambda: MGiaD(post_smoothing=-1), lambda: SiC(16, 4, 4, 1, -1, "torch")],
        ["--post-smoothing", "-1"]),
    "classes": (
        lambda: rules.check_int("num_classes", 0),
        [lambda: MGiaD(num_classes=0), lambda: MgNet(num_classes=0), lambda: PolyMgNet(num_classes=0),
         lambda: resnet20(num_classes=0), lambda: resnet18_cifar(num_classes=0), lambda: mgic_resnet56(num_classes=0),
         lambda: multigrid_net("MG-6", num_classes=0), lambda: MultigridNet("MG", 6, num_classes=0)],
        None),
    "width-multiples": (
        lambda: rules.check_width_multiples((16, 24)),
        [lambda: MGiaD(widths=(16, 24), smoothing_steps=(1, 1), coarsest_channels=8, group_size=4),
         lambda: MgNet(widths=(16, 24), smoothing_steps=(1, 1)),
         lambda: PolyMgNet(widths=(16, 24), smoothing_steps=(2, 2)),
         lambda: MGICResNet(widths=(16, 24), blocks=(1, 1))],
        ["--widths", "16,24", "--smoothing-steps", "1,1"]),
    "int-tuple": (
        lambda: rules.check_int_tuple("widths", (0, 4)),
        [lambda: MGiaD(widths=(0, 4)), lambda: MgNet(widths=(0, 4)), lambda: PolyMgNet(widths=(0, 4)),
         lambda: MGICResNet(widths=(0, 4))],
        ["--widths", "0,4"]),
    "per-level": (
        lambda: rules.check_per_level("smoothing_steps", (2, 2), (64, 128, 256, 256)),
        [lambda: MGiaD(smoothing_steps=(2, 2)), lambda: MgNet(smoothing_steps=(2, 2)),
         lambda: PolyMgNet(smoothing_steps=(2, 2))],
        ["--dataset", "cifar10", "--data-dir", ".", "--smoothing-steps", "2,2"]),
    "coarsest-fits": (
        lambda: rules.check_coarsest_fits(32, (16, 32)),
        [lambda: MGiaD(widths=(16, 32), smoothing_steps=(1, 1), coarsest_channels=32, group_size=4)],
        ["--widths", "16,32", "--smoothing-steps", "1,1", "--coarsest-channels", "32"]),
    "group-size-divides": (
        lambda: rules.check_group_size_divides(48, (16, 32, 64)),
        [lambda: MgNet(widths=(16, 32, 64), smoothing_steps=(1, 1, 1), group_size=48)],
        ["--model", "mgnet", "--group-size", "48"]),
    "choice": (
        lambda: rules.check_choice("share", "B", ("AB", "A", None)),
        [lambda: MgNet(share="B")], None),
}


@pytest.mark.parametrize("rule", list(SAME_MESSAGE))
def test_every_model_and_the_cli_give_the_rules_message(rule, capsys, monkeypatch):
    make_message, models, argv = SAME_MESSAGE[rule]
    message = _message(make_message)
    for build in models:
        assert _message(build) == message
    if argv is not None:
        assert _cli_error(argv, capsys, monkeypatch).endswith(message)


def test_channel_levels_stop_at_an_odd_count():
    """channel_levels(18, 4) is [18, 9], and SiC agrees that 9 is the coarsest level."""
    assert channel_levels(18, 4) == [18, 9] == rules.channel_levels(18, 4)
    assert channel_levels(64, 8) == [64, 32, 16, 8] and channel_levels(12, 8) == [12]
    assert SiC(18, 4, 2, 1, 1, "torch").coarse.is_coarsest  # 18 -> 9, and 9 is not halved
    assert MGICBlock(18, 2, 4).levels == [18, 9]


def test_group_size_must_be_even_where_the_restriction_halves_groups():
    with pytest.raises(ValueError, match=re.escape("group_size=3 must be even")):
        MGICBlock(48, 3, 16)  # 3 divides 48, but the restriction 48 -> 24 cannot halve groups of 3
    MGICBlock(48, 6, 16)  # groups of 6 halve into groups of 3
    MGiaD(widths=(8,), smoothing_steps=(1,), coarsest_channels=8, group_size=3)  # one (dense) level: no groups


BAD_CONFIGS = [
    pytest.param(lambda: MGiaD(widths=(12, 24), smoothing_steps=(1, 1), coarsest_channels=3, group_size=8),
                 "group_size=8 must be even and divide", id="mgiad-width-not-divisible"),
    pytest.param(lambda: MGiaD(widths=(), smoothing_steps=()), "widths must be a non-empty", id="mgiad-empty-widths"),
    pytest.param(lambda: MGiaD(channel_scale=0), "channel_scale must be", id="mgiad-scale-zero"),
    pytest.param(lambda: MgNet(widths=(64, 96), smoothing_steps=(1, 1)), "multiple of the previous",
                 id="mgnet-width-not-multiple"),
    pytest.param(lambda: MgNet(backend="cudnn"), "backend must be one of", id="mgnet-backend"),
    pytest.param(lambda: multigrid_net("R-MG-23"), "unknown network 'R-MG-23'", id="unknown-network"),
    pytest.param(lambda: MultigridNet("MG", 3), "too shallow", id="mg-too-shallow"),
    pytest.param(lambda: MultigridConv2d((2, 3), (4,)), "one entry per grid", id="mgconv-grids"),
    pytest.param(lambda: MultigridConv2d((2, 0), (4, 4)), "in_channels must be a non-empty", id="mgconv-channels"),
    pytest.param(lambda: mgic_resnet56(group_size=12), "group_size=12 must be even and divide", id="mgic-group"),
    pytest.param(lambda: mgic_resnet56(coarsest_channels=0), "coarsest_channels must be", id="mgic-coarsest"),
    pytest.param(lambda: MGICResNet(blocks=(9, 9)), "blocks must have one entry per level", id="mgic-blocks"),
    pytest.param(lambda: PolyMgNet(degree=3), "degree must be one of", id="poly-degree"),
    pytest.param(lambda: PolyMgNet(degree=True), "degree must be one of", id="poly-degree-bool"),
    pytest.param(lambda: PolyMgNet(roots="imaginary"), "roots must be one of", id="poly-roots"),
    pytest.param(lambda: PolyMgNet(smoothing_steps=(2, 1, 2, 2)), "must be even", id="poly-odd-steps"),
]


@pytest.mark.parametrize("build,message", BAD_CONFIGS)
def test_bad_configuration_fails_at_construction(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
