"""The versions of one model: what is on disk under its base path, and what is loaded.

Like TF Serving's file-system poll: the base path holds one folder per version, named
by its number (export.py writes each under a hidden temporary name, then renames it
into place, so a folder named by a number is complete). A background thread looks
every ``poll_seconds``; the newest ``num_versions`` are loaded (TF Serving's
``latest`` version policy), a new version in the background while the loaded ones keep
serving, and versions that leave that set or the disk are unloaded once their
replacements have loaded. Requests without a version get the newest loaded one.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from runtime.model_facts import ModelFacts
from serve.rest import RestError

log = logging.getLogger("serve")
# TF Serving's HTTP status for a TensorFlow error code (model_servers/http_server.cc); others are 500.
HTTP_STATUS = {tf.errors.InvalidArgumentError: 400, tf.errors.FailedPreconditionError: 400,
               tf.errors.OutOfRangeError: 400, tf.errors.ResourceExhaustedError: 429}


def short_error(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says what was wrong, without graph-node noise."""
    text = re.sub(r"\s*\[\[\{\{node .*", "", error.message, flags=re.S)
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "File ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(noise)]
    return (lines[-1] if lines else text)[:300]


@dataclass
class Version:
    """One loaded version of the model."""

    number: int
    path: Path
    saved_model: object  # what tf.saved_model.load returned; its signatures are called
    signature_defs: dict  # every SignatureDef as TF Serving's metadata prints it
    facts: ModelFacts | None  # the export's facts (None when it has none)
    _separator: object = field(default=None, repr=False)
    _separator_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, number: int, path: Path) -> "Version":
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        # TF Serving prints protos with field names kept and default values shown.
        signature_defs = {name: json_format.MessageToDict(definition, preserving_proto_field_name=True,
                                                          including_default_value_fields=True)
                          for name, definition in proto.meta_graphs[0].signature_def.items()}
        facts = ModelFacts.read(path) if ModelFacts.path(path).is_file() else None
        return cls(number, path, tf.saved_model.load(str(path)), signature_defs, facts)

    def input_specs(self, signature: str) -> dict:
        """The signature's inputs, name -> TensorSpec; an unknown signature is TF Serving's 400."""
        if signature not in self.saved_model.signatures:
            raise RestError(400, f'Serving signature name: "{signature}" not found in signature def')
        return self.saved_model.signatures[signature].structured_input_signature[1]

    def call(self, signature: str, inputs: dict) -> dict:
        """Runs a signature on numpy inputs. A graph's error comes back with its own message and
        the HTTP status TF Serving gives its code: bytes that are not a WAV file are a 400."""
        try:
            outputs = self.saved_model.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as error:
            raise RestError(HTTP_STATUS.get(type(error), 500), short_error(error)) from None
        except UnicodeDecodeError:
            # TensorFlow quotes the bytes it found in a malformed WAV header; when they are not
            # UTF-8 its message cannot even become a Python string (found by fuzzing).
            raise RestError(400, "the input is malformed (e.g. a WAV header with unexpected bytes)") from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def separator(self):
        """This version as an ``runtime.separator.Separator`` for whole songs (the web page's jobs):
        the same loaded SavedModel as the REST API's, through its separate_windows signature."""
        with self._separator_lock:
            if self._separator is None:
                from runtime.loading import saved_model_separator
                self._separator = saved_model_separator(self.path, self.saved_model, self.facts)
            return self._separator


class ModelRepository:
    """The loaded versions of the model ``name`` under ``base_path``, kept in step with the disk."""

    def __init__(self, name: str, base_path, num_versions: int = 1, poll_seconds: float = 1.0):
        self.name, self.base_path = name, Path(base_path)
        self.num_versions, self.poll_seconds = num_versions, poll_seconds
        # Replaced, never changed in place: request threads read them while the poll thread works.
        self.loaded: dict[int, Version] = {}
        self.loading: frozenset[int] = frozenset()
        self.failed: dict[int, LoadFailure] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="version-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _poll_forever(self) -> None:
        while True:
            try:
                self.poll()
            except OSError as error:  # the base path went away or is unreadable: keep serving what is loaded
                log.warning("cannot read %s: %s", self.base_path, error)
            if self._stop.wait(self.poll_seconds):
                return

    def on_disk(self) -> dict[int, Path]:
        """Complete versions under the base path (hidden temporary folders are not numbers)."""
        return {int(p.name): p for p in self.base_path.iterdir()
                if p.name.isdigit() and (p / "saved_model.pb").is_file()}

    def poll(self) -> None:
        """Loads the newest versions that are not loaded yet (retrying failed ones when due),
        then unloads the ones they replace."""
        disk = self.on_disk()
        now = time.monotonic()
        self.failed = {v: failure for v, failure in self.failed.items() if v in disk}
        for number in sorted(disk, reverse=True)[:self.num_versions]:
            failure = self.failed.get(number)
            if number not in self.loaded and (failure is None or failure.due(now, _mtime(disk[number]))):
                self._load(number, disk[number])
        usable = sorted((v for v in disk if v not in self.failed), reverse=True)
        keep = set(usable[:self.num_versions])
        for number in sorted(set(self.loaded) - keep):
            log.info("unloading %s version %d", self.name, number)
        self.loaded = {v: version for v, version in self.loaded.items() if v in keep}  # in-flight requests keep theirs

    def _load(self, number: int, path: Path) -> None:
        self.loading = self.loading | {number}
        started = time.perf_counter()
        try:
            self.loaded = {**self.loaded, number: Version.load(number, path)}
            self.failed = {v: failure for v, failure in self.failed.items() if v != number}
            log.info("loaded %s version %d from %s in %.1f s", self.name, number, path,
                     time.perf_counter() - started)
        except Exception as error:  # a broken or half-copied export must not stop the server: retried below
            previous = self.failed.get(number)
            failure = LoadFailure(f"Failed to load servable version {number} from {path}: {error}"[:500],
                                  _mtime(path), time.monotonic(), 1 + (previous.attempts if previous else 0),
                                  self.poll_seconds)
            self.failed = {**self.failed, number: failure}
            if previous is None or previous.message != failure.message:
                log.error("cannot load %s version %d (retried from the next poll on): %s", self.name, number, error)
        finally:
            self.loading = self.loading - {number}

    def get(self, name: str, version: int | None = None) -> Version:
        """The version a request asks for (the newest when none), or TF Serving's 404."""
        loaded = self.loaded if name == self.name else {}
        if version is None and loaded:
            return loaded[max(loaded)]
        if version in loaded:
            return loaded[version]
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise RestError(404, f"Servable not found for request: {request}")

    def states(self, name: str, version: int | None = None) -> dict[int, tuple[str, str]]:
        """Version -> (state, error message) for a status request, or TF Serving's 404. A version
        that failed to load is END with its error, as in TF Serving, until a retry loads it."""
        states = ({v: ("END", failure.message) for v, failure in self.failed.items()}
                  | {v: ("LOADING", "") for v in self.loading} | {v: ("AVAILABLE", "") for v in self.loaded})
        if name != self.name:
            states = {}
        if version is None:
            if not states:
                raise RestError(404, f"Could not find any versions of model {name}")
            return states
        if version not in states:
            raise RestError(404, f"Could not find version {version} of model {name}")
        return {version: states[version]}


@dataclass(frozen=True)
class LoadFailure:
    """A version that failed to load: retried on the next poll, then at doubling intervals
    (at most a minute apart), and at once when its saved_model.pb is rewritten."""

    message: str
    mtime: float | None
    at: float  # time.monotonic() of the failure
    attempts: int
    poll_seconds: float

    def due(self, now: float, mtime: float | None) -> bool:
        wait = min(60.0, self.poll_seconds * 2 ** (self.attempts - 1)) - self.poll_seconds
        return mtime != self.mtime or now - self.at >= wait


def _mtime(path: Path) -> float | None:
    try:
        return (path / "saved_model.pb").stat().st_mtime
    except OSError:
        return None
