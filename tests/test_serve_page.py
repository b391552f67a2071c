"""The server's web page in real headless Chromium: upload a song, watch the progress
finish, then both sources have a player, a download link that fetches a valid WAV, and
a waveform drawn on their canvas; a file that is not audio ends in a readable error."""
import io
import os

import httpx
import numpy as np
import pytest
import soundfile as sf


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                 reason="needs Debian's chromium and chromium-driver")]


@pytest.fixture(scope="module")
def server(shipped_model_server):
    return shipped_model_server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Everything that could reach the network (Selenium Manager included) stays off.
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def upload(server, browser, path):
    """Opens the page, sends ``path`` and waits for the job to end; returns the page's final state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text.startswith("Model wavesep"))
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "start").click()
    body = browser.find_element(By.TAG_NAME, "body")
    WebDriverWait(browser, 180).until(lambda d: body.get_attribute("data-state") in ("done", "error"))
    return body.get_attribute("data-state")


def test_a_song_is_separated_played_downloaded_and_drawn(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    rate, seconds = 44100, 4.5
    time_axis = np.arange(int(rate * seconds)) / rate
    song = 0.3 * np.sin(2 * np.pi * 330 * time_axis)[:, None] * np.array([1.0, 0.5]) * (time_axis[:, None] % 1)
    sf.write(tmp_path / "little song.wav", song.astype(np.float32), rate, subtype="PCM_16")

    state = upload(server, browser, tmp_path / "little song.wav")
    assert state == "done", browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "1"
    for source in ("vocals", "accompaniment"):
        article = browser.find_element(By.CSS_SELECTOR, f'article[data-source="{source}"]')
        assert article.find_element(By.TAG_NAME, "audio").get_attribute("src").endswith(f"/{source}.wav")
        link = article.find_element(By.CSS_SELECTOR, "a.download")
        assert link.get_attribute("download") == f"little song-{source}.wav"
        audio, returned_rate = sf.read(io.BytesIO(httpx.get(link.get_attribute("href")).content), always_2d=True)
        assert returned_rate == rate and audio.shape == song.shape
        drawn = browser.execute_script(
            "const canvas = arguments[0];"
            "const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;"
            "let drawn = 0; for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn++;"
            "return drawn / (canvas.width * canvas.height);", article.find_element(By.TAG_NAME, "canvas"))
        assert 0.02 < drawn < 0.98, f"{source} canvas: {drawn:.1%} of its pixels drawn"


def test_a_file_that_is_not_audio_ends_in_a_readable_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    (tmp_path / "notes.txt").write_text("not a song")
    assert upload(server, browser, tmp_path / "notes.txt") == "error"
    assert browser.find_element(By.ID, "status").text.startswith("Error: notes.txt: ")  # ffmpeg's reason follows
