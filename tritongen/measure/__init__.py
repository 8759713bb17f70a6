"""Measurement helpers every stage may use: latency of a callable, and what this CPU can do for INT8."""
from .cpu import CpuInfo, cpu_info
from .latency import Latency, interleaved, measure

__all__ = ["CpuInfo", "cpu_info", "Latency", "interleaved", "measure"]
