"""The README's picture of the chat page, docs/chat-page.png: ``gptcli serve`` of a run, the page
in headless Chromium (Debian's, as the browser test drives it), two turns answered and a third
still streaming.

    python docs/chat_page_screenshot.py runs/verdict            # or: make screenshot RUN=runs/verdict

The README's picture shows the book's chapter-5 run (``make demo``: the 124M shape, 10 epochs on
the-verdict.txt), which answers from the one story it has read.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

TURNS = ["Every effort moves you", "What did Mrs. Gisburn say?", "Tell me about the picture."]


def serve(run: str) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).parent / "gptcli"
    proc = subprocess.Popen([str(exe), "serve", "-c", run, "--port", "0", "-q"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "serving NAME (KIND) at http://127.0.0.1:PORT/"
    if " at http" not in line:
        proc.kill()
        sys.exit(f"error: gptcli serve -c {run} printed no URL")
    return proc, line.split(" at ")[-1].strip()


def shoot(url: str, out: Path, *, chromium: str, width: int, height: int, max_tokens: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page(viewport={"width": width, "height": height}, color_scheme="light")
        page.goto(url)
        page.wait_for_selector("body[data-state=idle]")
        page.fill("#max-tokens", str(max_tokens))  # greedy, the page's default: the same picture each time
        for i, text in enumerate(TURNS):
            page.fill("#prompt", text)
            page.press("#prompt", "Enter")
            if i < len(TURNS) - 1:
                page.wait_for_function(
                    f"document.querySelectorAll('.msg.assistant[data-done]').length === {i + 1}", timeout=300_000
                )
        # the last answer mid-stream, its cursor showing
        page.wait_for_function(
            "(document.querySelectorAll('.msg.assistant .text')[2]?.textContent.length || 0) > 40", timeout=300_000
        )
        png = page.screenshot()
        page.click("#stop")
        browser.close()
    out.write_bytes(_small(png))


def _small(png: bytes) -> bytes:
    """The PNG with a 64-colour palette (a text page loses nothing visible), when Pillow is here."""
    try:
        from PIL import Image
    except ImportError:
        return png
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="the run (or checkpoint) to serve")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "chat-page.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=700)
    ap.add_argument("--max-tokens", type=int, default=40)
    args = ap.parse_args()
    proc, url = serve(args.run)
    try:
        shoot(
            url, args.output, chromium=args.chromium, width=args.width, height=args.height, max_tokens=args.max_tokens
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
