"""Shared pytest configuration: fixture plugins live under tests/fixtures/."""

import os

#: Every worker and CLI command a test starts wraps data keys with this master key (a test
#: may set its own). Personal fields are stored encrypted (lifecycle/shredding.py).
TEST_MASTER_KEY = "test:" + "dGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGVzLWxvbmchISE="
os.environ.setdefault("LEADFLOW_MASTER_KEY", TEST_MASTER_KEY)

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.core",
    "tests.fixtures.worker",
    "tests.fixtures.faults",
]
