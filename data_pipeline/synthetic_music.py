"""Deterministic synthetic songs with separate vocal and accompaniment stems.

A separator trained only on these songs has to transfer to real music, so the
generator favours *variety* and *voice-specific cues* over polish. Every song
draws all of its choices from ``np.random.default_rng(seed)``:

1. **Score** (``compose_song``): tempo 60-180 BPM, 3/4 or 4/4, optional swing,
   key, scale (church modes, harmonic minor, pentatonic, blues) and a looping
   4-8 chord progression. Parts are lists of ``Note`` objects in seconds.
2. **Vocals** (``render_vocals``): a source-filter singer. A band-limited
   glottal-like source (sawtooth/pulse mix with random spectral tilt) follows a
   sung melody with portamento, delayed-onset vibrato, jitter, shimmer and
   intonation errors. Breath noise joins it, and the sum passes through a
   cascade of resonators: 3-5 formants glide from vowel to vowel (10 ms blocks,
   filter state carried across coefficient changes) and fixed higher tract
   resonances keep the upper spectrum alive. Syllable envelopes, phrase rests,
   an instrumental intro, breath intakes and fricative/plosive bursts shape the
   voice; a mix EQ (low cut, presence boost) brightens it like a produced vocal.
   Sometimes a doubled or harmony voice and a ping-pong echo are added.
3. **Accompaniment** (``render_accompaniment``, played by a ``Band``: by default
   ``PROCEDURAL_BAND``; ``rendered_music`` brings sampled instruments): one or two chord instruments
   (always present; pads, organ, FM e-piano, piano, Karplus-Strong strums,
   synths, sometimes overdriven like electric guitars), usually bass and drums,
   sometimes a lead instrument. Chord and lead instruments play harmonic,
   pitched notes *in the vocal register* (the lead often fills the vocal gaps),
   so voice and accompaniment overlap in frequency: the separator must learn
   formants, vibrato, breath and syllables instead of a frequency split.
4. **Mix**: separate stereo-decorrelated noise reverbs per stem, a random
   vocal-to-accompaniment ratio (-9..+6 dB) and a random peak (<= 0.95)
   applied to both stems alike.

Nothing aliases at any sample rate: saw and pulse oscillators use PolyBLEP at
2x (4x below 16 kHz) oversampling followed by an elliptic low-pass at
0.45 * sample_rate; additive, FM and resonator frequencies stay below
0.45 * sample_rate; overdrive runs at >= 96 kHz. Karplus-Strong plucks and
noise are filters, which cannot alias.
"""
from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from scipy import signal

GENERATOR_VERSION = 2  # cache key: bump whenever any (seed, sample_rate, duration) gives different audio

PEAK_LIMIT = 0.95
PARTIAL_LIMIT = 0.45  # highest synthesized frequency, as a fraction of the sample rate
FORMANT_BLOCK_S = 0.01  # formants are updated this often

MAJOR = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR = (0, 2, 3, 5, 7, 8, 10)
# name: (pitch classes the melodies use, 7-note scale the chords are stacked from)
SCALES = {
    "major": (MAJOR, MAJOR),
    "natural_minor": (NATURAL_MINOR, NATURAL_MINOR),
    "dorian": ((0, 2, 3, 5, 7, 9, 10),) * 2,
    "mixolydian": ((0, 2, 4, 5, 7, 9, 10),) * 2,
    "lydian": ((0, 2, 4, 6, 7, 9, 11),) * 2,
    "phrygian": ((0, 1, 3, 5, 7, 8, 10),) * 2,
    "harmonic_minor": ((0, 2, 3, 5, 7, 8, 11),) * 2,
    "major_pentatonic": ((0, 2, 4, 7, 9), MAJOR),
    "minor_pentatonic": ((0, 3, 5, 7, 10), NATURAL_MINOR),
    "blues": ((0, 3, 5, 6, 7, 10), NATURAL_MINOR),
}
DEGREE_WEIGHTS = (3.0, 1.5, 1.0, 3.0, 3.0, 2.5, 0.5)  # favour I, IV, V, vi; rarely vii
MELODY_STEPS = (-4, -3, -2, -1, 0, 1, 2, 3, 4)  # scale steps between consecutive notes
MELODY_STEP_WEIGHTS = (0.3, 0.5, 2.0, 4.0, 2.0, 4.0, 2.0, 0.5, 0.3)
NOTE_LENGTHS = (1, 2, 3, 4, 6, 8)  # in sixteenth notes
DENSE_WEIGHTS = (2.0, 5.0, 2.0, 3.0, 1.0, 0.5)
SPARSE_WEIGHTS = (0.2, 1.0, 1.0, 3.0, 3.0, 3.0)

# lowest and highest sung midi note, range of the vocal-tract scale (formant multiplier)
VOICE_TYPES = {
    "bass": (40, 64, 0.92, 1.0),
    "tenor": (48, 72, 0.96, 1.06),
    "alto": (53, 77, 1.08, 1.18),
    "soprano": (60, 81, 1.12, 1.25),
}
# F1, F2, F3 of adult male vowels (Peterson & Barney): i, I, e, ae, a, o, U, u, A, er
VOWELS = (
    (270, 2290, 3010), (390, 1990, 2550), (530, 1840, 2480), (660, 1720, 2410),
    (730, 1090, 2440), (570, 840, 2410), (440, 1020, 2240), (300, 870, 2240),
    (640, 1190, 2390), (490, 1350, 1690),
)
FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0, 200.0, 260.0)
# Static resonances above F5 (every 1.1 kHz up to 10 kHz, for a tract scale of 1) continue the tube:
# without them the resonator cascade falls at 60 dB/octave above F5 and the voice sounds muffled.
UPPER_RESONANCES = tuple(np.arange(5600.0, 10001.0, 1100.0))
UPPER_BANDWIDTH = 400.0
# voiced consonant: F1, F2, F3 it starts the syllable with before gliding into the vowel
VOICED_ONSETS = {
    "m": (270, 1100, 2200), "n": (280, 1600, 2600), "l": (360, 1000, 2800),
    "w": (300, 700, 2200), "y": (280, 2200, 3000), "r": (350, 1100, 1600),
}
VOICED_ONSET_S = 0.07  # at most, and never more than 30 % of the note
# unvoiced consonant: (noise band low Hz, high Hz, duration range in seconds, plosive?)
CONSONANTS = {
    "s": (4000, 9000, (0.06, 0.15), False),
    "sh": (2000, 5000, (0.06, 0.14), False),
    "f": (1500, 8000, (0.05, 0.12), False),
    "t": (2500, 7000, (0.008, 0.025), True),
    "k": (1500, 4000, (0.01, 0.03), True),
}

SIXTEENTHS = tuple(range(16))
EIGHTHS = tuple(range(0, 16, 2))
QUARTERS = (0, 4, 8, 12)
# style: (kick, snare, closed hi-hat, open hi-hat) steps of a 16-step bar
DRUM_PATTERNS = {
    "rock": ((0, 8), (4, 12), EIGHTHS, ()),
    "four_on_the_floor": (QUARTERS, (4, 12), (), (2, 6, 10, 14)),
    "half_time": ((0, 11), (8,), EIGHTHS, ()),
    "breakbeat": ((0, 10), (4, 12), SIXTEENTHS, (7,)),
    "funk": ((0, 3, 10), (4, 12), SIXTEENTHS, (14,)),
    "hip_hop": ((0, 7, 10), (4, 12), EIGHTHS, ()),
    "sparse": ((0,), (8,), QUARTERS, ()),
}
HAT_GRIDS = (QUARTERS, EIGHTHS, SIXTEENTHS)
STAB_PATTERNS = (
    (2, 6, 10, 14), QUARTERS, (0, 6), (0, 3, 6, 10, 12), EIGHTHS, (0, 3, 6, 8, 11, 14), (0, 8),
)
# per-bar (step, interval above the chord root); chord changes always get a note too
BASS_PATTERNS = {
    "whole": ((0, 0),),
    "half": ((0, 0), (8, 0)),
    "pulse": tuple((step, 0) for step in EIGHTHS),
    "root_fifth": ((0, 0), (4, 7), (8, 0), (12, 7)),
    "octaves": tuple((step, 12 * (step % 4 == 2)) for step in EIGHTHS),
    "syncopated": ((0, 0), (3, 0), (6, 0), (10, 0), (12, 7)),
}
# chord timbre: (rhythms that suit it, envelope styles that suit it)
CHORD_TIMBRES = {
    "detuned_saw": (("sustain", "stabs"), ("swell", "sustained")),
    "organ": (("sustain", "stabs"), ("sustained",)),
    "fm": (("sustain", "stabs", "arpeggio"), ("struck", "sustained", "plucked")),
    "piano": (("sustain", "stabs", "arpeggio"), ("struck",)),
    "pluck": (("strum", "arpeggio"), ("plucked",)),
    "saw": (("stabs", "arpeggio", "strum"), ("plucked", "sustained")),
    "square": (("stabs", "arpeggio", "sustain"), ("sustained", "plucked", "swell")),
}
DISTORTABLE_TIMBRES = ("detuned_saw", "pluck", "saw", "square")  # overdriven, these pass for electric guitars
BASS_TIMBRES = ("sine", "saw", "square", "pluck", "fm")
LEAD_TIMBRES = ("square", "fm", "pluck", "saw", "organ", "piano")
# attack, decay, sustain level, release (ranges)
ENVELOPE_STYLES = {
    "swell": ((0.05, 0.5), (0.5, 2.0), (0.6, 1.0), (0.2, 0.6)),
    "sustained": ((0.003, 0.03), (0.2, 1.0), (0.5, 1.0), (0.02, 0.15)),
    "plucked": ((0.001, 0.01), (0.1, 0.8), (0.0, 0.3), (0.02, 0.15)),
    "struck": ((0.001, 0.005), (0.4, 3.0), (0.0, 0.1), (0.05, 0.3)),
}


# --- public API ---------------------------------------------------------------

def generate_song(seed: int, sample_rate: int = 22050, duration: float = 20.0,
                  band: Band | None = None) -> dict[str, np.ndarray]:
    """Returns {"vocals": float32 [T, 2], "accompaniment": float32 [T, 2]}, T = round(duration * sample_rate).

    Deterministic in (seed, sample_rate, duration). The peak of vocals + accompaniment is <= 0.95.
    ``band`` plays the accompaniment (default: the procedural instruments of this module).
    """
    rng = np.random.default_rng(seed)
    n_samples = int(round(duration * sample_rate))
    if n_samples == 0:
        empty = np.zeros((0, 2), np.float32)
        return {"vocals": empty, "accompaniment": empty.copy()}
    song = compose_song(rng, sample_rate, n_samples)
    vocals, phrases = render_vocals(rng, song)
    accompaniment = render_accompaniment(rng, song, phrases, band or PROCEDURAL_BAND)
    vocals = add_reverb(rng, vocals, sample_rate)
    accompaniment = add_reverb(rng, accompaniment, sample_rate)
    return balance_stems(rng, vocals, accompaniment, sample_rate)


# --- score ----------------------------------------------------------------------

@dataclass(frozen=True)
class Note:
    start: float  # seconds
    duration: float  # seconds
    midi: float
    velocity: float  # linear gain, 0..1


@dataclass(frozen=True)
class Chord:
    start_step: int
    n_steps: int
    pitch_classes: tuple[int, ...]  # root first


@dataclass(frozen=True)
class Song:
    """Musical context shared by every part; time is counted in sixteenth-note steps."""
    sample_rate: int
    n_samples: int
    step_s: float
    steps_per_bar: int
    swing: float  # fraction of the swing unit by which off-beats are late
    swing_period: int  # 2: sixteenth swing, 4: eighth swing
    key: int
    melody_scale: tuple[int, ...]
    chords: tuple[Chord, ...]

    @property
    def n_steps(self) -> int:
        return int(np.ceil(self.n_samples / self.sample_rate / self.step_s))

    @property
    def bar_s(self) -> float:
        return self.steps_per_bar * self.step_s

    def step_time(self, step: int) -> float:
        """Onset in seconds of a step, off-beats delayed by the swing."""
        offbeat = step % self.swing_period == self.swing_period // 2
        return (step + offbeat * self.swing * self.swing_period / 2) * self.step_s

    def chord_at(self, step: int) -> Chord:
        starts = [chord.start_step for chord in self.chords]
        return self.chords[max(0, bisect.bisect_right(starts, step) - 1)]


def compose_song(rng: np.random.Generator, sample_rate: int, n_samples: int) -> Song:
    """Tempo, meter, swing, key, scale and the chord progression looped over the whole song."""
    step_s = 60.0 / rng.uniform(60, 180) / 4
    steps_per_bar = 12 if rng.random() < 0.15 else 16
    swing, swing_period = (rng.uniform(0.1, 0.35), _pick(rng, (2, 4))) if rng.random() < 0.3 else (0.0, 4)
    melody_scale, harmony_scale = SCALES[_pick(rng, tuple(SCALES))]
    key = int(rng.integers(12))
    progression = compose_progression(rng, harmony_scale, key)
    chord_steps = int(steps_per_bar * _pick(rng, (0.5, 1, 1, 2)))
    n_steps = int(np.ceil(n_samples / sample_rate / step_s))
    chords = tuple(Chord(start, chord_steps, progression[i % len(progression)])
                   for i, start in enumerate(range(0, n_steps, chord_steps)))
    return Song(sample_rate, n_samples, step_s, steps_per_bar, swing, swing_period, key, melody_scale, chords)


def compose_progression(rng, harmony_scale, key) -> list[tuple[int, ...]]:
    """4-8 triads or seventh chords stacked in thirds from the scale, usually starting on the tonic."""
    n_tones = 4 if rng.random() < 0.3 else 3
    length = int(rng.integers(4, 9))
    degrees = [0 if rng.random() < 0.7 else _pick(rng, range(7), DEGREE_WEIGHTS)]
    while len(degrees) < length:
        degree = _pick(rng, range(7), DEGREE_WEIGHTS)
        if degree != degrees[-1]:
            degrees.append(degree)
    return [tuple((key + harmony_scale[(degree + 2 * k) % 7]) % 12 for k in range(n_tones)) for degree in degrees]


def scale_pitches(song: Song, low: float, high: float) -> list[int]:
    return [m for m in range(int(np.ceil(low)), int(high) + 1) if (m - song.key) % 12 in song.melody_scale]


def compose_phrases(rng, song: Song, low: float, high: float, first_step: int, density: float,
                    max_rest_beats: int, break_probability: float = 0.0) -> list[list[Note]]:
    """A melody in phrases of 2-8 beats separated by rests (sometimes 1-2 bar breaks), mostly stepwise."""
    pitches = scale_pitches(song, low, high)
    lengths, weights = _note_length_options(song, density)
    legato = rng.uniform(0.6, 1.0)
    index = int(rng.integers(len(pitches)))
    phrases, step = [], first_step
    while step < song.n_steps:
        phrase_end = min(step + 4 * int(rng.integers(2, 9)), song.n_steps)
        level = rng.uniform(0.6, 1.0)
        notes = []
        while step < phrase_end:
            length = _pick(rng, lengths, weights)
            index = _next_pitch_index(rng, index, pitches, song.chord_at(step), on_beat=step % 4 == 0)
            notes.append(Note(song.step_time(step), length * song.step_s * legato, pitches[index],
                              level * rng.uniform(0.75, 1.0)))
            step += length
        hold = int(rng.integers(0, 5))  # phrase-final notes are often held
        notes[-1] = replace(notes[-1], duration=notes[-1].duration + hold * song.step_s)
        phrases.append(notes)
        step += hold + int(rng.integers(2, 4 * max_rest_beats + 1))
        if rng.random() < break_probability:
            step += song.steps_per_bar * int(rng.integers(1, 3))
    return phrases


def _note_length_options(song: Song, density: float):
    weights = density * np.array(DENSE_WEIGHTS) + (1 - density) * np.array(SPARSE_WEIGHTS)
    weights[np.array(NOTE_LENGTHS) * song.step_s < 0.1] = 0.0  # nobody sings 60 ms notes
    return NOTE_LENGTHS, weights


def _next_pitch_index(rng, index, pitches, chord: Chord, on_beat: bool) -> int:
    index = _reflect(index + _pick(rng, MELODY_STEPS, MELODY_STEP_WEIGHTS), len(pitches))
    chord_tones = [i for i, pitch in enumerate(pitches) if pitch % 12 in chord.pitch_classes]
    if on_beat and chord_tones and rng.random() < 0.5:  # strong beats lean on chord tones
        index = min(chord_tones, key=lambda i: abs(i - index))
    return index


def _reflect(index: int, size: int) -> int:
    if index < 0:
        index = -index
    if index > size - 1:
        index = 2 * (size - 1) - index
    return int(np.clip(index, 0, size - 1))


def keep_active_bars(notes: list[Note], song: Song, active_bars: np.ndarray) -> list[Note]:
    return [note for note in notes if active_bars[min(int(note.start / song.bar_s), len(active_bars) - 1)]]


def arrangement(rng, song: Song, gap_probability: float) -> np.ndarray:
    """Which bars a part plays: sometimes it waits for an intro or drops out for a break."""
    n_bars = int(np.ceil(song.n_steps / song.steps_per_bar))
    active = np.ones(n_bars, bool)
    if n_bars > 3 and rng.random() < gap_probability:
        active[: int(rng.integers(1, 3))] = False
    if n_bars > 5 and rng.random() < gap_probability:
        start = int(rng.integers(2, n_bars - 2))
        active[start: start + int(rng.integers(1, 3))] = False
    return active


# --- vocals -----------------------------------------------------------------------

@dataclass(frozen=True)
class Syllable:
    note: Note
    vowel: tuple[float, ...]  # F1..F5 in Hz for a vocal-tract scale of 1
    consonant: str | None  # key of CONSONANTS or VOICED_ONSETS, sounded before the vowel


@dataclass(frozen=True)
class Singer:
    tract_scale: float
    n_moving_formants: int  # how many formants follow the vowels; the others hold their average
    bandwidths: np.ndarray
    vowel_glide_s: float
    glide_s: float  # portamento time constant
    vibrato_depth: float  # semitones
    vibrato_rate: float  # Hz
    vibrato_delay_s: float
    jitter: float  # semitones
    shimmer: float  # relative amplitude
    intonation: float  # standard deviation of the per-note pitch error, semitones
    scoop_probability: float  # chance that a note starts below its pitch and slides up
    tilt_hz: float  # source spectral tilt corner
    pulse_mix: float
    pulse_duty: float
    breathiness: float
    inhale_probability: float
    attack_s: float
    release_s: float


def render_vocals(rng, song: Song) -> tuple[np.ndarray, list[list[Syllable]]]:
    """Stereo vocal stem: a lead singer, sometimes a double or harmony, sometimes an echo."""
    voice_type = _pick(rng, tuple(VOICE_TYPES))
    low, high = VOICE_TYPES[voice_type][:2]
    center, half_range = rng.uniform(low + 5, high - 5), rng.uniform(4, 9)
    # an instrumental intro (at most a fifth of the song) guarantees the stem some true silence
    intro_s = min(rng.uniform(1.0, 4.0), 0.2 * song.n_samples / song.sample_rate)
    notes = compose_phrases(rng, song, max(low, center - half_range), min(high, center + half_range),
                            first_step=int(intro_s / song.step_s), density=rng.uniform(0, 1),
                            max_rest_beats=int(rng.integers(1, 7)), break_probability=rng.uniform(0, 0.3))
    phrases = compose_lyrics(rng, notes)
    stereo = pan(render_voice(rng, phrases, draw_singer(rng, voice_type), song), rng.uniform(-0.2, 0.2))
    if rng.random() < 0.4:
        second = second_voice(rng, phrases, song, _pick(rng, ("double", "harmony")))
        voice = render_voice(rng, second, draw_singer(rng, voice_type), song)
        stereo += pan(voice, rng.uniform(0.3, 0.8) * rng.choice((-1, 1))) * db_to_gain(rng.uniform(-10, -3))
    if rng.random() < 0.3:
        stereo = add_echo(rng, stereo, song)
    return vocal_eq(rng, stereo, song.sample_rate), phrases


def vocal_eq(rng, stereo: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix-style vocal EQ: a low cut and a presence boost (produced vocals are brighter than speech)."""
    stereo = filter_audio(stereo, "highpass", rng.uniform(60, 150), sample_rate)
    boost = db_to_gain(rng.uniform(0, 12)) - 1
    return stereo + boost * filter_audio(stereo, "highpass", _log_uniform(rng, 1000, 4000), sample_rate, order=1)


def compose_lyrics(rng, phrases: list[list[Note]]) -> list[list[Syllable]]:
    """One syllable per note, except melismas, which carry the previous vowel on."""
    consonant_rate, melisma_rate = rng.uniform(0.2, 0.8), rng.uniform(0.0, 0.3)
    lyrics = []
    for notes in phrases:
        syllables = []
        for note in notes:
            if syllables and rng.random() < melisma_rate:
                syllables.append(Syllable(note, syllables[-1].vowel, None))
                continue
            consonant = _pick(rng, (*CONSONANTS, *VOICED_ONSETS)) if rng.random() < consonant_rate else None
            syllables.append(Syllable(note, draw_vowel(rng), consonant))
        lyrics.append(syllables)
    return lyrics


def draw_vowel(rng) -> tuple[float, ...]:
    f1, f2, f3 = _pick(rng, VOWELS)
    formants = np.array([f1, f2, f3, rng.uniform(3300, 3700), rng.uniform(4300, 4900)])
    return tuple(formants * rng.uniform(0.94, 1.06, size=5))


def draw_singer(rng, voice_type: str) -> Singer:
    scale_low, scale_high = VOICE_TYPES[voice_type][2:]
    return Singer(
        tract_scale=rng.uniform(scale_low, scale_high),
        n_moving_formants=int(rng.integers(3, 6)),
        bandwidths=np.array(FORMANT_BANDWIDTHS) * rng.uniform(0.6, 1.5),
        vowel_glide_s=rng.uniform(0.02, 0.08),
        glide_s=rng.uniform(0.01, 0.12),
        vibrato_depth=rng.uniform(0.0, 1.0),
        vibrato_rate=rng.uniform(4.0, 7.0),
        vibrato_delay_s=rng.uniform(0.1, 0.5),
        jitter=rng.uniform(0.02, 0.15),
        shimmer=rng.uniform(0.02, 0.2),
        intonation=rng.uniform(0.0, 0.2),
        scoop_probability=rng.uniform(0.0, 0.5),
        tilt_hz=_log_uniform(rng, 1000, 10000),
        pulse_mix=rng.uniform(0.0, 0.6),
        pulse_duty=rng.uniform(0.2, 0.6),
        breathiness=_log_uniform(rng, 0.005, 0.2),
        inhale_probability=rng.uniform(0.0, 0.7),
        attack_s=rng.uniform(0.01, 0.08),
        release_s=rng.uniform(0.03, 0.2),
    )


def second_voice(rng, phrases: list[list[Syllable]], song: Song, kind: str) -> list[list[Syllable]]:
    """A slightly late, detuned double of the lead, or a diatonic harmony on some of its phrases."""
    if kind == "double":
        delay, detune = rng.uniform(0.005, 0.03), rng.uniform(-0.15, 0.15)
        change = lambda note: replace(note, start=note.start + delay, midi=note.midi + detune)  # noqa: E731
    else:
        steps = _pick(rng, (-3, -2, 2, 4))  # a fourth or third below, a third or fifth above
        scale = scale_pitches(song, 20, 120)
        change = lambda note: replace(note, midi=scale[scale.index(note.midi) + steps])  # noqa: E731
        phrases = [phrase for phrase in phrases if rng.random() < 0.7] or phrases[:1]
    return [[replace(syllable, note=change(syllable.note)) for syllable in phrase] for phrase in phrases]


def render_voice(rng, phrases: list[list[Syllable]], singer: Singer, song: Song) -> np.ndarray:
    """Mono singing voice: source -> time-varying formants, plus consonant noise."""
    syllables = [syllable for phrase in phrases for syllable in phrase]
    if not syllables:
        return np.zeros(song.n_samples)
    notes = [syllable.note for syllable in syllables]
    f0 = midi_to_hz(pitch_contour(rng, notes, singer, song))
    loudness = voice_loudness(rng, notes, singer, song)
    source = glottal_source(f0, song.sample_rate, singer.pulse_mix, singer.pulse_duty)
    source = filter_audio(source, "lowpass", singer.tilt_hz, song.sample_rate, order=1)
    breath_level = singer.breathiness * loudness + inhale_envelope(rng, phrases, singer, song)
    excitation = source / rms(source) * loudness + rng.standard_normal(song.n_samples) * breath_level
    formants, bandwidths = formant_tracks(syllables, singer, f0, song)
    voiced = formant_filter(excitation, formants, bandwidths, song.sample_rate)
    return voiced / active_rms(voiced, song.sample_rate) + consonant_noise(rng, syllables, song)


def pitch_contour(rng, notes: list[Note], singer: Singer, song: Song) -> np.ndarray:
    """Sung pitch in midi units: gliding note targets plus vibrato, jitter and slow drift."""
    n, sr = song.n_samples, song.sample_rate
    targets = [note.midi + rng.normal(0.0, singer.intonation) for note in notes]
    midi = one_pole_smooth(hold_track(_sample_indices(notes, sr), targets, n), singer.glide_s, sr)
    drift = rng.uniform(0.0, 0.15) * smooth_noise(rng, n, sr, 2.0)
    return (midi + scoops(rng, notes, singer, song) + vibrato(rng, notes, singer, song)
            + singer.jitter * smooth_noise(rng, n, sr, 40.0) + drift)


def scoops(rng, notes: list[Note], singer: Singer, song: Song) -> np.ndarray:
    """Pitch offsets of notes attacked from below: up to 1.5 semitones flat, rising within ~50 ms."""
    n, sr = song.n_samples, song.sample_rate
    offset = np.zeros(n)
    for note in notes:
        if rng.random() < singer.scoop_probability:
            start = int(note.start * sr)
            t = np.arange(min(int(0.3 * sr), n - start)) / sr
            offset[start:start + len(t)] -= rng.uniform(0.3, 1.5) * np.exp(-t / rng.uniform(0.02, 0.08))
    return offset


def vibrato(rng, notes: list[Note], singer: Singer, song: Song) -> np.ndarray:
    """Vibrato that fades in after a delay within each note (short notes get none)."""
    n, sr = song.n_samples, song.sample_rate
    rate = singer.vibrato_rate * (1 + 0.05 * smooth_noise(rng, n, sr, 1.0))
    phase = 2 * np.pi * np.cumsum(rate) / sr + rng.uniform(0, 2 * np.pi)
    depth = np.zeros(n)
    for note in notes:
        start, stop = int(note.start * sr), min(n, int((note.start + note.duration + singer.release_s) * sr))
        t = np.arange(stop - start) / sr
        ramp = np.clip((t - singer.vibrato_delay_s) / 0.3, 0.0, 1.0) * rng.uniform(0.6, 1.0)
        np.maximum(depth[start:stop], ramp, out=depth[start:stop])
    return singer.vibrato_depth * depth * np.sin(phase)


def voice_loudness(rng, notes: list[Note], singer: Singer, song: Song) -> np.ndarray:
    envelope = Envelope(singer.attack_s, 1.0, 1.0, singer.release_s)
    shimmer = 1 + singer.shimmer * smooth_noise(rng, song.n_samples, song.sample_rate, 150.0)
    return note_envelope(notes, song.n_samples, song.sample_rate, envelope) * np.maximum(shimmer, 0.0)


def glottal_source(f0: np.ndarray, sample_rate: int, pulse_mix: float, duty: float) -> np.ndarray:
    """Sawtooth-like glottal pulse train; mixing in a pulse wave reshapes its harmonic envelope."""
    cycles, increment, factor = _oversampled_cycles(f0, sample_rate)
    saw = _polyblep_saw(cycles, increment)
    pulse = saw - _polyblep_saw(cycles + duty, increment)
    return _decimate(saw + pulse_mix * pulse, sample_rate, factor)


def inhale_envelope(rng, phrases: list[list[Syllable]], singer: Singer, song: Song) -> np.ndarray:
    """Soft breath noise shortly before some phrases."""
    sr, envelope = song.sample_rate, np.zeros(song.n_samples)
    for phrase in phrases:
        if rng.random() > singer.inhale_probability:
            continue
        stop = int((phrase[0].note.start - rng.uniform(0.05, 0.15)) * sr)
        start = max(0, stop - int(rng.uniform(0.15, 0.4) * sr))
        if stop > start:
            envelope[start:stop] += rng.uniform(0.05, 0.25) * np.hanning(stop - start)
    return envelope


def formant_tracks(syllables: list[Syllable], singer: Singer, f0: np.ndarray, song: Song):
    """Formant frequencies per 10 ms block, gliding between the syllables' vowels."""
    sr = song.sample_rate
    block = _formant_block(sr)
    n_blocks = int(np.ceil(song.n_samples / block))
    times, targets = syllable_formant_targets(syllables)
    vowels = hold_track((np.array(times) * sr / block).astype(int), np.array(targets), n_blocks)
    formants = one_pole_smooth(vowels, singer.vowel_glide_s, sr / block) * singer.tract_scale
    formants[:, singer.n_moving_formants:] = formants[:, singer.n_moving_formants:].mean(axis=0)
    formants[:, 0] = np.maximum(formants[:, 0], 1.1 * f0[::block][:n_blocks])  # singers raise F1 above f0
    upper = np.array(UPPER_RESONANCES) * singer.tract_scale
    formants = np.concatenate([formants, np.broadcast_to(upper, (n_blocks, len(upper)))], axis=1)
    bandwidths = np.concatenate([singer.bandwidths, np.full(len(upper), UPPER_BANDWIDTH)])
    audible = formants.mean(axis=0) < PARTIAL_LIMIT * sr
    return np.minimum(formants[:, audible], PARTIAL_LIMIT * sr), bandwidths[audible]


def syllable_formant_targets(syllables: list[Syllable]) -> tuple[list[float], list[tuple[float, ...]]]:
    """When each formant target begins: a voiced consonant's formants, then the vowel's."""
    times, targets = [], []
    for syllable in syllables:
        vowel_start = syllable.note.start
        if syllable.consonant in VOICED_ONSETS:
            times.append(vowel_start)
            targets.append(VOICED_ONSETS[syllable.consonant] + syllable.vowel[3:])
            vowel_start += min(VOICED_ONSET_S, 0.3 * syllable.note.duration)
        times.append(vowel_start)
        targets.append(syllable.vowel)
    return times, targets


def formant_filter(x: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cascade of two-pole resonators whose coefficients change every block; the state carries over."""
    block = _formant_block(sample_rate)
    sections = resonator_sections(formants, bandwidths, sample_rate)
    state = np.zeros((formants.shape[1], 2))
    out = np.empty_like(x)
    for index, sos in enumerate(sections):
        if index:
            state = _restate(state, sections[index - 1], sos)
        span = slice(index * block, (index + 1) * block)
        out[span], state = signal.sosfilt(sos, x[span], zi=state)
    return out


def _restate(state: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Re-express resonator state for new coefficients, keeping each section's last two outputs.

    sosfilt's transposed state mixes in the old coefficients; reused with new ones it makes clicks.
    Carrying the output history instead behaves like direct form I, which glides smoothly.
    (The sections have no zeros, so the output history is the whole state.)
    """
    a1, a2 = old[:, 4], old[:, 5]
    last = -state[:, 1] / a2
    before_last = -(state[:, 0] + a1 * last) / a2
    return np.stack([-new[:, 4] * last - new[:, 5] * before_last, -new[:, 5] * last], axis=1)


def resonator_sections(frequencies: np.ndarray, bandwidths: np.ndarray, sample_rate: int) -> np.ndarray:
    """Second-order sections [..., 6] of resonators with unity gain at DC (Klatt cascade style)."""
    radius = np.exp(-np.pi * bandwidths / sample_rate) * np.ones_like(frequencies)
    a1 = -2 * radius * np.cos(2 * np.pi * frequencies / sample_rate)
    a2 = radius ** 2
    sections = np.zeros(frequencies.shape + (6,))
    sections[..., 0], sections[..., 3], sections[..., 4], sections[..., 5] = 1 + a1 + a2, 1.0, a1, a2
    return sections


def consonant_noise(rng, syllables: list[Syllable], song: Song) -> np.ndarray:
    """Fricative hiss or plosive bursts of band-passed noise ending at each consonant's vowel onset."""
    sr, out = song.sample_rate, np.zeros(song.n_samples)
    level = rng.uniform(0.15, 0.6)
    for syllable in syllables:
        if syllable.consonant not in CONSONANTS:
            continue
        low, high, (shortest, longest), plosive = CONSONANTS[syllable.consonant]
        stop = min(song.n_samples, int((syllable.note.start + 0.01) * sr))
        length = min(stop, int(rng.uniform(shortest, longest) * sr))
        if length < 4:
            continue
        shape = np.exp(-np.arange(length) / (0.3 * length)) if plosive else np.hanning(length)
        noise = filter_audio(rng.standard_normal(length), "bandpass", (low, high), sr)
        out[stop - length: stop] += level * shape * noise / rms(noise)
    return out


def add_echo(rng, stereo: np.ndarray, song: Song) -> np.ndarray:
    """A tempo-synced ping-pong delay."""
    delay = int(song.step_s * _pick(rng, (2, 3, 4, 6)) * song.sample_rate)
    feedback, level = rng.uniform(0.2, 0.5), rng.uniform(0.15, 0.4)
    out = stereo.copy()
    for repeat in range(1, 5):
        shift = repeat * delay
        if shift >= len(stereo):
            break
        echo = stereo[:-shift, ::-1] if repeat % 2 else stereo[:-shift]
        out[shift:] += level * feedback ** (repeat - 1) * echo
    return out


# --- accompaniment -------------------------------------------------------------

Instrument = Callable[[list[Note], Song], np.ndarray]


@dataclass(frozen=True)
class Band:
    """Who plays the accompaniment's parts; each returns stereo float [T, 2]."""
    chords: Callable  # (rng, song, active_bars)
    bass: Callable  # (rng, song, active_bars)
    drums: Callable  # (rng, song, active_bars)
    lead: Callable  # (rng, song, vocal_phrases)


@dataclass(frozen=True)
class Envelope:
    attack: float
    decay: float
    sustain: float
    release: float


def render_accompaniment(rng, song: Song, vocal_phrases: list[list[Syllable]], band: Band) -> np.ndarray:
    """Sum of randomly chosen parts, each levelled to unit RMS, then given a random gain."""
    always = np.ones(int(np.ceil(song.n_steps / song.steps_per_bar)), bool)
    parts = [(band.chords(rng, song, always), rng.uniform(-4, 0))]
    if rng.random() < 0.5:
        parts.append((band.chords(rng, song, arrangement(rng, song, 0.5)), rng.uniform(-10, -2)))
    if rng.random() < 0.85:
        parts.append((band.bass(rng, song, arrangement(rng, song, 0.2)), rng.uniform(-6, 0)))
    if rng.random() < 0.8:
        parts.append((band.drums(rng, song, arrangement(rng, song, 0.3)), rng.uniform(-5, 0)))
    if rng.random() < 0.45:
        parts.append((band.lead(rng, song, vocal_phrases), rng.uniform(-10, -2)))
    return sum(part / rms(part) * db_to_gain(gain) for part, gain in parts)


def render_chords(rng, song: Song, active_bars: np.ndarray) -> np.ndarray:
    """A chord instrument voiced around a random centre inside the vocal register."""
    timbre = _pick(rng, tuple(CHORD_TIMBRES))
    rhythms, envelope_styles = CHORD_TIMBRES[timbre]
    rhythm = _pick(rng, rhythms)
    instrument = make_instrument(rng, timbre, draw_envelope(rng, _pick(rng, envelope_styles)), song.sample_rate)
    lines = chord_part(rng, song, rhythm)
    chords = render_lines(rng, [keep_active_bars(line, song, active_bars) for line in lines], instrument, song)
    if timbre in DISTORTABLE_TIMBRES and rng.random() < 0.35:
        distorted = overdrive(chords, rng.uniform(2, 12), song.sample_rate)
        chords = filter_audio(distorted, "lowpass", rng.uniform(2500, 6000), song.sample_rate, order=4)  # speaker
    return chords


def chord_part(rng, song: Song, rhythm: str) -> list[list[Note]]:
    """The notes of a chord part voiced around a random centre inside the vocal register,
    one monophonic line per chord tone (or a single arpeggio line)."""
    hits = chord_hits(rng, song, rhythm)
    center = rng.uniform(52, 72)
    if rhythm == "arpeggio":
        return [arpeggio_notes(rng, song, hits, center)]
    return chord_lines(rng, song, hits, center, strum_s=rng.uniform(0.005, 0.03) * (rhythm == "strum"))


def chord_hits(rng, song: Song, rhythm: str) -> list[tuple[int, float, float]]:
    """(step, length in steps, velocity) of every chord attack."""
    if rhythm == "sustain":
        return [(chord.start_step, chord.n_steps, rng.uniform(0.8, 1.0)) for chord in song.chords]
    if rhythm == "arpeggio":
        period = 1 if song.step_s > 0.09 and rng.random() < 0.5 else 2
        pattern = tuple(range(0, song.steps_per_bar, period))
    else:
        pattern = _pick(rng, STAB_PATTERNS)
    gate = 1.0 if rhythm == "strum" else rng.uniform(0.3, 1.0)
    steps = _bar_pattern_steps(song, pattern, with_chord_changes=False)
    return [(step, max(1.0, gate * (next_step - step)), rng.uniform(0.6, 1.0) * (1.0 if step % 4 == 0 else 0.85))
            for step, next_step in zip(steps, steps[1:] + [song.n_steps + 8])]


def chord_lines(rng, song: Song, hits, center: float, strum_s: float) -> list[list[Note]]:
    """One note list per chord tone (voice leading keeps each tone near the register centre)."""
    n_tones = max(len(chord.pitch_classes) for chord in song.chords)
    lines = [[] for _ in range(n_tones)]
    for index, (step, length, velocity) in enumerate(hits):
        tones = voicing(song.chord_at(step), center)
        order = range(len(tones)) if index % 2 == 0 else range(len(tones) - 1, -1, -1)  # down/up strums
        for rank, tone in enumerate(order):
            delay = rank * strum_s
            lines[tone].append(Note(song.step_time(step) + delay, max(0.02, length * song.step_s - delay),
                                    tones[tone], velocity * rng.uniform(0.85, 1.0)))
    return lines


def arpeggio_notes(rng, song: Song, hits, center: float) -> list[Note]:
    """One chord tone per hit, cycling up, down or up and down through the voicing plus its octave."""
    direction = _pick(rng, ("up", "down", "up_down"))
    notes = []
    for index, (step, length, velocity) in enumerate(hits):
        tones = voicing(song.chord_at(step), center)
        tones = tones + [tones[0] + 12]
        cycle = {"up": tones, "down": tones[::-1], "up_down": tones + tones[-2:0:-1]}[direction]
        notes.append(Note(song.step_time(step), length * song.step_s, cycle[index % len(cycle)], velocity))
    return notes


def voicing(chord: Chord, center: float) -> list[int]:
    return sorted(_nearest_pitch(pitch_class, center) for pitch_class in chord.pitch_classes)


def render_bass(rng, song: Song, active_bars: np.ndarray) -> np.ndarray:
    """Bass line on the chord roots, in one of several rhythms and timbres."""
    notes = bass_line(rng, song)
    envelope = draw_envelope(rng, _pick(rng, ("sustained", "plucked")))
    instrument = make_instrument(rng, _pick(rng, BASS_TIMBRES), envelope, song.sample_rate)
    return pan(instrument(keep_active_bars(notes, song, active_bars), song), rng.uniform(-0.1, 0.1))


def bass_line(rng, song: Song) -> list[Note]:
    """Notes on the chord roots (and the pattern's intervals) in one of several rhythms."""
    pattern = BASS_PATTERNS[_pick(rng, tuple(BASS_PATTERNS))]
    center, gate = rng.uniform(34, 46), rng.uniform(0.5, 1.0)
    intervals = dict(pattern)
    steps = _bar_pattern_steps(song, tuple(intervals), with_chord_changes=True)
    notes = []
    for step, next_step in zip(steps, steps[1:] + [song.n_steps + 8]):
        root = _nearest_pitch(song.chord_at(step).pitch_classes[0], center)
        interval = intervals.get(step % song.steps_per_bar, 0)
        notes.append(Note(song.step_time(step), gate * (next_step - step) * song.step_s, root + interval,
                          rng.uniform(0.7, 1.0)))
    return notes


def render_lead(rng, song: Song, vocal_phrases: list[list[Syllable]]) -> np.ndarray:
    """A non-vocal melody instrument in the vocal register, often answering the singer in the gaps."""
    notes = lead_line(rng, song, vocal_phrases)
    envelope = draw_envelope(rng, _pick(rng, ("sustained", "plucked")))
    instrument = make_instrument(rng, _pick(rng, LEAD_TIMBRES), envelope, song.sample_rate)
    return render_lines(rng, [notes], instrument, song)


def lead_line(rng, song: Song, vocal_phrases: list[list[Syllable]]) -> list[Note]:
    """A melody in the vocal register; usually it only plays where the singer rests."""
    center = rng.uniform(60, 78)
    phrases = compose_phrases(rng, song, center - 7, center + 7, first_step=int(rng.integers(0, 16)),
                              density=rng.uniform(0, 1), max_rest_beats=int(rng.integers(1, 5)))
    notes = [note for phrase in phrases for note in phrase]
    if rng.random() < 0.6:
        notes = _outside_vocal_phrases(notes, vocal_phrases)
    return notes


def _outside_vocal_phrases(notes: list[Note], vocal_phrases: list[list[Syllable]]) -> list[Note]:
    spans = [(phrase[0].note.start, phrase[-1].note.start + phrase[-1].note.duration + 0.2)
             for phrase in vocal_phrases]
    return [note for note in notes
            if not any(start < note.start + note.duration and note.start < stop for start, stop in spans)]


def render_lines(rng, lines: list[list[Note]], instrument: Instrument, song: Song) -> np.ndarray:
    """Render each monophonic line and spread the lines across the stereo field."""
    spread, offset = rng.uniform(0, 0.8), rng.uniform(-0.3, 0.3)
    ranks = np.arange(len(lines)) - (len(lines) - 1) / 2  # centred: a single line sits at the offset
    pans = np.clip(offset + spread * ranks / max(1.0, ranks.max()), -1, 1)
    out = np.zeros((song.n_samples, 2))
    for line, position in zip(lines, pans):
        if line:
            out += pan(instrument(line, song), position)
    return out


def draw_envelope(rng, style: str) -> Envelope:
    return Envelope(*(rng.uniform(low, high) for low, high in ENVELOPE_STYLES[style]))


def make_instrument(rng, timbre: str, envelope: Envelope, sample_rate: int) -> Instrument:
    """An instrument with its timbre drawn once, so all of a part's notes sound alike."""
    factories = {"detuned_saw": detuned_saw_instrument, "saw": saw_instrument, "square": square_instrument,
                 "organ": organ_instrument, "fm": fm_instrument, "sine": sine_instrument,
                 "piano": piano_instrument, "pluck": pluck_instrument}
    return factories[timbre](rng, envelope, sample_rate)


def detuned_saw_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    detune, phases, cutoff = rng.uniform(3, 15), rng.random(2), _log_uniform(rng, 600, 5000)

    def play(notes, song):
        freq, amp = line_controls(notes, song, envelope)
        saws = sum(saw_wave(freq * 2 ** (sign * detune / 1200), sr, phase) for sign, phase in zip((-1, 1), phases))
        return filter_audio(saws * amp, "lowpass", cutoff, sr)
    return play


def saw_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    phase, cutoff = rng.random(), _log_uniform(rng, 300, 6000)

    def play(notes, song):
        freq, amp = line_controls(notes, song, envelope)
        return filter_audio(saw_wave(freq, sr, phase) * amp, "lowpass", cutoff, sr)
    return play


def square_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    duty, cutoff = rng.uniform(0.1, 0.5), _log_uniform(rng, 500, 8000)

    def play(notes, song):
        freq, amp = line_controls(notes, song, envelope)
        return filter_audio(pulse_wave(freq, sr, duty) * amp, "lowpass", cutoff, sr)
    return play


def organ_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    ratios = np.array([0.5, 1, 1.5, 2, 3, 4, 5, 6, 8])
    weights = rng.uniform(0, 1, len(ratios)) * (rng.random(len(ratios)) < 0.6)
    weights[1] = max(weights[1], 0.5)
    tremolo_rate, tremolo_depth = rng.uniform(4, 7), rng.uniform(0, 0.3)

    def play(notes, song):
        freq, amp = line_controls(notes, song, envelope)
        cycles = np.cumsum(freq) / sr
        tone = sum(weight * np.sin(2 * np.pi * ratio * cycles) for ratio, weight in zip(ratios, weights)
                   if weight > 0 and ratio * freq.max() < PARTIAL_LIMIT * sr)
        tremolo = 1 - tremolo_depth * (0.5 + 0.5 * np.sin(2 * np.pi * tremolo_rate * np.arange(len(freq)) / sr))
        return tone * amp * tremolo
    return play


def fm_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    """Two-operator FM (electric piano, bell, brass-ish); the index follows the envelope."""
    ratio, peak_index = _pick(rng, (0.5, 1.0, 1.0, 2.0, 3.0, 4.0)), rng.uniform(0.5, 4.0)

    def play(notes, song):
        freq, amp = line_controls(notes, song, envelope)
        carrier = 2 * np.pi * np.cumsum(freq) / sr
        # Carson's rule: sidebands reach (index + 1) * modulator above the carrier
        index = np.minimum(peak_index * amp, np.maximum(0.0, (PARTIAL_LIMIT * sr - freq) / (ratio * freq) - 1))
        return amp * np.sin(carrier + index * np.sin(ratio * carrier))
    return play


def sine_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    second_harmonic, drive = rng.uniform(0, 0.5), rng.uniform(0.5, 4)

    def play(notes, song):
        freq, amp = line_controls(notes, song, envelope)
        cycles = 2 * np.pi * np.cumsum(freq) / sr
        return overdrive((np.sin(cycles) + second_harmonic * np.sin(2 * cycles)) * amp, drive, sr)
    return play


def piano_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    """Struck string: slightly stretched partials; higher ones die sooner, so soft notes sound darker."""
    stiffness, damping, rolloff = _log_uniform(rng, 1e-5, 5e-4), rng.uniform(0.1, 0.6), rng.uniform(0.7, 1.5)

    def play(notes, song):
        freq, amp = line_controls(notes, song, envelope)
        cycles = 2 * np.pi * np.cumsum(freq) / sr
        log_amp = np.log(amp + 1e-9)
        tone = np.zeros(len(freq))
        for k in range(1, 11):
            stretch = k * np.sqrt(1 + stiffness * k * k)
            if stretch * freq.max() < PARTIAL_LIMIT * sr:
                tone += k ** -rolloff * np.sin(stretch * cycles) * np.exp(log_amp * (1 + damping * (k - 1)))
        return tone
    return play


def pluck_instrument(rng, envelope: Envelope, sr: int) -> Instrument:
    """Karplus-Strong strings; each pitch is rendered once and reused for every note."""
    decay_s, brightness = rng.uniform(0.4, 3.0), rng.uniform(0.3, 1.0)
    cache: dict[float, np.ndarray] = {}

    def play(notes, song):
        out = np.zeros(song.n_samples)
        for note in notes:
            if note.midi not in cache:
                cache[note.midi] = karplus_strong(float(midi_to_hz(note.midi)), int(min(decay_s, 3.0) * sr),
                                                  sr, decay_s, brightness, rng)
            start = int(note.start * sr)
            length = min(len(cache[note.midi]), int((note.duration + envelope.release) * sr), song.n_samples - start)
            if length > 0:
                fade = np.clip((length - np.arange(length)) / (envelope.release * sr), 0.0, 1.0)  # damped note-off
                out[start:start + length] += note.velocity * cache[note.midi][:length] * fade
        return out
    return play


def line_controls(notes: list[Note], song: Song, envelope: Envelope) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample frequency (held between notes, so phases stay continuous) and amplitude of a line."""
    freq = midi_to_hz(hold_track(_sample_indices(notes, song.sample_rate), [note.midi for note in notes],
                                 song.n_samples))
    return freq, note_envelope(notes, song.n_samples, song.sample_rate, envelope)


def render_drums(rng, song: Song, active_bars: np.ndarray) -> np.ndarray:
    """Kick, snare (or clap) and hi-hats from a random style, with variations, fills, swing and velocity."""
    sr = song.sample_rate
    kit = {"kick": make_kick(rng, sr), "snare": make_snare(rng, sr),
           "hat": make_hat(rng, sr, open_hat=False), "open_hat": make_hat(rng, sr, open_hat=True)}
    variants = {name: [make() for _ in range(3)] for name, make in kit.items()}
    pans = {"kick": 0.0, "snare": rng.uniform(-0.15, 0.15), "hat": rng.uniform(-0.6, 0.6)}
    pans["open_hat"] = pans["hat"]
    levels = {"kick": 1.0, "snare": db_to_gain(rng.uniform(-4, 1)),
              "hat": db_to_gain(rng.uniform(-22, -10)), "open_hat": db_to_gain(rng.uniform(-24, -12))}
    tracks = {name: np.zeros(song.n_samples) for name in kit}
    for step, name, velocity in drum_hits(rng, song, active_bars):
        start = int((song.step_time(step) + rng.normal(0, 0.003)) * sr)
        sound = variants[name][int(rng.integers(3))]
        _add_at(tracks[name], max(0, start), velocity * levels[name] * sound)
    return sum(pan(track, pans[name]) for name, track in tracks.items())


def drum_hits(rng, song: Song, active_bars: np.ndarray) -> list[tuple[int, str, float]]:
    """(step, drum, velocity) of every hit: the style's pattern, randomly thinned and accented."""
    kick, snare, hats, open_hats = DRUM_PATTERNS[_pick(rng, tuple(DRUM_PATTERNS))]
    if hats and rng.random() < 0.4:
        hats = _pick(rng, HAT_GRIDS)
    variation, velocity_spread = rng.uniform(0, 0.15), rng.uniform(0.05, 0.3)
    hits = []
    for bar in np.flatnonzero(active_bars):
        first = bar * song.steps_per_bar
        for steps, name, loudness in ((kick, "kick", 1.0), (snare, "snare", 0.95), (hats, "hat", 0.7),
                                      (open_hats, "open_hat", 0.7)):
            for step in steps:
                if step < song.steps_per_bar and rng.random() > variation:
                    accent = 1.0 if step % 4 == 0 else 0.8
                    hits.append((first + step, name, loudness * accent * (1 - velocity_spread * rng.random())))
        hits += _drum_extras(rng, first, song, variation, last_of_phrase=bar % 4 == 3)
    return [hit for hit in hits if hit[0] < song.n_steps]


def _drum_extras(rng, first: int, song: Song, variation: float, last_of_phrase: bool):
    """Extra kicks, ghost snares and, at the end of 4-bar phrases, snare fills."""
    extras = [(first + int(rng.integers(song.steps_per_bar)), _pick(rng, ("kick", "snare")), rng.uniform(0.2, 0.6))
              for _ in range(rng.binomial(4, variation))]
    if last_of_phrase and rng.random() < 0.5:
        fill = range(song.steps_per_bar - 4, song.steps_per_bar)
        extras += [(first + step, "snare", 0.5 + 0.1 * i) for i, step in enumerate(fill)]
    return extras


def make_kick(rng, sr: int) -> Callable[[], np.ndarray]:
    length, start_hz, end_hz = rng.uniform(0.25, 0.5), rng.uniform(90, 220), rng.uniform(40, 65)
    pitch_tau, amp_tau, click = rng.uniform(0.015, 0.06), rng.uniform(0.08, 0.3), rng.uniform(0, 0.4)

    def hit():
        t = np.arange(int(length * sr)) / sr
        freq = end_hz + (start_hz - end_hz) * np.exp(-t / pitch_tau)  # the pitch drop makes the thump
        body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / amp_tau)
        return body + click * rng.standard_normal(len(t)) * np.exp(-t / 0.003)
    return hit


def make_snare(rng, sr: int) -> Callable[[], np.ndarray]:
    clap = rng.random() < 0.25
    tone_hz, tone_tau, noise_tau = rng.uniform(150, 280), rng.uniform(0.03, 0.08), rng.uniform(0.06, 0.2)
    band, noise_level = (rng.uniform(200, 1500), rng.uniform(3000, 9000)), rng.uniform(0.3, 1.2)

    def hit():
        t = np.arange(int(6 * noise_tau * sr)) / sr
        noise = filter_audio(rng.standard_normal(len(t)), "bandpass", band, sr)
        if clap:  # a clap is a few quick noise bursts and no drum tone
            bursts = sum(np.exp(-np.maximum(t - delay, 0) / 0.008) * (t >= delay) for delay in (0, 0.011, 0.022))
            return noise / rms(noise) * (bursts + 0.5 * np.exp(-t / noise_tau))
        tone = np.sin(2 * np.pi * tone_hz * t) + 0.5 * np.sin(2 * np.pi * 1.6 * tone_hz * t)
        return tone * np.exp(-t / tone_tau) + noise_level * noise / rms(noise) * np.exp(-t / noise_tau)
    return hit


def make_hat(rng, sr: int, open_hat: bool) -> Callable[[], np.ndarray]:
    cutoff = rng.uniform(5000, 9000)
    tau = rng.uniform(0.08, 0.3) if open_hat else rng.uniform(0.01, 0.04)

    def hit():
        t = np.arange(int(6 * tau * sr)) / sr
        noise = filter_audio(rng.standard_normal(len(t)), "highpass", min(cutoff, 0.4 * sr), sr, order=4)
        return noise / rms(noise) * np.exp(-t / tau)
    return hit


# --- mixing ------------------------------------------------------------------------

PROCEDURAL_BAND = Band(chords=render_chords, bass=render_bass, drums=render_drums, lead=render_lead)


def add_reverb(rng, stereo: np.ndarray, sample_rate: int) -> np.ndarray:
    """Convolve with exponentially decaying, low-passed noise, independent per channel for width."""
    decay_s, wet = rng.uniform(0.2, 2.0), rng.uniform(0.05, 0.6)
    predelay = np.zeros((int(rng.uniform(0.0, 0.04) * sample_rate), 2))
    t = np.arange(int(decay_s * sample_rate)) / sample_rate
    tail = rng.standard_normal((len(t), 2)) * 10 ** (-3 * t / decay_s)[:, None]  # -60 dB at decay_s
    tail = filter_audio(tail, "lowpass", rng.uniform(2000, 10000), sample_rate)
    impulse = np.concatenate([predelay, tail / np.sqrt(np.sum(tail ** 2, axis=0))])
    return stereo + wet * signal.fftconvolve(stereo, impulse, axes=0)[: len(stereo)]


def balance_stems(rng, vocals: np.ndarray, accompaniment: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """Random vocal-to-accompaniment ratio (singing loudness vs. average backing), then a random peak."""
    ratio_db = rng.uniform(-9, 6)
    vocals = vocals * db_to_gain(ratio_db) * rms(accompaniment) / active_rms(vocals, sample_rate)
    peak = np.max(np.abs(vocals + accompaniment))
    scale = rng.uniform(0.5, PEAK_LIMIT - 1e-3) / peak if peak > 0 else 1.0  # margin for float32 rounding
    return {"vocals": (vocals * scale).astype(np.float32),
            "accompaniment": (accompaniment * scale).astype(np.float32)}


# --- oscillators -------------------------------------------------------------------

def saw_wave(freq_hz: np.ndarray, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    cycles, increment, factor = _oversampled_cycles(freq_hz, sample_rate)
    return _decimate(_polyblep_saw(cycles + phase, increment), sample_rate, factor)


def pulse_wave(freq_hz: np.ndarray, sample_rate: int, duty: float) -> np.ndarray:
    """A pulse wave is the difference of two saws offset by the duty cycle."""
    cycles, increment, factor = _oversampled_cycles(freq_hz, sample_rate)
    pulse = _polyblep_saw(cycles, increment) - _polyblep_saw(cycles + duty, increment)
    return _decimate(pulse, sample_rate, factor)


def overdrive(x: np.ndarray, drive: float, sample_rate: int) -> np.ndarray:
    """tanh saturation of x (levelled so its RMS is 1/3), run at >= 96 kHz so its new harmonics do not alias."""
    factor = max(2, int(np.ceil(96000 / sample_rate)))
    upsampled = signal.resample_poly(x / (3 * rms(x)), factor, 1, axis=0)
    return _decimate(np.tanh(drive * upsampled) / np.tanh(drive), sample_rate, factor)


def _oversampling_factor(sample_rate: int) -> int:
    return 4 if sample_rate < 16000 else 2  # at low rates PolyBLEP's residual aliasing reaches the audible band


def _oversampled_cycles(freq_hz: np.ndarray, sample_rate: int):
    factor = _oversampling_factor(sample_rate)
    increment = np.repeat(np.asarray(freq_hz, float) / (factor * sample_rate), factor)
    return np.cumsum(increment) - increment, increment, factor


def _polyblep_saw(cycles: np.ndarray, increment: np.ndarray) -> np.ndarray:
    """Rising saw in [-1, 1] whose wrap is smoothed by a polynomial band-limited step."""
    phase = cycles - np.floor(cycles)
    saw = 2 * phase - 1
    after = phase < increment
    t = phase[after] / increment[after]
    saw[after] -= 2 * t - t * t - 1
    before = phase > 1 - increment
    t = (phase[before] - 1) / increment[before]
    saw[before] -= t * t + 2 * t + 1
    return saw


def _decimate(x: np.ndarray, sample_rate: int, factor: int) -> np.ndarray:
    return signal.sosfilt(_decimation_filter(sample_rate, factor), x, axis=0)[::factor]


@functools.lru_cache(maxsize=None)
def _decimation_filter(sample_rate: int, factor: int) -> np.ndarray:
    """Elliptic low-pass: flat to 0.45 * sr, -80 dB from 0.55 * sr, so no image folds below 0.45 * sr."""
    fs = factor * sample_rate
    order, edge = signal.ellipord(PARTIAL_LIMIT * sample_rate, 0.55 * sample_rate, 0.5, 80, fs=fs)
    return signal.ellip(order, 0.5, 80, edge, fs=fs, output="sos")


def karplus_strong(freq_hz: float, n: int, sr: int, decay_s: float, brightness: float, rng) -> np.ndarray:
    """Plucked string: a noise burst circulating in a delay line with a 3-tap low-pass in the loop.

    The taps 0.5 * [1 - p, 1, p] delay by 0.5 + p samples, which tunes the loop to a fractional period.
    The recursion reaches back at least `delay` samples, so it runs one period-long block at a time.
    """
    period = sr / freq_hz
    delay = max(1, int(period - 0.5))
    p = period - 0.5 - delay
    taps = 10 ** (-3 * period / (decay_s * sr)) * 0.5 * np.array([1 - p, 1.0, p])  # -60 dB after decay_s
    burst = signal.lfilter([brightness], [1, brightness - 1], rng.uniform(-1, 1, delay))
    y = np.zeros(n + delay + 2)
    y[delay + 2: delay + 2 + min(delay, n)] = (burst - burst.mean())[:n]
    for start in range(delay + 2, len(y), delay):
        stop = min(start + delay, len(y))
        y[start:stop] += (taps[0] * y[start - delay: stop - delay] + taps[1] * y[start - delay - 1: stop - delay - 1]
                          + taps[2] * y[start - delay - 2: stop - delay - 2])
    return y[delay + 2:]


# --- signal helpers ----------------------------------------------------------------

def note_envelope(notes: list[Note], n: int, sr: int, envelope: Envelope) -> np.ndarray:
    """Attack, exponential decay to the sustain level, linear release after each note ends."""
    out = np.zeros(n)
    for note in notes:
        start = int(note.start * sr)
        length = min(int((note.duration + envelope.release) * sr), n - start)
        if length <= 0:
            continue
        t = np.arange(length) / sr
        level = np.minimum(1.0, t / envelope.attack) * (
            envelope.sustain + (1 - envelope.sustain) * np.exp(-t / envelope.decay))
        release = np.clip(1 - (t - note.duration) / envelope.release, 0.0, 1.0)
        np.maximum(out[start:start + length], note.velocity * level * release, out=out[start:start + length])
    return out


def hold_track(start_indices, values, length: int) -> np.ndarray:
    """values[i] from start_indices[i] until the next start; values[0] before the first."""
    starts = np.maximum.accumulate(np.clip(np.asarray(start_indices, int), 0, length))
    starts[0] = 0
    return np.asarray(values, float)[np.repeat(np.arange(len(starts)), np.diff(np.append(starts, length)))]


def one_pole_smooth(x: np.ndarray, time_constant_s: float, rate: float) -> np.ndarray:
    """Exponential smoothing along axis 0, starting settled on the first value."""
    a = np.exp(-1.0 / max(time_constant_s * rate, 1e-9))
    return signal.lfilter([1 - a], [1, -a], x, axis=0, zi=a * x[:1])[0]


def smooth_noise(rng, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """Unit-variance noise that wanders at about rate_hz (random knots, linearly interpolated)."""
    knots = rng.standard_normal(int(n / sr * rate_hz) + 2)
    return np.interp(np.arange(n) * (rate_hz / sr), np.arange(len(knots)), knots)


def filter_audio(x: np.ndarray, kind: str, cutoff, sr: int, order: int = 2) -> np.ndarray:
    """Butterworth filter along axis 0 with corners kept below 0.45 * sr."""
    cutoff = np.minimum(np.asarray(cutoff, float), PARTIAL_LIMIT * sr)
    if kind == "bandpass":
        cutoff = np.array([min(cutoff[0], 0.5 * cutoff[1]), cutoff[1]])
    return signal.sosfilt(signal.butter(order, cutoff, btype=kind, fs=sr, output="sos"), x, axis=0)


def pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan; position -1 is hard left, +1 hard right."""
    angle = (position + 1) * np.pi / 4
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)], axis=1)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def active_rms(x: np.ndarray, sr: int, frame_s: float = 0.05) -> float:
    """RMS over the 50 ms frames within 30 dB of the loudest: the level while the source sounds."""
    frame = max(1, int(frame_s * sr))
    usable = len(x) // frame * frame
    if usable == 0:
        return rms(x)
    power = np.mean(np.square(x[:usable]).reshape(usable // frame, -1), axis=1)
    return float(np.sqrt(np.mean(power[power >= power.max() * 1e-3]) + 1e-20))


def midi_to_hz(midi):
    return 440.0 * 2.0 ** ((np.asarray(midi, float) - 69.0) / 12.0)


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _sample_indices(notes: list[Note], sr: int) -> list[int]:
    return [int(note.start * sr) for note in notes]


def _nearest_pitch(pitch_class: int, center: float) -> int:
    return int(pitch_class + 12 * np.round((center - pitch_class) / 12))


def _bar_pattern_steps(song: Song, pattern, with_chord_changes: bool) -> list[int]:
    """Every step where a per-bar pattern (and optionally a chord change) falls."""
    steps = {bar + step for bar in range(0, song.n_steps, song.steps_per_bar)
             for step in pattern if step < song.steps_per_bar}
    if with_chord_changes:
        steps |= {chord.start_step for chord in song.chords}
    return sorted(step for step in steps if step < song.n_steps)


def _add_at(track: np.ndarray, start: int, sound: np.ndarray) -> None:
    length = min(len(sound), len(track) - start)
    if length > 0:
        track[start:start + length] += sound[:length]


def _pick(rng, options, weights=None):
    """One element of a sequence (Generator.choice would turn tuples into arrays)."""
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    return options[int(rng.choice(len(options), p=p))]


def _log_uniform(rng, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _formant_block(sample_rate: int) -> int:
    return max(1, int(round(FORMANT_BLOCK_S * sample_rate)))
