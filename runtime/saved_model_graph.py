"""The TensorFlow graph of an exported model: what TF Serving (or ``serve/``) runs.

A ``SeparationModule`` wraps a trained Keras model of any registered architecture
with the signatures the exported SavedModel offers:

    serving_default   waveform float32 [batch, time, channels] at the model's rate
                      -> vocals, accompaniment (same shape)
    separate_audio    audio_bytes string [batch] (16-bit PCM WAV, any rate, 1 or 2
                      channels) -> vocals_bytes, accompaniment_bytes (WAV, the
                      input's rate, channels and length)
    separate_windows  windows float32 [n, input_length, channels] (chunk-plan windows,
                      the plan is in the facts) -> vocals, accompaniment
                      [n, output_length, channels]: one model call, what
                      ``runtime.chunking`` runs through its chunked path

Every tool loads an export through these signatures only, because that is all a
TF-TRT conversion keeps (a frozen graph per signature, no Python attributes). The
module also holds ``forward`` (the same call as separate_windows, what the ONNX file
holds) and ``model_facts`` (the facts as a JSON string, traced with them as its
argument so that ``saved_model_cli show --all`` prints them). Framing is
``models.framing``'s ``frame_tf``/``stitch_tf`` with the architecture's
``ChunkPlan``: the same windows as separate.py's chunked path. Resampling
(``resample_tf``) and songs whose channels are not the model's follow
``runtime.resampling`` and ``runtime.channels``, the numpy path's rules too. An export
made with a Wiener post-filter (``wiener``, in the facts' ``post_filter``) runs it in
serving_default and separate_audio on the model's outputs at its rate
(``runtime.wiener_graph``, as ``runtime.chunking.SongSeparation`` does); separate_windows
stays one model call. Core TF ops only, so a stock TF Serving binary runs it.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from models.architecture import Architecture
from models.framing import ChunkPlan, frame_tf, stitch_tf
from runtime import resampling
from runtime.channels import channel_rule, into_model, out_of_model
from runtime.wiener import complementary_sources

SIGNATURES = ("serving_default", "separate_audio", "separate_windows")


def resample_tf(signal, from_rate, to_rate):
    """``[time, channels]`` from one sample rate to another (rates may be run-time
    tensors) by the one resampling rule, ``runtime.resampling``'s (see there): the
    same windows, band edge and lengths as its numpy ``resample``, to float32
    rounding. The output has ``ceil(time * to_rate / from_rate)`` samples."""
    from_rate = tf.cast(from_rate, tf.int32)
    to_rate = tf.cast(to_rate, tf.int32)
    return tf.cond(from_rate == to_rate, lambda: tf.identity(signal),
                   lambda: _fft_resample(signal, from_rate, to_rate))


def _band_gain(frequencies, from_rate, to_rate):
    """``runtime.resampling.band_gain`` in TensorFlow (float64)."""
    nyquist = tf.cast(tf.minimum(from_rate, to_rate), tf.float64) / 2
    edge = (1 - resampling.ROLLOFF) * nyquist
    position = tf.clip_by_value((frequencies - edge) / (nyquist - edge), 0.0, 1.0)
    return 0.5 + 0.5 * tf.cos(np.pi * position)


def _window_plan(from_rate, to_rate):
    """``resampling.WindowPlan.between`` for run-time rates: (divisor, units)."""
    divisor, _ = tf.while_loop(lambda a, b: b > 0, lambda a, b: (b, a % b), (from_rate, to_rate))
    (units,) = tf.while_loop(lambda u: u < resampling.MIN_WINDOW_SECONDS * divisor, lambda u: (u * 2,),
                             (tf.constant(1),))
    return divisor, units


def _fft_resample(signal, from_rate, to_rate):
    divisor, units = _window_plan(from_rate, to_rate)
    unit_in, unit_out = from_rate // divisor, to_rate // divisor
    context = units // resampling.CONTEXT_DIVISOR
    segment = units - 2 * context
    length = tf.shape(signal)[0]
    # In int64: length * to_rate passes 2**31 for songs of a few seconds.
    out_length = tf.cast((tf.cast(length, tf.int64) * tf.cast(to_rate, tf.int64) + tf.cast(from_rate, tf.int64) - 1)
                         // tf.cast(from_rate, tf.int64), tf.int32)
    # As many windows as the kept segments need to cover the output (one for an empty song).
    windows = tf.maximum((out_length + segment * unit_out - 1) // (segment * unit_out), 1)
    padded_length = (windows * segment + 2 * context) * unit_in
    padded = tf.pad(signal, [[context * unit_in, padded_length - context * unit_in - length], [0, 0]])
    framed = tf.signal.frame(padded, units * unit_in, segment * unit_in, axis=0)  # [windows, time, channels]
    spectrum = tf.signal.rfft(tf.transpose(framed, [0, 2, 1]))
    bins_out = units * unit_out // 2 + 1
    kept = tf.minimum(tf.shape(spectrum)[2], bins_out)
    frequencies = tf.cast(tf.range(kept), tf.float64) * (tf.cast(divisor, tf.float64) / tf.cast(units, tf.float64))
    gain = _band_gain(frequencies, from_rate, to_rate) * (tf.cast(to_rate, tf.float64) / tf.cast(from_rate, tf.float64))
    spectrum = spectrum[:, :, :kept] * tf.cast(gain, tf.complex64)
    spectrum = tf.pad(spectrum, [[0, 0], [0, 0], [0, bins_out - kept]])
    resampled = tf.signal.irfft(spectrum, fft_length=[units * unit_out])
    centres = tf.transpose(resampled[:, :, context * unit_out:(context + segment) * unit_out], [0, 2, 1])
    channels = signal.shape[1] if signal.shape[1] is not None else tf.shape(signal)[1]
    return tf.reshape(centres, [-1, channels])[:out_length]


class SeparationModule(tf.Module):
    """A Keras separator as a SavedModel: see the module docstring."""

    def __init__(self, model: keras.Model, architecture: Architecture, config, plan: ChunkPlan, facts: dict,
                 windows_per_call: int = 4, wiener=None):
        super().__init__(name="wavesep")
        self._model = model  # its variables are tracked below; the Keras object itself is not saved
        self.model_variables = list(model.variables)
        self._architecture = architecture
        self._config = config
        self.channels = config.channels
        self.sample_rate = config.sample_rate
        self.plan = plan
        self.windows_per_call = windows_per_call
        self.wiener = wiener if wiener is not None and wiener.active else None  # runtime.wiener.WienerSettings
        self.complementary = complementary_sources(self.wiener, architecture.sums_to_input(config))
        self.facts_json = json.dumps(facts, sort_keys=True)

        self.window_spec = tf.TensorSpec([None, None, self.channels], tf.float32, name="windows")
        self.forward = tf.function(self._forward, input_signature=[self.window_spec])
        self.serving_default = tf.function(
            self._serving_default, input_signature=[tf.TensorSpec([None, None, self.channels], tf.float32,
                                                                  name="waveform")])
        self.separate_audio = tf.function(
            self._separate_audio, input_signature=[tf.TensorSpec([None], tf.string, name="audio_bytes")])
        # Traced with the facts as its (constant) argument: `saved_model_cli show --all` prints them.
        self.model_facts = tf.function(lambda facts: tf.constant(self.facts_json))
        self.model_facts.get_concrete_function(
            {key: value if isinstance(value, str) else json.dumps(value) for key, value in facts.items()})

    def signatures(self) -> dict:
        return {"serving_default": self.serving_default.get_concrete_function(),
                "separate_audio": self.separate_audio.get_concrete_function(),
                "separate_windows": self.forward.get_concrete_function()}

    def _forward(self, windows):
        """Chunk-plan windows ``[n, input_length, channels]`` -> {source: ``[n, output_length, channels]``}."""
        estimates = self._architecture.run_windows(self._model, self._config, windows)
        return {source: tf.cast(estimate, tf.float32) for source, estimate in estimates.items()}

    def _separate_song(self, song):
        """``[time, channels]`` (1 or 2 channels, known when traced) -> (vocals, accompaniment),
        each ``[time, channels]``.

        The windows go through the model ``windows_per_call`` at a time (fewer when
        the song needs fewer), in a loop, so memory stays bounded for long songs. A
        song whose channels are not the model's meets it by the channel rule
        (``runtime.channels``), window by window as the numpy path does."""
        plan, channels = self.plan, song.shape[1]
        rule = channel_rule(channels, self.channels)
        windows = frame_tf(song, plan)
        count = tf.shape(windows)[0]
        # At least one call of one window, even for an empty song: a loop that runs
        # no iterations cannot stack its (partly unknown) output shape.
        calls = tf.maximum((count + self.windows_per_call - 1) // self.windows_per_call, 1)
        per_call = tf.maximum((count + calls - 1) // calls, 1)
        windows = tf.pad(windows, [[0, calls * per_call - count], [0, 0], [0, 0]])
        grouped = tf.reshape(windows, [calls, per_call, plan.input_length, channels])

        def one_call(group):
            estimates = self._forward(into_model(group, rule, tnp))
            return tf.stack([out_of_model(estimates[source], rule, tnp) for source in ("vocals", "accompaniment")])

        outputs = tf.map_fn(one_call, grouped, fn_output_signature=tf.TensorSpec(
            [2, None, plan.output_length, channels], tf.float32))
        outputs = tf.reshape(tf.transpose(outputs, [1, 0, 2, 3, 4]), [2, -1, plan.output_length, channels])
        length = tf.shape(song)[0]
        vocals, accompaniment = stitch_tf(outputs[0, :count], plan, length), stitch_tf(outputs[1, :count], plan, length)
        if self.wiener is not None:
            from runtime.wiener_graph import wiener_tf
            vocals, accompaniment = wiener_tf(song, vocals, accompaniment, self.wiener, self.sample_rate)
        return vocals, accompaniment

    def _serving_default(self, waveform):
        vocals, accompaniment = tf.map_fn(
            self._separate_song, waveform,
            fn_output_signature=(tf.TensorSpec([None, self.channels], tf.float32),) * 2)
        return {"vocals": vocals, "accompaniment": accompaniment}

    def _separate_in_input_channels(self, audio):
        """``[time, 1 or 2]`` at the model's rate -> (vocals, accompaniment) with the same channels:
        the song traced once as mono and once as stereo, the WAV's channel count picks one."""
        def as_channels(channels):
            return lambda: self._separate_song(tf.ensure_shape(audio, [None, channels]))

        return tf.cond(tf.shape(audio)[1] == 1, as_channels(1), as_channels(2))

    def _separate_wav(self, wav_bytes):
        audio, rate = tf.audio.decode_wav(wav_bytes)
        length, channels = tf.shape(audio)[0], tf.shape(audio)[1]
        with tf.control_dependencies([
            tf.debugging.assert_greater(length, 0, message="the WAV holds no samples"),
            tf.debugging.assert_less_equal(channels, 2, message="only mono or stereo WAVs can be separated"),
        ]):
            audio = tf.identity(audio)
        model_input = resample_tf(audio, rate, self.sample_rate)
        vocals, accompaniment = self._separate_in_input_channels(model_input)
        # As runtime.chunking.SongSeparation: the accompaniment is the input plus what the
        # model added to its input, resampled back (one resampling for both sources), so
        # what the round trip through the model's rate loses goes to the accompaniment.
        if self.complementary:  # accompaniment = model input - vocals: only the vocals go back
            vocals = resample_tf(vocals, self.sample_rate, rate)[:length]
            accompaniment = audio - vocals
        else:
            back = resample_tf(tf.concat([vocals, accompaniment - model_input], axis=1), self.sample_rate, rate)[:length]
            vocals, accompaniment = back[:, :channels], audio + back[:, channels:]
        return (tf.audio.encode_wav(tf.clip_by_value(vocals, -1.0, 1.0), rate),
                tf.audio.encode_wav(tf.clip_by_value(accompaniment, -1.0, 1.0), rate))

    def _separate_audio(self, audio_bytes):
        vocals, accompaniment = tf.map_fn(
            self._separate_wav, audio_bytes, fn_output_signature=(tf.TensorSpec([], tf.string),) * 2)
        return {"vocals_bytes": vocals, "accompaniment_bytes": accompaniment}
