#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by Selenium (pinned, from PyPI, in a virtual environment under
`target/ui-venvs`), against a real shoal node with a token: `python3 tests/ui/run.py`.

It starts the node, deploys echo-http, and loads /ui, which asks for the token once; then it
checks that the service is listed, that a plot's data moves while load runs (and keeps a
screenshot of the page under load in docs/dashboard.png), that a bad deploy shows the API's
message, that deploying, scaling and deleting through the page work, and that the browser's
console has no errors. Run by `scripts/test` after the end-to-end suite, which builds the
guests.
"""

import json
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402  (tests/harness.py)
from harness import check  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT = "selenium==4.27.1"
TOKEN = "ui-test-token"
SCREENSHOT = os.path.join(ROOT, "docs", "dashboard.png")


def request(method, url, body=None, token=TOKEN):
    return harness.request(method, url, body, token)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--no-first-run", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(description, condition, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    sys.exit(f"FAILED: waited {seconds} s for {description}")


def retried(action):
    """Runs `action` again when the element it used was replaced meanwhile: the page redraws
    its table once a second (but not while an input in it has the focus)."""
    from selenium.common.exceptions import StaleElementReferenceException
    for _ in range(10):
        try:
            return action()
        except StaleElementReferenceException:
            time.sleep(0.1)
    return action()


def main():
    from selenium.webdriver.common.by import By
    print(f"{CLIENT} drives headless Chromium through /ui:")
    with tempfile.TemporaryDirectory() as data_dir:
        node, api, gateway = harness.start_node(data_dir, TOKEN)
        driver = None
        try:
            with open(harness.guest("echo_http"), "rb") as f:
                status, _, body = request("POST", f"{api}/v1/deploy/echo", f.read())
            check(status == 201, f"deploying echo: {status} {body!r}")
            status, _, _ = request("GET", f"{api}/ui/stream", token=None)
            check(status == 401, f"the stream without the token answered {status}")

            driver = browser()
            driver.get(f"{api}/ui")
            token = wait("the page to ask for the token", lambda: driver.find_element(By.ID, "token").is_displayed())
            check(token, "the token field")
            driver.find_element(By.ID, "token").send_keys(TOKEN)
            driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
            wait("echo to be listed", lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-service="echo"]'))
            print("  ok: the page asks for the token once and lists the services")

            # Load: the request-rate plot's data must move.
            stop = threading.Event()

            def load():
                while not stop.is_set():
                    request("GET", f"{gateway}/echo/?load", token=None)

            workers = [threading.Thread(target=load) for _ in range(4)]
            for worker in workers:
                worker.start()
            try:
                rate = wait("the request rate plot to rise",
                            lambda: driver.execute_script(
                                "const s = window.shoal.series.echo; return s && s.rate[s.rate.length - 1];"),
                            seconds=30)
                check(rate > 0, f"rate {rate}")
                points = driver.execute_script("return window.shoal.series.echo.t.length")
                # Ten seconds of load, so the screenshot shows the plots' shape.
                wait("more points", lambda: driver.execute_script("return window.shoal.series.echo.t.length")
                     >= points + 10)
                latency = driver.execute_script("const s = window.shoal.series.echo; return s.p50[s.p50.length - 1];")
                check(latency is not None and latency > 0, f"p50 {latency}")
                os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
                driver.save_screenshot(SCREENSHOT)
            finally:
                stop.set()
                for worker in workers:
                    worker.join()
            print(f"  ok: the plots follow the load (screenshot: {os.path.relpath(SCREENSHOT, ROOT)})")

            # Deploy from the page: the API's validation and messages.
            module = harness.guest("hello_http")
            driver.find_element(By.ID, "deploy-file").send_keys(module)
            driver.find_element(By.ID, "deploy-name").send_keys("Bad_Name")
            driver.find_element(By.ID, "deploy-button").click()
            message = wait("the refusal", lambda: "invalid name" in driver.find_element(By.ID, "deploy-message").text
                           and driver.find_element(By.ID, "deploy-message").text)
            print(f"  ok: a bad name is refused with the API's message: {message!r}")
            name = driver.find_element(By.ID, "deploy-name")
            name.clear()
            name.send_keys("fromui")
            driver.find_element(By.ID, "deploy-button").click()
            wait("fromui to be listed", lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-service="fromui"]'))
            status, _, body = request("GET", f"{gateway}/fromui/", token=None)
            check(status == 200, f"fromui answered {status}")

            # Scale from the page.
            def scale():
                form = driver.find_element(By.CSS_SELECTOR, 'form[data-service="fromui"]')
                maximum = form.find_element(By.NAME, "max")
                maximum.clear()
                maximum.send_keys("7")
                form.find_element(By.TAG_NAME, "button").click()
            retried(scale)
            wait("the new bound", lambda: json.loads(request("GET", f"{api}/v1/services/fromui")[2])["spec"]["scale"]["max"] == 7)

            # Delete from the page.
            retried(lambda: driver.find_element(By.CSS_SELECTOR, 'button.danger[data-service="fromui"]').click())
            wait("fromui to go", lambda: not driver.find_elements(By.CSS_SELECTOR, 'tr[data-service="fromui"]'))
            check(request("GET", f"{api}/v1/services/fromui")[0] == 404, "fromui is deleted")
            print("  ok: deploy, scale and delete through the page")

            # The console: no script errors; the one failed request is the refused deploy.
            entries = driver.get_log("browser")
            errors = [e for e in entries if e["level"] == "SEVERE"
                      and not ("/v1/deploy/Bad_Name" in e["message"] and "400" in e["message"])]
            check(not errors, f"errors in the browser console: {errors}")
            print("  ok: no errors in the browser console")
        finally:
            if driver is not None:
                driver.quit()
            node.terminate()
            node.wait()
    print("dashboard: all passed")


if __name__ == "__main__":
    harness.in_environment("ui-venvs", "selenium", CLIENT, __file__, "SHOAL_UI_VENV")
    main()
