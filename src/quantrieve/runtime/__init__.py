"""Runtime helpers shared by every layer above the PQ maths: atomic writes, safe output folders,
devices, checkpoints, run records and the progress protocol."""

from quantrieve.runtime.progress import Progress, ProgressFactory, report

__all__ = ["Progress", "ProgressFactory", "report"]
