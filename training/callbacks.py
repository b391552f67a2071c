"""Logging beyond Keras' own: validation SDR on fixed excerpts beside the best
no-separation baseline (and the plain mixture), on every backend; with TensorFlow,
TensorBoard audio examples with their spectrograms and the forward pass's op graph;
without it, the epoch's scalars through PyTorch's TensorBoard writer where PyTorch
is installed (CSV is always written by train.py)."""
from __future__ import annotations

from pathlib import Path

import keras
import librosa
import numpy as np

from data_pipeline.crops import CropSpec
from models.architecture import SOURCES
from runtime.metrics import best_gain_estimates, signal_to_distortion
from training.checkpointing import optimizer_step

SPECTROGRAM_FLOOR_DB = -80.0


def spectrogram_image(audio: np.ndarray) -> np.ndarray:
    """Log-magnitude spectrogram of the downmix as a ``[1, frequency, time, 1]`` image,
    low frequencies at the bottom, 0 dB white and -80 dB black."""
    magnitude = np.abs(librosa.stft(audio.mean(axis=-1), n_fft=1024, hop_length=256))
    decibels = librosa.amplitude_to_db(magnitude, ref=1.0, top_db=None)
    image = np.clip(decibels, SPECTROGRAM_FLOOR_DB, 0.0) / -SPECTROGRAM_FLOOR_DB + 1.0
    return image[::-1, :, None][None].astype(np.float32)


def validation_sdr(targets: dict, estimates: dict, mix_centre: np.ndarray) -> dict:
    """Per source: the model's SDR, the best no-separation baseline's and the plain mixture's,
    each over all excerpts at once (louder excerpts weigh more; silent ones cannot break it)."""
    best_gain, _ = best_gain_estimates(mix_centre, targets)
    return {source: {"model": signal_to_distortion(targets[source], estimates[source]),
                     "best_gain_baseline": signal_to_distortion(targets[source], best_gain[source]),
                     "mixture": signal_to_distortion(targets[source], mix_centre)} for source in SOURCES}


class ValidationExamples(keras.callbacks.Callback):
    """At each validation: SDR of the model, of the best no-separation baseline and
    of the mixture on fixed excerpts, into the epoch's logs (``val_sdr_<source>``,
    and ``val_sdr_gain_<source>`` over the baseline); with TensorFlow also to
    TensorBoard with audio and spectrograms of the first ``audio_examples``, and once
    the ``description`` of what the validation measures."""

    def __init__(self, log_dir, mix: np.ndarray, targets: dict, crop: CropSpec, sample_rate: int,
                 separate=lambda model, mix: model.predict(mix, batch_size=4, verbose=0), audio_examples: int = 2,
                 description: str | None = None):
        super().__init__()
        self.description = description  # what the validation measures, for TensorBoard's text tab
        self.separate = separate  # (model, mix windows) -> source waveforms: the architecture's way
        self.tensorboard = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            self.tensorboard = tf.summary.create_file_writer(str(Path(log_dir) / "validation_examples"))
        self.mix, self.targets, self.sample_rate = mix, targets, sample_rate
        self.mix_centre = mix[:, crop.context_left:crop.context_left + crop.output_length]
        self.audio_examples = audio_examples
        self.references_logged = False

    def on_epoch_end(self, epoch, logs=None):
        outputs = self.separate(self.model, self.mix)
        estimates = {source: keras.ops.convert_to_numpy(estimate) for source, estimate in outputs.items()}
        scores = validation_sdr(self.targets, estimates, self.mix_centre)
        if logs is not None:
            for source, score in scores.items():
                logs[f"val_sdr_{source}"] = score["model"]
                # The gain over the best no-separation baseline: what separating adds.
                logs[f"val_sdr_gain_{source}"] = score["model"] - score["best_gain_baseline"]
        if self.tensorboard is not None:
            self._write_tensorboard(optimizer_step(self.model), scores, estimates)

    def _write_tensorboard(self, step: int, scores: dict, estimates: dict):
        import tensorflow as tf

        def log_audio(name: str, audio: np.ndarray):
            for index in range(min(self.audio_examples, len(audio))):
                clip = np.clip(audio[index], -1.0, 1.0)
                tf.summary.audio(f"{name}/example_{index}", clip[None], self.sample_rate, step=step)
                tf.summary.image(f"{name}_spectrogram/example_{index}", spectrogram_image(clip), step=step)

        # record_if(True): Keras' TensorBoard callback leaves a step filter active during fit.
        with self.tensorboard.as_default(), tf.summary.record_if(True):
            for source, score in scores.items():
                tf.summary.scalar(f"sdr/{source}", score["model"], step=step)
                tf.summary.scalar(f"sdr_best_gain_baseline/{source}", score["best_gain_baseline"], step=step)
                tf.summary.scalar(f"sdr_mixture_baseline/{source}", score["mixture"], step=step)
                log_audio(f"estimate_{source}", estimates[source])
            if not self.references_logged:
                if self.description:
                    tf.summary.text("validation/what_it_measures", self.description, step=step)
                # Keras 3 logs only the conceptual (layer) graph; this adds the op graph of the forward pass.
                forward = tf.function(lambda inputs: self.model(inputs, training=False))
                tf.summary.graph(forward.get_concrete_function(keras.tree.map_structure(
                    lambda tensor: tf.TensorSpec(tensor.shape, tensor.dtype), self.model.input)).graph)
                log_audio("mixture", self.mix_centre)
                for source in SOURCES:
                    log_audio(f"reference_{source}", self.targets[source])
                self.references_logged = True
        self.tensorboard.flush()


class TorchScalarWriter(keras.callbacks.Callback):
    """Each epoch's logs as TensorBoard scalars through PyTorch's writer, for
    backends without TensorFlow (``available()`` says whether PyTorch has one)."""

    def __init__(self, log_dir):
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    @staticmethod
    def available() -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            return False
        return True

    def on_epoch_end(self, epoch, logs=None):
        step = optimizer_step(self.model)
        for name, value in (logs or {}).items():
            self.writer.add_scalar(f"epoch_{name}", float(value), step)
        self.writer.flush()
