"""Fast separation metrics for monitoring (museval's BSSEval lives in evaluate.py)."""
import numpy as np

EPSILON = 1e-8


def signal_to_distortion(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Global SDR in dB: 10 log10(|s|^2 / |s - s_hat|^2) over all samples and channels."""
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    return float(10 * np.log10((np.sum(reference ** 2) + EPSILON) / (np.sum((reference - estimate) ** 2) + EPSILON)))
