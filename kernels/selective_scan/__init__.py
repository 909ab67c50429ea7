"""Diagonal selective scan (used by `diagonal_ssm` and `selective_ssm`)."""

from kernels.selective_scan.reference import selective_scan, selective_scan_step

__all__ = ["selective_scan", "selective_scan_step"]
