"""Measurement helpers every stage may use: latency of a callable, and what this CPU can do for INT8."""
from .cpu import CpuInfo, cpu_info, usable_cores
from .latency import Latency, interleaved, interleaved_latency, measure

__all__ = ["CpuInfo", "cpu_info", "usable_cores", "Latency", "interleaved", "interleaved_latency", "measure"]
