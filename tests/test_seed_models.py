"""MGIC, Poly-MgNet and multigrid-convolution networks: weight counts and algorithm properties.

What every family shares (backend equivalence, training, portability) is in test_models.py,
configuration rules in test_model_rules.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mgiad import MGICBlock, MultigridConv2d, MultigridResidualUnit, PolyMgNet, mgic_resnet56, multigrid_net
from mgiad.models.polymgnet import symbol_spectrum
from tools.param_table import SLIDES_M, count_weights


def _mgic_resnet56_formula(s_g: int, s_c: int) -> int:
    """Alg. 1 counted by hand: per fine level R + P (c s_g), a BatchNorm, a grouped basic block;
    a dense basic block on the coarsest level; stem, two depthwise transitions, classifier."""
    def block(c):
        levels = [c]
        while levels[-1] // 2 >= s_c:
            levels.append(levels[-1] // 2)
        fine = sum(cj * s_g + 2 * cj + 2 * (9 * cj * s_g + 2 * cj) for cj in levels[:-1])
        return fine + 2 * (9 * levels[-1] ** 2 + 2 * levels[-1])
    stem = 9 * 3 * 16 + 2 * 16
    transitions = sum(9 * c + 2 * c for c in (32, 64))
    return stem + transitions + sum(9 * block(c) for c in (16, 32, 64)) + 64 * 10 + 10


@pytest.mark.parametrize("s_g,s_c", [(8, 16), (4, 16), (16, 32), (32, 16)])
def test_mgic_resnet56_count_is_alg1_counted_by_hand(s_g, s_c):
    with torch.device("meta"):
        assert count_weights(mgic_resnet56(10, s_g, s_c)) == _mgic_resnet56_formula(s_g, s_c)


def test_slides_backbone_counts_match_the_vgg_and_res_rows():
    with torch.device("meta"):
        for name in ("VGG-6", "VGG-21", "RES-12", "RES-42"):
            assert abs(count_weights(multigrid_net(name)) / (SLIDES_M[name] * 1e6) - 1) < 0.002, name


def test_polymgnet_quadratic_is_about_1_3M_and_drops_B():
    with torch.device("meta"):
        from mgiad import MgNet
        poly, mgnet = count_weights(PolyMgNet(10, degree=2)), count_weights(MgNet())
    assert 1.25e6 < poly < 1.45e6, poly
    b_weights = 9 * (64 ** 2 + 128 ** 2 + 256 ** 2 + 256 ** 2)
    # MgNet: B and two BatchNorms per step, two steps per level; Poly-MgNet: one BatchNorm per quadratic block
    # (one per level) and a pair of roots
    assert mgnet - poly == b_weights + (8 - 2) * (64 + 128 + 256 + 256) - 2 * 4, (mgnet, poly)


def test_mgic_transfers_start_as_group_averages():
    block = MGICBlock(16, group_size=4, coarsest_channels=4)
    x = torch.full((1, 16, 3, 3), 2.5)
    assert torch.allclose(block.restrict[0](x), torch.full((1, 8, 3, 3), 2.5))  # averages keep a constant
    assert block.levels == [16, 8, 4]


def test_mgic_block_is_the_identity_when_the_cnn_block_is():
    """MGIC paper Sec. 4: with identity CNN blocks the whole MGIC block is an identity mapping."""
    block = MGICBlock(16, group_size=4, coarsest_channels=4, make_block=lambda c, g, b: nn.Identity())
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_symbol_spectrum_is_the_circular_convolution_spectrum():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False, padding_mode="circular").double()
    size = 4
    basis = torch.eye(4 * size * size, dtype=torch.float64).reshape(-1, 4, size, size)
    with torch.no_grad():
        matrix = conv(basis).reshape(4 * size * size, -1).T
    dense = torch.linalg.eigvals(matrix)
    symbol = symbol_spectrum(conv.weight, groups=2, frequencies=size)
    for a, b in ((dense, symbol), (symbol, dense)):
        assert (a[:, None] - b[None, :]).abs().min(1).values.max() < 1e-9


@pytest.mark.parametrize("roots", ["real", "complex"])
def test_poly_quadratic_block_residual_polynomial_vanishes_at_its_roots(roots):
    torch.manual_seed(1)
    step = PolyMgNet(10, 3, widths=(8,), smoothing_steps=(2,), degree=2, roots=roots).levels[0].steps[0]
    x, y = (v.item() for v in step.root_params)
    c0, c1 = (v.item() for v in step.coefficients())
    candidates = [complex(x, y), complex(x, -y)] if roots == "complex" else [complex(x), complex(y)]
    for lam in candidates:  # q_2(lambda) = 1 - lambda p_1(lambda) = 1 - lambda (c0 - c1 lambda)
        assert abs(1 - lam * (c0 - c1 * lam)) < 1e-6
    eig = symbol_spectrum(step.A.weight, 1)
    if roots == "complex":
        top = eig[eig.imag.argmax()]
        assert math.isclose(x, top.real.item(), abs_tol=1e-6) or abs(top.real.item()) < 0.25
    else:
        assert math.isclose(y, eig.real.max().item(), rel_tol=1e-6) or abs(eig.real.max().item()) < 0.25


def test_multigrid_conv_mixes_neighbouring_grids():
    torch.manual_seed(2)
    mg = MultigridConv2d((2, 3, 4), (5, 6, 7))
    pyramid = [torch.randn(2, 2, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)]
    out = mg(pyramid)
    assert [tuple(o.shape) for o in out] == [(2, 5, 8, 8), (2, 6, 4, 4), (2, 7, 2, 2)]
    middle = torch.cat([F.max_pool2d(pyramid[0], 2), pyramid[1], F.interpolate(pyramid[2], scale_factor=2)], 1)
    expect = F.relu(mg.bns[1](mg.convs[1](middle)))
    torch.testing.assert_close(out[1], expect)
    assert mg.convs[0].in_channels == 2 + 3 and mg.convs[1].in_channels == 2 + 3 + 4 and mg.convs[2].in_channels == 7


def test_multigrid_residual_unit_pads_its_shortcut():
    unit = MultigridResidualUnit((2, 2), (4, 4))
    pyramid = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    out = unit(pyramid)
    body = unit.second(unit.first(pyramid))
    torch.testing.assert_close(out[0][:, :2], pyramid[0] + body[0][:, :2])
    torch.testing.assert_close(out[0][:, 2:], body[0][:, 2:])
