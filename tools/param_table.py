"""Weight counts of every model row of the seed papers' tables, the paper's figure beside ours.

MGiaD paper Tables I-IX, MGIC paper Tables 2, 7, 8, the Poly-MgNet summary, and the CIFAR-100
table of the multigrid-convolution slides.

    python -m tools.param_table > docs/param_counts.md

Counts include conv weights, BatchNorm gamma and beta, and the classifier's weight and bias.
Models are built on the meta device: no memory, no compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mgiad.models import MGiaD, MgNet, PolyMgNet, mgic_resnet56, multigrid_net, resnet18_cifar, resnet20
from mgiad.models.multigrid import NETWORKS


@dataclass(frozen=True)
class Row:
    table: str
    model: str
    config: str
    paper_k: int  # the paper's figure, in thousands
    build: Callable[[], nn.Module]
    note: str = ""


def count_weights(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_UNUSED_PAIR = "paper counts one unused R/I pair built on level 1 ({} weights, REFERENCE.md); ours builds no dead weights"
_SWAPPED = "Table III's c_K = 16 rows look swapped (REFERENCE.md): 420k fits g_s = 16, 144k fits g_s = 4"
_III_32 = "437k is about Table II's c_K = 32, g_s = 16 figure (441k); g_s = 32 doubles A-hat, B-hat on 3 of 4 levels"
_VII_SLIP = "Table VII repeats 533k for g_s = 4 and 8 at lambda = 2 (a copying slip, REFERENCE.md)"


def _mgnet4(classes=10, in_ch=3, **kw):
    return lambda: MgNet(classes, in_ch, (64, 128, 256, 256), (2, 2, 2, 2), **kw)


def _mgnet3(steps, classes=10, in_ch=3, **kw):
    return lambda: MgNet(classes, in_ch, (16, 32, 64), (steps,) * 3, **kw)


def _mgiad(c_k, g_s, lam=1, post=1, classes=10, in_ch=3, widths=(64, 128, 256, 256)):
    return lambda: MGiaD(classes, in_ch, widths, (2,) * len(widths), coarsest_channels=c_k, group_size=g_s,
                         channel_scale=lam, post_smoothing=post)


def rows() -> list[Row]:
    r = [
        Row("I", "ResNet20", "16/32/64, 3 blocks/level", 270, lambda: resnet20(10)),
        Row("I", "MgNet^A", "16/32/64, 3 steps/level", 198, _mgnet3(3, share="A"), _UNUSED_PAIR.format(288)),
        Row("I", "MgNet^{A,B}", "16/32/64, 2 steps/level", 101, _mgnet3(2), _UNUSED_PAIR.format(288)),
        Row("I", "ResNet18", "CIFAR stem", 11174, lambda: resnet18_cifar(10)),
        Row("I", "MgNet^A", "64/128/256/256, 2 steps/level", 4115, _mgnet4(share="A"), _UNUSED_PAIR.format(1152)),
        Row("I", "MgNet^{A,B}", "64/128/256/256, 2 steps/level", 2751, _mgnet4(), _UNUSED_PAIR.format(1152)),
    ]
    for c_k, g_s, lam, k in [(4, 4, 1, 138), (8, 4, 1, 139), (16, 4, 1, 148), (32, 4, 1, 193), (64, 4, 1, 393),
                             (8, 8, 1, 236), (16, 8, 1, 240), (32, 8, 1, 276), (64, 8, 1, 458), (16, 16, 1, 424),
                             (32, 16, 1, 441), (64, 16, 1, 586), (32, 32, 1, 773), (64, 32, 1, 845),
                             (64, 64, 1, 1361), (64, 4, 3, 1020), (64, 8, 3, 1269)]:
        r.append(Row("II", "MGiaD", f"c_K={c_k} g_s={g_s} lambda={lam}", k, _mgiad(c_k, g_s, lam)))
    r += [
        Row("III", "ResNet18", "FashionMNIST, 1 input channel", 11003, lambda: resnet18_cifar(10, 1),
            "no construction of ResNet18 with a 1-channel stem gives 11,003k (3-channel stem: 11,174k)"),
        Row("III", "MgNet^{A,B}", "FashionMNIST, 1 input channel", 2747, _mgnet4(in_ch=1), _UNUSED_PAIR.format(1152)),
    ]
    for c_k, g_s, k in [(64, 4, 389), (64, 8, 454), (64, 64, 1357), (32, 4, 189), (32, 32, 437), (16, 4, 420),
                        (16, 16, 144)]:
        r.append(Row("III", "MGiaD", f"FashionMNIST c_K={c_k} g_s={g_s}", k, _mgiad(c_k, g_s, in_ch=1),
                     _SWAPPED if c_k == 16 else (_III_32 if (c_k, g_s) == (32, 32) else "")))
    r += [
        Row("IV", "ResNet20", "FashionMNIST, 1 input channel", 270, lambda: resnet20(10, 1)),
        Row("IV", "MgNet^{A,B}", "FashionMNIST, 16/32/64", 101, _mgnet3(2, in_ch=1), _UNUSED_PAIR.format(288)),
    ]
    for g_s, k in [(4, 28), (8, 37), (16, 55)]:
        r.append(Row("IV", "MGiaD", f"FashionMNIST 16/32/64 c_K=16 g_s={g_s}", k,
                     _mgiad(16, g_s, in_ch=1, widths=(16, 32, 64))))
    r += [
        Row("V", "ResNet18", "CIFAR-100", 11220, lambda: resnet18_cifar(100)),
        Row("V", "MgNet^{A,B}", "CIFAR-100", 2774, _mgnet4(classes=100), _UNUSED_PAIR.format(1152)),
    ]
    for lam, g_s, k in [(1, 8, 481), (1, 64, 1384), (2, 8, 745), (2, 64, 3067), (3, 8, 1338), (3, 64, 4822)]:
        r.append(Row("V", "MGiaD", f"CIFAR-100 c_K=64 g_s={g_s} lambda={lam}", k, _mgiad(64, g_s, lam, classes=100)))
    for g_s, k in [(64, 831), (32, 425), (16, 223), (8, 121)]:
        r.append(Row("VI", "MgNet^{A,B} grouped", f"g_s={g_s}", k, _mgnet4(group_size=g_s),
                     _UNUSED_PAIR.format(1152)))
    for g_s, lam, k in [(4, 1, 393), (4, 2, 533), (4, 3, 1020), (8, 1, 458), (8, 2, 533), (8, 3, 1269)]:
        r.append(Row("VII", "MGiaD", f"c_K=64 g_s={g_s} lambda={lam}", k, _mgiad(64, g_s, lam),
                     _VII_SLIP if (g_s, lam) == (8, 2) else ""))
    for g_s, post, k in [(4, 1, 1020), (4, 2, 1035), (4, 3, 1051), (8, 1, 1269), (8, 2, 1276), (8, 3, 1300)]:
        r.append(Row("VIII", "MGiaD", f"c_K=64 g_s={g_s} lambda=3 eta_post={post}", k, _mgiad(64, g_s, 3, post)))
    for lam, post, g_s, k in [(1, 1, 8, 481), (1, 1, 64, 1384), (1, 3, 8, 490), (1, 3, 64, 1393), (3, 1, 8, 1338),
                              (3, 1, 64, 4822), (3, 3, 8, 1338), (3, 3, 64, 4853)]:
        r.append(Row("IX", "MGiaD", f"CIFAR-100 c_K=64 g_s={g_s} lambda={lam} eta_post={post}", k,
                     _mgiad(64, g_s, lam, post, classes=100)))
    return r + other_paper_rows()


_MGIC_16 = "Tables 7 and 8 disagree here (0.47M and 0.53M); ours is nearer Table 7's"
# the slides' CIFAR-100 table, millions of weights
SLIDES_M = {"VGG-6": 3.96, "VGG-11": 9.46, "VGG-16": 14.96, "VGG-21": 20.46, "MG-6": 8.34, "MG-11": 20.46,
            "MG-16": 32.58, "MG-21": 44.69, "PMG-9": 8.46, "PMG-16": 20.60, "PMG-30": 32.74, "RES-12": 9.50,
            "RES-22": 20.49, "RES-32": 31.49, "RES-42": 42.48, "R-MG-12": 20.56, "R-MG-22": 44.79,
            "R-MG-32": 69.02, "R-MG-42": 93.26, "R-PMG-16": 20.60, "R-PMG-30": 44.88, "R-PMG-44": 69.16}


def other_paper_rows() -> list[Row]:
    """MGIC (Tables 2, 7, 8), Poly-MgNet (the summary's CIFAR-10 figure) and the multigrid-conv slides."""
    r = [Row("MGIC 2", "MGIC-ResNet-56", "s_g=8 s_c=16", 410, lambda: mgic_resnet56(10, 8, 16))]
    for s_c, k in [(64, 530), (32, 500), (16, 470)]:
        r.append(Row("MGIC 7", "MGIC-ResNet-56", f"s_g=16 s_c={s_c}", k, lambda s_c=s_c: mgic_resnet56(10, 16, s_c),
                     _MGIC_16 if s_c == 16 else ""))
    for s_g, k in [(32, 790), (16, 530), (8, 410), (4, 290)]:
        r.append(Row("MGIC 8", "MGIC-ResNet-56", f"s_g={s_g} s_c=16", k, lambda s_g=s_g: mgic_resnet56(10, s_g, 16),
                     _MGIC_16 if s_g == 16 else ""))
    r.append(Row("Poly-MgNet", "Poly-MgNet^{q_2}", "CIFAR-10, 64/128/256/256, complex roots", 1300,
                 lambda: PolyMgNet(10, degree=2, roots="complex"), "the summary gives 'about 1.3M'"))
    for name in NETWORKS:
        r.append(Row("slides", name, "CIFAR-100", round(SLIDES_M[name] * 1000), lambda name=name: multigrid_net(name)))
    return r


NOTES = """
## How the MGiaD rows are built, and what was tried

`MGiaD` follows Alg. 2 and 3 literally: per resolution level one SiC; per channel level a grouped
3x3 A-hat and B-hat (g_s channels per group) shared by eta_pre = 2 pre- and eta_post
post-smoothing steps, each step with its own two BatchNorms; grouped 1x1 R-hat, Pi-hat
(c -> c/2) and P-hat (c/2 -> c) with c/g_s groups; post-smoothing on every channel level (Alg. 2
lines 8-9 stand outside the `if`); fully coupled A-hat, B-hat on the coarsest channel level;
depthwise 3x3 stride-2 Pi and R between resolution levels (FAS, eq. 6-7), as in MgNet.

Channels halve while half is at least c_K (the MGIC convention). The paper's lambda = 3 rows need
this: 192 never halves to c_K = 64, so their coarsest level has 96 channels. With that rule the
lambda = 3 rows land within 0.7-2.2%; requiring exact halving to c_K would reject the paper's own
configurations.

Constructions tried on Table II (max |difference| over its 17 rows): the literal one above, 6.6%
(g_s = 4 rows within 2.3%, g_s >= 8 rows 1.4-6.6% high); without post-smoothing on the coarsest
level, 6.5%; Pi-hat shared with R-hat (no separate eq. 11 map), 4.2%; both, 4.1%; P-hat with
(c/2)/g_s groups, 8.1-9.0%. No variant that keeps Alg. 2 brings the g_s >= 8 rows within 1%:
they are 2-7% below every construction whose A-hat, B-hat have g_s channels per group, and they
disagree among themselves (Table VIII adds 7k then 24k per post-smoothing step at g_s = 8 where a
step adds the same BatchNorm weights each time; Table IX gives 1,338k for both eta_post = 1 and 3).
The architecture was not bent to hit them.

## MGIC-ResNet-56 (MGIC paper Tables 2, 7, 8)

Built as Alg. 1 and REFERENCE.md say: ResNet-56's stem, 16/32/64 widths and 9 blocks per stage,
each block an MGIC block around the ResNet basic block (grouped 3x3 convs with s_g channels per
group on fine levels, dense on the coarsest); channels halve while half is at least s_c; grouped
1x1 R and P (c/s_g groups) plus a BatchNorm per fine level; a depthwise 3x3 stride-2 conv + BN +
ReLU at a stage change. This is 24% under Table 2's 0.41M at s_g = 8 and swings from -23% (s_g = 4)
to +6% (s_g = 32) against Table 8, so the authors' network has more than Alg. 1 states.
Table 7 cannot come from Alg. 1 at all: with s_c = 64 the 64-channel stage has no fine level and
runs dense ResNet blocks (9 x 74k weights), more than the 0.53M the table gives for the whole
network. At s_g = s_c = 16, where Tables 7 and 8 disagree (0.47M, 0.53M), ours (485k) is nearer
Table 7. Searches over block counts, transition styles, level rules and grouping of the coarsest
block found no construction within 10% of all six rows.

## Multigrid-convolution networks (the slides' CIFAR-100 table)

The VGG-k and RES-k rows pin the backbone exactly (0.0-0.1%): five stages of widths 64, 128, 256,
512, 512, each followed by 2x2 max-pooling, d - 1 conv layers (VGG) or a stem and (d - 2) / 2
two-conv units with parameter-free shortcuts (RES), spread evenly over the stages, and a linear
classifier. The slides do not give the pyramid's widths; we chose 3 grids with the stage width on
the finest grid and half of it on each coarser one (coarse grids stop at 1x1, so the pyramid keeps
its three grids to the end), which puts MG-k and R-MG-k uniformly 17-21% above the table. PMG
("progressive") is the least specified: ours grows the pyramid by one grid per stage with the same
depth rule, and lands 21-126% high; the table's PMG-k have the weights of
MG networks half to two thirds as deep, which a depth rule we could not reconstruct would explain.
"""


def markdown() -> str:
    lines = ["# Weight counts: the seed papers' tables beside ours", "",
             "Generated by `python -m tools.param_table`. Counts include conv weights, BatchNorm gamma "
             "and beta, and the classifier's weight and bias.", "",
             "| table | model | configuration | paper | ours | difference | note |",
             "|---|---|---|---:|---:|---:|---|"]
    with torch.device("meta"):
        for row in rows():
            ours = count_weights(row.build())
            diff = (ours / (row.paper_k * 1000) - 1) * 100
            note = row.note or ("more than 1% off: see the notes below the table" if abs(diff) > 1 else "")
            lines.append(f"| {row.table} | {row.model} | {row.config} | {row.paper_k:,}k | {ours:,} | "
                         f"{diff:+.1f}% | {note} |")
    return "\n".join(lines) + "\n" + NOTES


def main() -> None:
    print(markdown(), end="")


if __name__ == "__main__":
    main()
