"""The Wiener post-filter (``runtime.wiener``) in TensorFlow ops, for the exported graph
(``runtime.saved_model_graph``): the same STFT (centred periodic Hann, hop a quarter,
``tf.signal.stft``), the same first estimates, the same EM step on the same blocks of
frames with the same context and scale, and the same overlap-add normalised by the
window's sum of squares; complex64 throughout; core TF ops only (a stock TF Serving
binary runs it). It agrees with the numpy stream within 1e-4 (tests/test_wiener_graph.py).

The graph holds the whole song's spectra (the mixture's and the two estimates', 42 MB per
minute of stereo at 22.05 kHz, each, whatever the STFT size, and a few intermediates
of that size: a 10-minute song needs a few GB more than without the filter); EM runs block
by block (``tf.map_fn``). Bounding it as the numpy stream does is left to do."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from runtime.wiener import EPS, WienerSettings


def _stft(signals, n_fft: int):
    """``[rows, time]`` -> ``[rows, frames, bins]``, librosa's centred frames (zeros outside)."""
    half = n_fft // 2
    padded = tf.pad(signals, [[0, 0], [half, half]])
    return tf.signal.stft(padded, frame_length=n_fft, frame_step=n_fft // 4, fft_length=n_fft,
                          window_fn=tf.signal.hann_window, pad_end=False)


def _istft(spectra, n_fft: int, length):
    """``[rows, frames, bins]`` -> ``[rows, length]``: overlap-add of the windowed inverse
    FFTs over the window's sum of squares (where it is above float32's tiny), as librosa."""
    hop, half = n_fft // 4, n_fft // 2
    window = tf.signal.hann_window(n_fft)
    frames = tf.signal.irfft(spectra, fft_length=[n_fft]) * window
    added = tf.signal.overlap_and_add(frames, hop)
    weights = tf.signal.overlap_and_add(tf.tile(window[None] ** 2, [tf.shape(spectra)[1], 1]), hop)
    nonzero = weights > np.finfo(np.float32).tiny
    added = tf.where(nonzero, added / tf.where(nonzero, weights, 1.0), added)
    return added[:, half:half + length]


def first_estimates_tf(mixture, estimates, soft_mask: bool, sources: int = 2):
    """``runtime.wiener.first_estimates``: ``[..., channels]`` and ``[..., channels, sources]``."""
    magnitudes = tf.abs(estimates)
    if soft_mask:
        mask = magnitudes[..., :sources] / (EPS + tf.reduce_sum(magnitudes, -1, keepdims=True))
        return tf.complex(mask, 0.0) * mixture[..., None]
    phase = tf.math.angle(mixture)
    return tf.complex(magnitudes, 0.0) * tf.complex(tf.cos(phase), tf.sin(phase))[..., None]


def _inverse(c, channels: int):
    if channels == 1:
        return 1 / c
    if channels == 2:
        det = c[..., 0, 0] * c[..., 1, 1] - c[..., 0, 1] * c[..., 1, 0]
        inverse = tf.stack([tf.stack([c[..., 1, 1], -c[..., 0, 1]], -1),
                            tf.stack([-c[..., 1, 0], c[..., 0, 0]], -1)], -2)
        return inverse / det[..., None, None]
    return tf.linalg.inv(c)


def expectation_maximization_tf(mixture, estimates, iterations: int, channels: int):
    """``runtime.wiener.expectation_maximization`` on one block, with its scale
    (``runtime.wiener.em_scale``: the block's loudest bin brought to 10)."""
    scale = tf.complex(tf.maximum(1.0, tf.reduce_max(tf.abs(mixture)) / 10), 0.0)
    x, y = mixture / scale, estimates / scale
    regularisation = tf.complex(np.float32(np.sqrt(EPS)) * tf.eye(channels), 0.0)
    for _ in range(iterations):
        power = tf.reduce_mean(tf.abs(y) ** 2, axis=2)  # [frames, bins, sources]
        total = tf.complex(EPS + tf.reduce_sum(power, 0), 0.0)  # [bins, sources]
        covariance = tf.einsum("fbis,fbjs->bsij", y, tf.math.conj(y)) / total[..., None, None]
        mix_covariance = tf.einsum("fbs,bsij->fbij", tf.complex(power, 0.0), covariance) + regularisation
        z = tf.einsum("fbij,fbj->fbi", _inverse(mix_covariance, channels), x)
        y = tf.complex(power, 0.0)[:, :, None, :] * tf.einsum("bsij,fbj->fbis", covariance, z)
    return y * scale


def wiener_tf(mixture, vocals, accompaniment, settings: WienerSettings, sample_rate: int):
    """The post-filter on a whole song at the model's rate: three ``[time, channels]``
    float32 tensors (channels known when traced) -> refined (vocals, accompaniment)."""
    channels = mixture.shape[1]
    n_fft = settings.fft_size(sample_rate)
    length = tf.shape(mixture)[0]
    signals = tf.transpose(tf.concat([mixture, vocals, accompaniment], 1))  # [3 * channels, time]
    spectra = _stft(signals, n_fft)  # [3 * channels, frames, bins]
    frames, bins = tf.shape(spectra)[1], n_fft // 2 + 1
    spectra = tf.transpose(tf.reshape(spectra, [3, channels, frames, bins]), [2, 3, 1, 0])  # [frames, bins, ch, 3]
    x, estimates = spectra[..., 0], spectra[..., 1:]
    refined_sources = len(settings.refined_sources)
    refined = first_estimates_tf(x, estimates, settings.soft_mask, refined_sources)
    if settings.iterations:
        block, context = settings.em_block, settings.em_context
        blocks = (frames + block - 1) // block
        # Frames before the song and after it are zeros, which no covariance, power or scale sees:
        # the numpy stream's blocks, which stop at the song's ends.
        padded_x = tf.pad(x, [[context, blocks * block - frames + context], [0, 0], [0, 0]])
        padded_y = tf.pad(refined, [[context, blocks * block - frames + context], [0, 0], [0, 0], [0, 0]])

        def one_block(index):
            begin = index * block
            part = expectation_maximization_tf(padded_x[begin:begin + block + 2 * context],
                                               padded_y[begin:begin + block + 2 * context],
                                               settings.iterations, channels)
            return part[context:context + block]

        refined = tf.map_fn(one_block, tf.range(blocks), fn_output_signature=tf.TensorSpec(
            [block, bins, channels, 2], tf.complex64))
        refined = tf.reshape(refined, [blocks * block, bins, channels, 2])[:frames]
    rows = tf.reshape(tf.transpose(refined, [3, 2, 0, 1]), [refined_sources * channels, frames, bins])
    waves = tf.transpose(_istft(rows, n_fft, length))  # [time, refined_sources * channels]
    if settings.complementary:  # the accompaniment: the mixture minus the masked vocals
        return waves, mixture - waves
    return waves[:, :channels], waves[:, channels:]
