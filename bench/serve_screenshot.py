"""Screenshot `mha serve`'s live page with a typed sentence, for the README (docs/serve_live.png).

    python bench/serve_screenshot.py RUN ["Ein Hund rennt durch den Schnee."] [--output F.png]

Starts `mha serve RUN --port 0` on 127.0.0.1, opens the page in headless Chromium (Debian's
/usr/bin/chromium through Playwright, as the tests do), types the sentence, waits for the answer,
opens the head view (with the word links on when the run has `mha align`'s report), hovers a
source token and saves the page; then stops the server with SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--disable-background-networking", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("text", nargs="?", default="Ein Hund rennt durch den Schnee.")
    parser.add_argument("--output", type=Path, default=Path("docs/serve_live.png"))
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "mha.cli", "serve", str(args.run), "--port",
                               "0", "--device", "cpu"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split(" at ")[1].split()[0]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.goto(url)
            page.wait_for_function("window.mhaLive !== undefined")
            page.fill("#live-text", args.text)
            page.press("#live-text", "Enter")
            page.wait_for_function("!window.mhaLive.pending", timeout=120_000)
            page.click(".tab[data-view=head]")
            if page.is_visible("#word-links"):
                page.set_checked("#word-links", True)
            tokens = page.locator("#lines text.token.right")
            if tokens.count() > 1:
                tokens.nth(1).hover()
            page.screenshot(path=str(args.output), full_page=False)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
