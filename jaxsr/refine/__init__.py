"""Batched constant refinement: every candidate's constants fitted in one L-BFGS call."""

from jaxsr.refine.api import RefineResult, refine_constants

__all__ = ["RefineResult", "refine_constants"]
