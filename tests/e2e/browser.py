"""Debian's Chromium under Playwright for the dashboard tests: one page, with every console
error, page error and request it saw, so a test can assert the page is clean and offline."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Error, Page, Request, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium is missing ({CHROMIUM}): the dashboard test needs Debian's chromium. "
            "Run scripts/ensure-chromium (or `sudo apt-get install chromium`); "
            "`make test` does this first.",
            pytrace=False,
        )


@dataclass
class Seen:
    """What the page did: errors (console and uncaught) and every URL it requested."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def offsite(self, local: str) -> list[str]:
        return [url for url in self.requests if not url.startswith(local)]


@contextlib.asynccontextmanager
async def chromium_page(
    profile: Path, *, width: int = 1280, height: int = 900, timeout_ms: int = 10_000
) -> AsyncIterator[tuple[Page, Seen]]:
    seen = Seen()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.errors.append(f"console: {message.text} ({message.location})")

    def on_page_error(error: Error) -> None:
        seen.errors.append(f"page error: {error}")

    def on_request(request: Request) -> None:
        seen.requests.append(request.url)

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            context.on("request", on_request)
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.set_default_timeout(timeout_ms)
            yield page, seen
        finally:
            await context.close()
