"""Shared pytest configuration: fixture plugins live under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.core",
    "tests.fixtures.worker",
    "tests.fixtures.faults",
]
