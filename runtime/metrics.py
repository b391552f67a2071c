"""Fast separation metrics for monitoring training (museval's BSSEval lives in
runtime/scoring.py), and the best no-separation baseline that both compare a model against."""
import numpy as np

EPSILON = 1e-8


def signal_to_distortion(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Global SDR in dB: 10 log10(|s|^2 / |s - s_hat|^2) over all samples and channels."""
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    return float(10 * np.log10((np.sum(reference ** 2) + EPSILON) / (np.sum((reference - estimate) ** 2) + EPSILON)))


def least_squares_gain(mixture: np.ndarray, reference: np.ndarray) -> float:
    """The scalar g minimising |reference - g mixture|^2 over all samples and channels:
    <mixture, reference> / <mixture, mixture> (0 for a silent mixture)."""
    mixture, reference = np.asarray(mixture, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    energy = np.dot(mixture, mixture)
    return float(np.dot(mixture, reference) / energy) if energy > 0 else 0.0


def best_gain_estimates(mixture: np.ndarray, references: dict) -> tuple[dict, dict]:
    """The best no-separation baseline: each source estimated as the mixture times its
    least-squares gain. Any system that only scales the mixture (e.g. 0.1 mix as the
    vocals) does at best this well, so a separator's SDR gain is measured against it.

    Returns ``(estimates, gains)``, both keyed by source."""
    gains = {source: least_squares_gain(mixture, reference) for source, reference in references.items()}
    return {source: gain * mixture for source, gain in gains.items()}, gains
