"""What this machine's processor offers the models: its name and the vector extensions
that decide their speed and ``--precision auto``, read from /proc/cpuinfo.

``WAVESEP_CPU_CLASS`` (one of ``CPU_CLASSES``) forces the answer, so a machine can show
how the tools behave on another class of CPU: the test suite runs its precision-sensitive
tests under each class, and ``WAVESEP_CPU_CLASS=amx python -m pytest`` runs all of them as
an AMX machine would."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CPU_CLASS_VARIABLE = "WAVESEP_CPU_CLASS"
# The CPU classes CI may run on, each with the /proc/cpuinfo flags it has that matter here.
CPU_CLASSES = {
    "avx2": frozenset({"avx2"}),
    "avx512-bf16": frozenset({"avx2", "avx512f", "avx512_bf16"}),
    "amx": frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}),
}
# The extensions named in benchmark headers, by their /proc/cpuinfo flags.
EXTENSIONS = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX512-BF16": "avx512_bf16", "AMX": "amx_tile"}


@dataclass(frozen=True)
class Cpu:
    model: str
    flags: frozenset
    forced_class: str | None = None  # the WAVESEP_CPU_CLASS in force, if any

    def describe(self) -> str:
        """The model, cores and extensions, for benchmark headers and records."""
        present = ", ".join(f"{name} {'yes' if flag in self.flags else 'no'}" for name, flag in EXTENSIONS.items())
        forced = f"; forced by {CPU_CLASS_VARIABLE}={self.forced_class}" if self.forced_class else ""
        return f"{self.model}, {os.cpu_count()} cores ({present}{forced})"


def parse_cpuinfo(cpuinfo: str) -> Cpu:
    fields = [line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line]
    model = next((value.strip() for key, value in fields if key.strip() == "model name"), "unknown CPU")
    flags = frozenset(next((value.split() for key, value in fields if key.strip() == "flags"), []))
    return Cpu(model, flags)


def this_cpu() -> Cpu:
    """This machine's CPU, or the class ``WAVESEP_CPU_CLASS`` forces (its model name kept)."""
    try:
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = Cpu("unknown CPU", frozenset())
    forced = os.environ.get(CPU_CLASS_VARIABLE, "")
    if not forced:
        return cpu
    if forced not in CPU_CLASSES:
        raise ValueError(f"{CPU_CLASS_VARIABLE}={forced!r} is not a CPU class: {', '.join(CPU_CLASSES)}")
    return Cpu(cpu.model, CPU_CLASSES[forced], forced)
