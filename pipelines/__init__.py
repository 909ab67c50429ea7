"""Data, windows and training."""

from pipelines.quickstart import QuickstartConfig, QuickstartResult, run_quickstart

__all__ = ["QuickstartConfig", "QuickstartResult", "run_quickstart"]
