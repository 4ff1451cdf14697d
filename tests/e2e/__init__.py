"""Browser tests: the dashboard in headless Chromium against a real worker."""
