"""runtime/cpu.py: /proc/cpuinfo read into a model name and flags, and WAVESEP_CPU_CLASS forcing a class."""
import pytest

from runtime.cpu import CPU_CLASS_VARIABLE, parse_cpuinfo, this_cpu

XEON = "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_tile\n"


def test_the_cpu_line_names_the_model_and_its_extensions():
    line = parse_cpuinfo(XEON).describe()
    assert line.startswith("Some Xeon, ") and "AVX2 yes, AVX-512 yes, AVX512-BF16 no, AMX yes" in line


def test_a_forced_class_replaces_the_flags_and_says_so(monkeypatch, cpu_class):
    expected = {"avx2": "AVX2 yes, AVX-512 no, AVX512-BF16 no, AMX no",
                "avx512-bf16": "AVX2 yes, AVX-512 yes, AVX512-BF16 yes, AMX no",
                "amx": "AVX2 yes, AVX-512 yes, AVX512-BF16 yes, AMX yes"}[cpu_class]
    line = this_cpu().describe()
    assert expected in line and f"forced by {CPU_CLASS_VARIABLE}={cpu_class}" in line


def test_an_unknown_class_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(CPU_CLASS_VARIABLE, "sse2")
    with pytest.raises(ValueError, match="sse2.*avx2, avx512-bf16, amx"):
        this_cpu()


def test_without_the_variable_the_machine_itself_answers(monkeypatch):
    monkeypatch.delenv(CPU_CLASS_VARIABLE)
    assert this_cpu().forced_class is None and "forced" not in this_cpu().describe()
