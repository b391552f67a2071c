"""Root conftest: puts the repository on sys.path and quiets TensorFlow's C++ logs."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite sees the same CPU on every machine (what --precision auto picks depends on it):
# an AVX2 one unless told otherwise (WAVESEP_CPU_CLASS=amx python -m pytest runs it all as an
# AMX machine); the precision-sensitive tests run under every class (tests/conftest.py: cpu_class).
os.environ.setdefault("WAVESEP_CPU_CLASS", "avx2")
