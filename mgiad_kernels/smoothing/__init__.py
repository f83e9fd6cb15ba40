"""The fused smoothing step u + relu(bn2(B(relu(bn1(f - A u))))) (MGiaD paper eq. 3) and the FAS transfers.

``kernels.py`` (the BatchNorm kernels; the convolutions run on ``conv``'s gather kernel with its fusions),
``launch.py`` (launchers), ``ops.py`` (custom ops and autograd), ``step.py`` (functional and module),
``transfers.py`` (FAS restriction and prolongation, MGiaD eq. 6-7).
"""
from .step import SmoothingCarry, SmoothingStep, smoothing_step, smoothing_steps
from .transfers import FASRestriction, ProlongationCorrection, fas_restriction, prolongation_correction

__all__ = ["FASRestriction", "ProlongationCorrection", "SmoothingCarry", "SmoothingStep", "fas_restriction",
           "prolongation_correction", "smoothing_step", "smoothing_steps"]
