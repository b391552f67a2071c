"""Songs whose accompaniment is played by sampled instruments (a General MIDI
SoundFont through FluidSynth).

The score and the singer are those of ``synthetic_music``: tempo, key, chords,
the sung melody and every part's rhythm come from its composer, and the vocals
are its source-filter voice. Only the band changes: chords, bass, lead and drums
are General MIDI programs (recorded pianos, guitars, organs, strings, brass,
saxophones, drum kits...) played note by note, so the accompaniment sounds like
recorded instruments, which no procedural oscillator does.

Needs the FluidSynth library and a GM SoundFont; on Debian/Ubuntu
``apt-get install fluidsynth fluid-soundfont-gm``. ``$WAVESEP_SOUNDFONT`` names
another ``.sf2``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_pipeline.synthetic_music import (Band, Note, Song, _pick, bass_line, chord_part, drum_hits,
                                           generate_song, keep_active_bars, lead_line)

RENDERER_VERSION = 1  # cache key: bump whenever a (seed, sample_rate, duration, soundfont) gives different audio
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SOUNDFONT_PACKAGES = "apt-get install fluidsynth fluid-soundfont-gm"

# General MIDI programs (0-based) that suit each chord rhythm of synthetic_music.chord_hits
CHORD_PROGRAMS = {
    "sustain": (0, 1, 2, 4, 5, 16, 17, 18, 19, 21, 48, 49, 50, 61, 88, 89, 90, 91, 94, 95),
    "stabs": (0, 1, 2, 3, 4, 5, 7, 16, 17, 18, 27, 28, 29, 30, 61, 62, 81),
    "strum": (24, 25, 26, 27, 29, 30, 105),
    "arpeggio": (0, 4, 5, 6, 8, 11, 12, 24, 25, 27, 45, 46, 81, 108),
}
BASS_PROGRAMS = tuple(range(32, 40))  # acoustic, finger, pick, fretless, slap, synth basses
LEAD_PROGRAMS = (11, 22, 26, 27, 29, 30, 40, 56, 57, 59, 64, 65, 66, 68, 71, 73, 80, 81)  # no voices: they are vocals
DRUM_BANK, DRUM_KITS, DRUM_CHANNEL = 128, (0, 8, 16, 24, 25, 32, 40), 9  # standard, room, power, electronic, 808, jazz, brush
DRUM_KEYS = {"kick": (35, 36), "snare": (38, 40, 39), "hat": (42, 44), "open_hat": (46,)}
SYNTH_GAIN = 0.15  # FluidSynth writes 16-bit samples: headroom for dense chords; parts are levelled afterwards


def soundfont_path() -> Path:
    return Path(os.environ.get("WAVESEP_SOUNDFONT", DEFAULT_SOUNDFONT))


class SoundFontMissing(RuntimeError):
    """FluidSynth or the SoundFont is not installed."""


def check_renderer() -> Path:
    """The SoundFont to play, after checking that it and FluidSynth are installed."""
    path = soundfont_path()
    if not path.is_file():
        raise SoundFontMissing(f"rendered songs need a General MIDI SoundFont: {path} is missing "
                               f"({SOUNDFONT_PACKAGES}, or set $WAVESEP_SOUNDFONT to a .sf2 file)")
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth loads libfluidsynth on import)
    except ImportError as error:
        raise SoundFontMissing(f"rendered songs need the FluidSynth library ({SOUNDFONT_PACKAGES}): {error}") from None
    return path


class SoundFontPlayer:
    """One FluidSynth synthesizer for one song: plays note lists as GM programs, one part at a time."""

    def __init__(self, soundfont: Path, sample_rate: int):
        import fluidsynth

        # The song gets its own reverb afterwards; the synth's chorus and reverb stay off so
        # that nothing of one part rings into the next.
        self.synth = fluidsynth.Synth(gain=SYNTH_GAIN, samplerate=float(sample_rate),
                                      **{"synth.reverb.active": 0, "synth.chorus.active": 0})
        self.soundfont_id = self.synth.sfload(str(soundfont))
        if self.soundfont_id < 0:
            raise SoundFontMissing(f"FluidSynth cannot load the SoundFont {soundfont}")
        self.sample_rate = sample_rate

    def close(self) -> None:
        self.synth.delete()

    def play(self, notes: list[Note], song: Song, program: int, pan: float, bank: int = 0,
             channel: int = 0) -> np.ndarray:
        """The notes as float64 stereo [song.n_samples, 2]; a note's key is its rounded pitch."""
        synth, rate = self.synth, self.sample_rate
        synth.program_select(channel, self.soundfont_id, bank, program)
        synth.cc(channel, 10, int(round(64 + 63 * np.clip(pan, -1, 1))))
        events = []  # (sample, 0 for note-off / 1 for note-on, key, velocity): offs first at equal times
        for note in notes:
            key, velocity = int(round(note.midi)), int(np.clip(round(30 + 97 * note.velocity), 1, 127))
            start = max(0, int(note.start * rate))
            events += [(start, 1, key, velocity), (max(start + 1, int((note.start + note.duration) * rate)), 0, key, 0)]
        chunks, cursor = [], 0
        for position, is_on, key, velocity in sorted(events):
            if position >= song.n_samples:
                break
            if position > cursor:
                chunks.append(synth.get_samples(position - cursor))
                cursor = position
            if is_on:
                synth.noteon(channel, key, velocity)
            else:
                synth.noteoff(channel, key)
        if cursor < song.n_samples:
            chunks.append(synth.get_samples(song.n_samples - cursor))
        synth.all_sounds_off(channel)
        synth.get_samples(256)  # drains the synth's partly delivered block, so the next part starts clean
        return np.concatenate(chunks).reshape(-1, 2).astype(np.float64) / 32768.0


def sampled_band(player: SoundFontPlayer) -> Band:
    """The parts of synthetic_music's band, played by GM programs drawn per part."""
    def chords(rng, song, active_bars):
        rhythm = _pick(rng, tuple(CHORD_PROGRAMS))
        program, pan = _pick(rng, CHORD_PROGRAMS[rhythm]), rng.uniform(-0.4, 0.4)
        lines = chord_part(rng, song, rhythm)
        return player.play([note for line in lines for note in keep_active_bars(line, song, active_bars)],
                           song, program, pan)

    def bass(rng, song, active_bars):
        notes = keep_active_bars(bass_line(rng, song), song, active_bars)
        return player.play(notes, song, _pick(rng, BASS_PROGRAMS), rng.uniform(-0.1, 0.1))

    def drums(rng, song, active_bars):
        kit, keys = _pick(rng, DRUM_KITS), {name: _pick(rng, options) for name, options in DRUM_KEYS.items()}
        notes = [Note(max(0.0, song.step_time(step) + rng.normal(0, 0.003)), 0.2, keys[name], velocity)
                 for step, name, velocity in drum_hits(rng, song, active_bars)]
        return player.play(notes, song, kit, rng.uniform(-0.1, 0.1), bank=DRUM_BANK, channel=DRUM_CHANNEL)

    def lead(rng, song, vocal_phrases):
        program, pan = _pick(rng, LEAD_PROGRAMS), rng.uniform(-0.5, 0.5)
        return player.play(lead_line(rng, song, vocal_phrases), song, program, pan)

    return Band(chords=chords, bass=bass, drums=drums, lead=lead)


def generate_rendered_song(seed: int, sample_rate: int = 22050, duration: float = 20.0,
                           soundfont: Path | None = None) -> dict[str, np.ndarray]:
    """Like ``synthetic_music.generate_song`` (same keys, shapes, peak limit), with the
    accompaniment played by the SoundFont's instruments."""
    player = SoundFontPlayer(soundfont or check_renderer(), sample_rate)
    try:
        return generate_song(seed, sample_rate, duration, band=sampled_band(player))
    finally:
        player.close()


def soundfont_tag(path: Path) -> str:
    """The SoundFont's part of the song cache key: its name and size."""
    return f"{path.stem}-{path.stat().st_size}"
