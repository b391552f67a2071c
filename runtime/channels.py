"""The one channel rule of separation: how a song's channels meet a model's.

    song    model   the model hears                              the song gets back
    same    same    the window as it is                          the sources as they are
    stereo  mono    each channel on its own (two passes)         each pass's sources in its channel
    mono    stereo  the window on both channels (one pass)       the average of the two channels

``channel_rule`` writes this as matrices, one ``(into, back)`` pair per model pass,
and ``into_model``/``out_of_model`` apply them to a batch of chunk windows with the
array library they are given: numpy in the numpy path
(``runtime.separator.Separator.separate_window``), ``tf.experimental.numpy`` in the
exported graph (``runtime.saved_model_graph``). So both paths follow one definition.
"""
from __future__ import annotations

import numpy as np


def channel_rule(song_channels: int, model_channels: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """One ``(into, back)`` pair per model pass over a window: the pass hears
    ``window @ into`` (``into``: song channels x model channels) and gives the song
    ``sources @ back`` (model channels x song channels), summed over the passes."""
    if song_channels not in (1, 2) or model_channels not in (1, 2):
        raise ValueError(f"only mono and stereo are separated, not {song_channels} channels "
                         f"into a {model_channels}-channel model")
    if song_channels == model_channels:
        identity = np.eye(song_channels, dtype=np.float32)
        return ((identity, identity),)
    if model_channels == 1:  # a stereo song: a pass per channel, its sources back into that channel
        identity = np.eye(2, dtype=np.float32)
        return tuple((identity[:, [channel]], identity[[channel], :]) for channel in range(2))
    # a mono song in a stereo model: heard on both channels, the sources' channels averaged
    return ((np.ones((1, 2), np.float32), np.full((2, 1), 0.5, np.float32)),)


def passes(song_channels: int, model_channels: int) -> int:
    """Model passes over each window: 2 when a mono model separates a stereo song."""
    return len(channel_rule(song_channels, model_channels))


def _is_identity(rule) -> bool:
    return len(rule) == 1 and rule[0][0].shape[0] == rule[0][0].shape[1]


def into_model(windows, rule, xp=np):
    """``[n, time, song channels]`` -> ``[passes * n, time, model channels]``, pass after pass."""
    if _is_identity(rule):
        return windows
    heard = [xp.einsum("ntc,cm->ntm", windows, into) for into, _ in rule]
    return heard[0] if len(heard) == 1 else xp.concatenate(heard, axis=0)


def out_of_model(estimates, rule, xp=np):
    """``[passes * n, time, model channels]`` (``into_model``'s order) -> ``[n, time, song channels]``."""
    if _is_identity(rule):
        return estimates
    parts = xp.split(estimates, len(rule), axis=0) if len(rule) > 1 else [estimates]
    result = None
    for part, (_, back) in zip(parts, rule):
        mapped = xp.einsum("ntm,mc->ntc", part, back)
        result = mapped if result is None else result + mapped
    return result
