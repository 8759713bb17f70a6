"""Measurement helpers every stage may use: latency of a callable, what this CPU can do for INT8, and
what each step of the serving pipeline costs here."""
from .cpu import CpuInfo, cpu_info, usable_cores
from .latency import Latency, interleaved, interleaved_latency, measure
from .steps import StepCosts, measure_step_costs

__all__ = ["CpuInfo", "cpu_info", "usable_cores", "Latency", "interleaved", "interleaved_latency", "measure",
           "StepCosts", "measure_step_costs"]
