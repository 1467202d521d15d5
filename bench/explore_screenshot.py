"""Screenshot the `mha explore` page of a run, for the README (docs/explore.png).

    python bench/explore_screenshot.py runs/multi30k_de_en
    python bench/explore_screenshot.py RUN "Ein Hund rennt durch den Schnee." --view model

Writes the page (RUN/explore.html unless --page), opens it in headless Chromium (Debian's
/usr/bin/chromium through Playwright, as the tests do) and saves one view as a PNG. The head
view is shown with a source token hovered, so the picture shows what the page is for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mha.inference.explore import explore

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--disable-background-networking", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-component-update", "--disable-sync"]
SENTENCE = "Ein kleiner Junge spielt mit seinem Hund im Schnee."


def screenshot(page: Path, picture: Path, view: str, kind: str, hover: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        tab.goto(page.resolve().as_uri())
        tab.select_option("#kind", kind)
        tab.click(f".tab[data-view={view}]")
        if view == "model":
            tab.click("#grid .panel[data-layer='0'][data-head='0']")
        elif view == "head":
            column = "right" if kind == "cross" else "left"  # the source side
            tab.hover(f"#lines text.token.{column}[data-index='{hover}']")
        elif view == "steps":
            tab.fill("#step", str(hover))
        tab.add_style_tag(content="#legend { display: none; }")  # the page minus its legend
        tab.screenshot(path=str(picture), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder made by `mha train`")
    parser.add_argument("text", nargs="*", help=f"sentences (default: {SENTENCE!r})")
    parser.add_argument("--page", type=Path, help="where the page goes (default RUN/explore.html)")
    parser.add_argument("--output", type=Path, default=Path("docs/explore.png"))
    parser.add_argument("--view", choices=("model", "head", "steps", "figures"), default="head")
    parser.add_argument("--kind", choices=("encoder", "decoder", "cross"), default="cross")
    parser.add_argument("--hover", type=int, default=2, help="token hovered / step shown")
    args = parser.parse_args()
    page = args.page or args.run / "explore.html"
    explore(args.run, args.text or [SENTENCE], page, device="cpu")
    screenshot(page, args.output, args.view, args.kind, args.hover)
    print(f"{args.output} from {page}")


if __name__ == "__main__":
    main()
