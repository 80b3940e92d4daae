"""Reports rendered by headless Chromium, as a reader's browser shows them: which plot colours the
screenshot holds."""

from __future__ import annotations

import subprocess
from pathlib import Path


def colours_seen(html: Path, colours: dict[str, str], size: str = "1000,900") -> dict[str, int]:
    """{name: pixels of that colour} in a screenshot of `html` (colours as #rrggbb)."""
    from PIL import Image

    shot = html.with_suffix(".png")
    subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--screenshot={shot}", f"--window-size={size}", f"file://{html}",
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )  # fmt: skip
    counts = {rgb: n for n, rgb in Image.open(shot).convert("RGB").getcolors(1 << 24) or []}
    return {name: counts.get(Image.new("RGB", (1, 1), c).getpixel((0, 0)), 0) for name, c in colours.items()}
