"""The chat page at / in headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): it loads offline, streams a reply into the page, and asks for the API key
when the server wants one."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serverutil import Server, store_model  # noqa: E402

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,800")


def chromium(tmp_path: Path):
    """Debian's Chromium and its driver, named explicitly so selenium never looks for (or
    downloads) others."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(browser) and os.path.exists(driver)):
        pytest.fail("headless Chromium is needed: `make browser` installs Debian's chromium and chromium-driver")
    options = Options()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    os.environ.setdefault("SE_OFFLINE", "true")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait(driver, condition, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def models_listed(driver):
    return [o.get_attribute("value") for o in driver.find_elements("css selector", "#model option")]


def send(driver, text: str) -> None:
    from selenium.webdriver.common.keys import Keys
    box = driver.find_element("id", "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def reply_done(driver):
    done = driver.find_elements("css selector", ".msg.assistant[data-done='true'] .text")
    return done[-1] if done else False


@pytest.mark.real_model
def test_the_page_streams_a_reply_from_the_real_model(tmp_path, default_model_file):
    openai = pytest.importorskip("openai")
    home = tmp_path / "home"
    store_model(home, default_model_file, "smollm2-135m")
    with Server(home, "-m", "smollm2-135m", "--ctx", "1024") as s:
        driver = chromium(tmp_path)
        try:
            driver.get(s.url + "/")
            wait(driver, lambda d: models_listed(d) == ["smollm2-135m:q4_1"])
            assert not driver.find_element("id", "api-key").is_displayed()  # no key asked by this server
            for field, value in (("temperature", "0"), ("max-tokens", "40")):
                box = driver.find_element("id", field)
                box.clear()
                box.send_keys(value)
            # Watch the reply grow: every text change in the page is recorded.
            driver.execute_script("""
                window.lengths = [];
                new MutationObserver(() => {
                  const b = document.querySelector('.msg.assistant .text');
                  if (b) window.lengths.push(b.textContent.length);
                }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
            """)
            question = "What is the capital of France? Answer in one sentence."
            send(driver, question)
            text = wait(driver, reply_done).text
            lengths = driver.execute_script("return window.lengths")
            assert len(set(lengths)) >= 3, lengths  # it arrived piece by piece, not at once
            oa = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
            same = oa.chat.completions.create(model="smollm2-135m", temperature=0, max_tokens=40,
                                              messages=[{"role": "user", "content": question}])
            assert text.strip() == same.choices[0].message.content.strip() and "Paris" in text
            meta = driver.find_element("css selector", ".msg.assistant .meta").text
            assert "tokens" in meta and "first token after" in meta
            # Offline: everything the page loaded came from this server.
            urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert urls and all(u.startswith(s.url) for u in urls), urls
            driver.save_screenshot(str(tmp_path / "chat-page.png"))
            assert (tmp_path / "chat-page.png").stat().st_size > 10_000
        finally:
            driver.quit()


def test_the_page_has_no_outside_references(tmp_path, tiny_llama):
    home = tmp_path / "home"
    store_model(home, tiny_llama, "tiny")
    with Server(home, "--ctx", "256") as s:
        status, headers, data = s.get("/")
        html = data.decode()
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "http://" not in html and "https://" not in html and "//cdn" not in html
        assert "/v1/chat/completions" in html


def test_the_page_asks_for_the_api_key(tmp_path, tiny_llama):
    home = tmp_path / "home"
    store_model(home, tiny_llama, "tiny")
    with Server(home, "-m", "tiny", "--ctx", "256", "--api-key", "page-key") as s:
        driver = chromium(tmp_path)
        try:
            driver.get(s.url + "/")
            key_field = driver.find_element("id", "api-key")
            wait(driver, lambda d: key_field.is_displayed())
            assert "needs an API key" in driver.find_element("id", "status").text
            key_field.send_keys("page-key")
            driver.find_element("id", "system").click()  # leaving the field saves the key and lists the models
            wait(driver, lambda d: models_listed(d) == ["tiny:f32"])
            for field, value in (("max-tokens", "5"),):
                box = driver.find_element("id", field)
                box.clear()
                box.send_keys(value)
            send(driver, "hello")
            assert wait(driver, reply_done)
            assert not driver.find_elements("css selector", ".msg.error")
        finally:
            driver.quit()
