"""The page's Live mode in real headless Chromium, against the real server: Chromium's fake
microphone plays a WAV file, the page streams it through its AudioWorklet and the server's
WebSocket for a few seconds, then stops. With ?record=1 the page keeps the blocks it sent and
the answers it received (window.liveRecording), and the test checks them:

- the microphone's audio arrived: the sent input is not silent, and matches the WAV file
  (resampled to the stream's rate): cut into windows of 0.25 s, each window's normalized
  cross-correlation with the file at its best lag, searched over every lag of the file, has a
  median of at least 0.95. Each window is aligned on its own: Chromium plays the file from no
  particular start and loops it with a jump at the seam (measured: 181 samples at 22.05 kHz);
- the stream is the offline separation of the sent input, delayed: each received source, after
  its first ``delay_samples`` (silence), equals ``runtime.chunking.separate_song`` on the sent
  frames within a max abs difference of 1e-5 (f32le both ways; the WebSocket tests' bound);
- the page ran at the model's rate (no resampling in the server) and shows a measured latency
  no lower than the announced one; the balance slider's ends and middle give karaoke, vocals
  only and the whole mix."""
import base64
import os
import time

import numpy as np
import pytest
import soundfile as sf

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                 reason="needs Debian's chromium and chromium-driver")]
FILE_RATE, FILE_SECONDS, LIVE_SECONDS = 48000, 2.5, 3.0
# Joins the recorded Float32Arrays of each kind and returns their bytes as base64 (WebDriver's JSON
# would carry each sample as a decimal number).
READ_RECORDING = """
const recording = window.liveRecording;
const base64 = (blocks) => {
  const joined = new Float32Array(blocks.reduce((sum, block) => sum + block.length, 0));
  blocks.reduce((offset, block) => (joined.set(block, offset), offset + block.length), 0);
  const bytes = new Uint8Array(joined.buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
  return btoa(text);
};
return {announced: recording.announced, measuredMs: recording.measuredMs, sent: base64(recording.sent),
        vocals: base64(recording.vocals), accompaniment: base64(recording.accompaniment)};
"""


def capture_song() -> np.ndarray:
    """Mono, below 6 kHz (so that Chromium's resampling keeps it), with no repeat within the file:
    a gliding tone under low-passed noise, in a swelling envelope."""
    from scipy.signal import butter, sosfilt

    time_axis = np.arange(int(FILE_RATE * FILE_SECONDS)) / FILE_RATE
    noise = np.random.default_rng(0).normal(0, 0.3, len(time_axis))
    noise = sosfilt(butter(4, 3000, fs=FILE_RATE, output="sos"), noise)
    tone = 0.3 * np.sin(2 * np.pi * (200 + 300 * time_axis) * time_axis)
    return ((tone + noise) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * time_axis))).astype(np.float32)


@pytest.fixture(scope="module")
def capture_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("capture") / "microphone.wav"
    sf.write(path, capture_song(), FILE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory, capture_file):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Everything that could reach the network (Selenium Manager included) stays off; the microphone is the file.
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                     "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                     f"--use-file-for-fake-audio-capture={capture_file}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def window_correlations(signal: np.ndarray, loop: np.ndarray, window: int) -> np.ndarray:
    """For each window of ``signal``, its highest normalized cross-correlation with ``loop``
    (repeated) at any lag."""
    from scipy.signal import correlate

    reference = np.tile(loop, 1 + -(-window // len(loop)))[:len(loop) + window - 1]
    energies = np.convolve(reference ** 2, np.ones(window), mode="valid")
    probes = signal[:len(signal) // window * window].reshape(-1, window)
    return np.array([np.max(correlate(reference, probe, mode="valid") / np.sqrt(energies * np.sum(probe ** 2) + 1e-12))
                     for probe in probes])


def record_live(server, browser) -> dict:
    """Streams the fake microphone for LIVE_SECONDS, stops, and returns the page's recording, decoded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/?record=1")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text.startswith("Model wavesep"))
    section = browser.find_element(By.ID, "live")
    browser.find_element(By.ID, "live-start").click()
    WebDriverWait(browser, 30).until(lambda d: section.get_attribute("data-state") in ("live", "error"))
    assert section.get_attribute("data-state") == "live", browser.find_element(By.ID, "live-status").text
    time.sleep(LIVE_SECONDS)
    browser.find_element(By.ID, "live-stop").click()
    WebDriverWait(browser, 30).until(lambda d: section.get_attribute("data-state") in ("stopped", "error"))
    assert section.get_attribute("data-state") == "stopped", browser.find_element(By.ID, "live-status").text
    recording = browser.execute_script(READ_RECORDING)
    channels = recording["announced"]["channels"]
    for kind in ("sent", "vocals", "accompaniment"):
        recording[kind] = np.frombuffer(base64.b64decode(recording[kind]), "<f4").reshape(-1, channels)
    recording["latency text"] = browser.find_element(By.ID, "live-latency").text
    recording["gains"] = [browser.execute_script(f"$('balance').value = {value}; return gains();")
                          for value in (0, 0.5, 1)]
    return recording


def test_live_mode_streams_the_microphone_and_plays_the_offline_separation_delayed(
        shipped_model_server, shipped_export, browser):
    from scipy.signal import resample_poly

    from runtime.chunking import separate_song
    from runtime.loading import saved_model_separator

    recording = record_live(shipped_model_server, browser)
    announced, sent = recording["announced"], recording["sent"]
    separator = saved_model_separator(shipped_export / "1")
    rate, delay = announced["sample_rate"], announced["delay_samples"]
    assert rate == separator.sample_rate and announced["block_size"] == rate // 50  # 20 ms at the model's rate
    assert len(sent) >= 0.8 * LIVE_SECONDS * rate and np.sqrt(np.mean(sent ** 2)) > 0.01

    correlations = window_correlations(sent.mean(axis=1), resample_poly(capture_song(), rate, FILE_RATE), rate // 4)
    correlation = np.median(correlations)
    assert correlation >= 0.95, f"the sent input matches the fake microphone's file at {np.round(correlations, 3)}"

    offline = separate_song(separator, sent, rate)
    differences = {}
    for source, estimate in offline.items():
        received = recording[source]
        assert received.shape == (len(sent) + delay, sent.shape[1]), source  # the tail included
        assert not received[:delay].any(), source
        differences[source] = float(np.abs(received[delay:] - estimate).max())
    measured = np.median(recording["measuredMs"][-50:])
    print(f"\n{len(sent) / rate:.2f} s streamed at {rate} Hz; correlation with the file (median) {correlation:.4f}; "
          f"max abs differences {differences}; latency announced {announced['latency_ms']} ms, "
          f"measured p50 {measured:.1f} ms; {recording['latency text']!r}")
    assert max(differences.values()) <= 1e-5, differences
    assert measured >= announced["latency_ms"] and "measured end to end" in recording["latency text"]
    assert recording["gains"] == [{"vocals": 0, "accompaniment": 1}, {"vocals": 1, "accompaniment": 1},
                                  {"vocals": 1, "accompaniment": 0}]  # karaoke, the mix, vocals only
