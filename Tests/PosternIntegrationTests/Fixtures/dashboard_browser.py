#!/usr/bin/env python3
"""Drives the dashboard in headless Chromium (Selenium + chromedriver) for DashboardTests.

Usage: dashboard_browser.py URL ID_FILE SCREENSHOT

Loads URL, waits for the page to read its summary, prints "LOADED accepted=N", then waits
(up to 30 s) for ID_FILE to name a transaction id. It then waits (up to 15 s) until a row for
that id is in the latest decisions, streamed over /events, and the last hour's accepted count
is above N; it saves a screenshot to SCREENSHOT and prints "SEEN id=… accepted=N->M chart=…". Any failure prints "FAILED …" with the page's text and exits 1.
"""
import os
import signal
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def wait(condition, seconds, what, driver):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # the element is not there yet
            pass
        time.sleep(0.1)
    print(f"FAILED waiting for {what}; the page shows:\n{driver.find_element(By.TAG_NAME, 'body').text}", flush=True)
    sys.exit(1)


def main():
    url, id_file, screenshot = sys.argv[1:4]
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
                     "--no-first-run", "--no-default-browser-check", "--disable-extensions"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    # Stopped by the test harness (SIGTERM): quit the browser and chromedriver first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        driver.get(url)
        wait(lambda: driver.find_element(By.ID, "policy-version").text not in ("", "…"), 15, "the summary", driver)
        before = int(wait(lambda: driver.find_element(By.ID, "total-accepted").text, 15, "the totals", driver))
        print(f"LOADED accepted={before}", flush=True)
        deadline = time.monotonic() + 30
        while not (os.path.exists(id_file) and open(id_file).read().strip()):
            if time.monotonic() > deadline:
                print("FAILED: no transaction id was given", flush=True)
                sys.exit(1)
            time.sleep(0.1)
        wanted = open(id_file).read().strip()
        row = wait(lambda: driver.find_element(By.CSS_SELECTOR, f'#latest tr[data-id="{wanted}"]'), 15, f"the row of {wanted}", driver)
        after = wait(lambda: (lambda n: n if n > before else None)(int(driver.find_element(By.ID, "total-accepted").text)), 15,
                     "the accepted count to change", driver)
        lines = wait(lambda: driver.find_elements(By.CSS_SELECTOR, '#chart polyline[data-decision="accepted"]'), 15, "the chart", driver)
        seen = int(driver.find_element(By.ID, "seen").text)
        driver.save_screenshot(screenshot)
        print(f"SEEN id={wanted} row={row.text!r} accepted={before}->{after} chart={len(lines)} seen={seen}", flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
