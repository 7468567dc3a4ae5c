"""Debian's Chromium as the browser tests and the benchmark's screen measurement drive it (Playwright for Python)."""

CHROMIUM = "/usr/bin/chromium"
# Headless in a container: no sandbox (we run as root), no GPU, nothing that calls out on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
