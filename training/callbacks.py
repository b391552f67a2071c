"""TensorBoard logging beyond Keras' own (losses, learning rate, layer graph):
validation SDR on fixed excerpts beside the best no-separation baseline (and the
plain mixture), audio examples with their spectrograms, and the forward pass's
op graph."""
from __future__ import annotations

from pathlib import Path

import keras
import librosa
import numpy as np
import tensorflow as tf

from data_pipeline.pipeline import SOURCES, CropSpec
from training.metrics import best_gain_estimates, signal_to_distortion

SPECTROGRAM_FLOOR_DB = -80.0


def spectrogram_image(audio: np.ndarray) -> np.ndarray:
    """Log-magnitude spectrogram of the downmix as a ``[1, frequency, time, 1]`` image,
    low frequencies at the bottom, 0 dB white and -80 dB black."""
    magnitude = np.abs(librosa.stft(audio.mean(axis=-1), n_fft=1024, hop_length=256))
    decibels = librosa.amplitude_to_db(magnitude, ref=1.0, top_db=None)
    image = np.clip(decibels, SPECTROGRAM_FLOOR_DB, 0.0) / -SPECTROGRAM_FLOOR_DB + 1.0
    return image[::-1, :, None][None].astype(np.float32)


class ValidationExamples(keras.callbacks.Callback):
    """At each validation: SDR of the model, of the best no-separation baseline and
    of the mixture on fixed excerpts,
    and (for the first ``audio_examples``) audio and spectrograms."""

    def __init__(self, log_dir, mix: np.ndarray, targets: dict, crop: CropSpec, sample_rate: int,
                 audio_examples: int = 2):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "validation_examples"))
        self.mix, self.targets, self.sample_rate = mix, targets, sample_rate
        self.mix_centre = mix[:, crop.context_left:crop.context_left + crop.output_length]
        self.audio_examples = audio_examples
        self.references_logged = False

    def _log_audio(self, name: str, audio: np.ndarray, step: int):
        for index in range(min(self.audio_examples, len(audio))):
            clip = np.clip(audio[index], -1.0, 1.0)
            tf.summary.audio(f"{name}/example_{index}", clip[None], self.sample_rate, step=step)
            tf.summary.image(f"{name}_spectrogram/example_{index}", spectrogram_image(clip), step=step)

    def _log_forward_graph(self):
        # Keras 3 logs only the conceptual (layer) graph; this adds the op graph of the forward pass.
        forward = tf.function(lambda mix: self.model(mix, training=False))
        tf.summary.graph(forward.get_concrete_function(tf.TensorSpec([None, *self.mix.shape[1:]], tf.float32)).graph)

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        estimates = self.model.predict(self.mix, batch_size=4, verbose=0)
        best_gain, _ = best_gain_estimates(self.mix_centre, self.targets)
        # record_if(True): Keras' TensorBoard callback leaves a step filter active during fit.
        with self.writer.as_default(), tf.summary.record_if(True):
            for source in SOURCES:
                sdr = signal_to_distortion(self.targets[source], estimates[source])
                best_gain_baseline = signal_to_distortion(self.targets[source], best_gain[source])
                mixture_baseline = signal_to_distortion(self.targets[source], self.mix_centre)
                tf.summary.scalar(f"sdr/{source}", sdr, step=step)
                tf.summary.scalar(f"sdr_best_gain_baseline/{source}", best_gain_baseline, step=step)
                tf.summary.scalar(f"sdr_mixture_baseline/{source}", mixture_baseline, step=step)
                if logs is not None:
                    logs[f"val_sdr_{source}"] = sdr
                    # The gain over the best no-separation baseline: what separating adds.
                    logs[f"val_sdr_gain_{source}"] = sdr - best_gain_baseline
                self._log_audio(f"estimate_{source}", estimates[source], step)
            if not self.references_logged:
                self._log_forward_graph()
                self._log_audio("mixture", self.mix_centre, step)
                for source in SOURCES:
                    self._log_audio(f"reference_{source}", self.targets[source], step)
                self.references_logged = True
        self.writer.flush()
