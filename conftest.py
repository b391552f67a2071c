"""Root conftest: puts the repository on sys.path and quiets TensorFlow's C++ logs."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
