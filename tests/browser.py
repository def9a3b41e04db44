"""Drive the web app in a real browser: headless Chromium through Selenium (test tooling, not part of the package).

The browser test (test_app_browser.py) uses :func:`drive_browser`; run as a script, this file retakes the
screenshot of the app in docs/usage.md::

    python tests/browser.py --out docs/app_screenshot.png             # the bundled model, its defaults
    python tests/browser.py --model DIR --steps 25 --out page.png     # any LLM4GEN folder

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when it can) and ``selenium``.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def find_browser() -> tuple[str | None, str | None, str]:
    """``(chromium, chromedriver, reason)``: the system Chromium and ChromeDriver, or ``None`` and why not."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return chromium, driver, "the Python package selenium is not installed (pip install selenium)"
    if chromium is None:
        return None, driver, "no Chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if driver is None:
        return chromium, None, "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return chromium, driver, ""


def drive_browser(
    url: str,
    prompt: str,
    *,
    screenshot: str | os.PathLike | None = None,
    timeout: float = 180.0,
    window: tuple[int, int] = (1280, 1200),
) -> dict[str, Any]:
    """Open the app at ``url`` in headless Chromium, type ``prompt``, click Generate and wait for both galleries.

    Returns ``{"base": [PNG bytes, ...], "llm4gen": [...], "tokens": token line, "status": status line,
    "images_fit": whether every result image is wholly visible in its gallery}``; saves a screenshot of the whole
    page to ``screenshot`` when given (and adds its CSS height as ``"page_height"``). Raises ``RuntimeError`` with
    the page's error text if the app shows an error, ``TimeoutError`` after ``timeout`` seconds.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    chromium, chromedriver, reason = find_browser()
    if reason:
        raise RuntimeError(f"Cannot drive a browser: {reason}.")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={window[0]},{window[1]}", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    deadline = time.monotonic() + timeout

    def wait_for(fn: Callable[[], Any], what: str) -> Any:
        while time.monotonic() < deadline:
            value = fn()
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"Timed out after {timeout:.0f} s waiting for {what}.")

    def images(gallery: str) -> list[Any]:
        return driver.find_elements(By.CSS_SELECTOR, f"#{gallery} img")

    def page_error() -> str:
        toasts = driver.find_elements(By.CSS_SELECTOR, ".toast-body.error")
        texts = [" ".join((t.get_attribute("textContent") or "").split()) for t in toasts]  # collapsed ones too
        return " ".join(t for t in texts if t)

    try:
        driver.get(url)
        box = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#prompt textarea"), "the prompt box")[0]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(prompt)
        wait_for(lambda: "CLIP" in driver.find_element(By.ID, "token-info").text, "the token counts")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()

        def done() -> bool:
            err = page_error()
            if err:
                raise RuntimeError(f"The app showed an error: {err}")
            return bool(images("base-gallery")) and bool(images("llm4gen-gallery"))

        wait_for(done, "two images (base and LLM4GEN)")
        # warnings would hide the header in the screenshot
        for close in driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-close']"):
            try:
                close.click()
            except Exception:  # a toast that already went away
                pass
        time.sleep(1.0)  # let the thumbnails paint before the screenshot
        # every result image lies wholly inside its gallery (none is cut off by the gallery's frame)
        fits = driver.execute_script(
            "return ['base-gallery', 'llm4gen-gallery'].every(id => {"
            "  const box = document.getElementById(id).getBoundingClientRect();"
            "  return [...document.querySelectorAll('#' + id + ' img')].every(img => {"
            "    const r = img.getBoundingClientRect(); return r.top >= box.top - 1 && r.bottom <= box.bottom + 1; });"
            "});")
        out: dict[str, Any] = {"tokens": driver.find_element(By.ID, "token-info").text,
                               "status": driver.find_element(By.ID, "status").text, "images_fit": bool(fits)}
        for key, gallery in (("base", "base-gallery"), ("llm4gen", "llm4gen-gallery")):
            blobs = []
            for src in dict.fromkeys(img.get_attribute("src") for img in images(gallery)):
                if src.startswith("data:"):
                    blobs.append(base64.b64decode(src.split(",", 1)[1]))
                else:
                    with urllib.request.urlopen(src, timeout=30) as resp:  # our own local server
                        blobs.append(resp.read())
            out[key] = blobs
        if screenshot is not None:
            # the whole page, not just the first window: grow the window to the page's height first
            height = int(driver.execute_script(
                "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"))
            for _ in range(3):  # the window's own frame takes some of its height: grow until the viewport fits
                inner = int(driver.execute_script("return window.innerHeight"))
                if inner >= height:
                    break
                driver.set_window_size(window[0], int(driver.get_window_size()["height"]) + height - inner + 20)
                time.sleep(0.5)
            out["page_height"] = height
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(os.fspath(screenshot))
        return out
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    """Serve the app on a free localhost port, generate the example prompt once, save a PNG of the whole page."""
    from llm4gen.app import EXAMPLE_PROMPT, launch, load_model
    from llm4gen.cli.common import bundled_model_dir

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", help="LLM4GEN pipeline folder or hub id (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=Path("docs/app_screenshot.png"), help="where the PNG goes")
    parser.add_argument("--steps", type=int, default=None, help="the page's denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="the page's guidance (default: the model's, 5 for the bundled model)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the images")
    args = parser.parse_args(argv)
    model = args.model or bundled_model_dir()
    if model is None:
        parser.error("no --model given and no bundled model (models/default) in this checkout")
    loaded = load_model(model)
    chosen = loaded.pipe.sampling_defaults.call_kwargs(args.guidance, args.steps)
    demo, url = launch(loaded, block=False, default_steps=chosen["num_inference_steps"],
                       default_guidance=chosen["guidance_scale"])
    try:
        result = drive_browser(url, EXAMPLE_PROMPT, screenshot=args.out, timeout=args.timeout)
    finally:
        demo.close()
    print(f"{result['status']}\nscreenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
