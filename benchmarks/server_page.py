#!/usr/bin/env python3
"""A screenshot of `slmrun serve`'s chat page after one streamed exchange with the default
model, taken in Debian's headless Chromium (as tests/test_server_page.py drives it), saved
as benchmarks/server_chat_page.png.

    .venv/bin/python benchmarks/server_page.py ["question"]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "server_chat_page.png"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1100,720")


def main(argv: list[str]) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    question = argv[0] if argv else "What is the capital of France? Answer in one sentence."
    exe = Path(sys.executable).with_name("slmrun")
    server = subprocess.Popen([str(exe), "serve", "--port", "0", "-m", "smollm2-135m", "--ctx", "1024"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = next(m.group(1) for line in server.stderr if (m := re.search(r"slmrun serve on (http://\S+) ", line)))
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()  # a full pipe blocks it
        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for flag in FLAGS:
            options.add_argument(flag)
        with tempfile.TemporaryDirectory() as profile:
            options.add_argument(f"--user-data-dir={profile}")
            driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
            try:
                driver.get(url + "/")
                wait = WebDriverWait(driver, 120, poll_frequency=0.1)
                wait.until(lambda d: d.find_elements("css selector", "#model option"))
                box = driver.find_element("id", "temperature")
                box.clear()
                box.send_keys("0")
                text = driver.find_element("id", "input")
                text.send_keys(question)
                text.send_keys(Keys.ENTER)
                wait.until(lambda d: d.find_elements("css selector", ".msg.assistant[data-done='true']"))
                driver.save_screenshot(str(OUT))
                print(driver.find_element("css selector", ".msg.assistant").text)
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(60)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
