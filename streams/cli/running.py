"""How the runtime commands run: settings from flags over `LEADFLOW_*` variables, one
connection first (a refused password or an untrusted certificate fails at once, in one line),
then the command's coroutine until SIGINT/SIGTERM, with a missing topic or an unreachable
broker as a one-line error."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError

from events.codec import describe_validation_error
from streams.cli.common import fail

if TYPE_CHECKING:
    from streams.settings import Settings

T = TypeVar("T")


class BrokerKind(StrEnum):
    kafka = "kafka"
    tansu = "tansu"


class TopicChoice(StrEnum):
    stage_changes = "stage-changes"
    history = "history"
    dead_letters = "dead-letters"
    events = "events"
    policies = "policies"


def problem(error: BaseException) -> str:
    """`Type: message` without repeating the type when the message already starts with it."""
    text = str(error)
    name = type(error).__name__
    return text if text.startswith(name) else f"{name}: {text}".rstrip(": ")


def settings_from(**flags: Any) -> Settings:
    """Settings from the environment, with every flag the user gave taking precedence."""
    try:
        from streams.settings import Settings

        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as error:
        raise fail(f"settings: {describe_validation_error(error)}") from None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def run_until_signal(main: Coroutine[Any, Any, T]) -> tuple[T | None, bool]:
    """Run `main`; SIGINT/SIGTERM cancel it (its `finally` blocks still run).

    Returns (result, interrupted). Cancellation is how aiokafka clients get closed cleanly;
    a KeyboardInterrupt raised into the middle of a library call would skip that.
    """

    async def runner() -> tuple[T | None, bool]:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main)
        stopped = False

        def stop() -> None:
            nonlocal stopped
            stopped = True
            task.cancel()

        # Signal handlers can only be set from the main thread (not when called in a thread).
        signals = (signal.SIGINT, signal.SIGTERM) if _in_main_thread() else ()
        for sig in signals:
            loop.add_signal_handler(sig, stop)
        try:
            return await task, False
        except asyncio.CancelledError:
            if stopped:
                return None, True
            raise
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


def check_broker_or_exit(s: Settings) -> None:
    """One connection with the settings' security, or exit with the one line saying why."""
    from streams.kafka.preflight import BrokerAccessError, check_broker

    try:
        asyncio.run(check_broker(s))
    except BrokerAccessError as error:
        raise fail(str(error), 1) from None


def run_against_broker(s: Settings, main: Coroutine[Any, Any, T]) -> tuple[T | None, bool]:
    """`run_until_signal`, with a missing topic or an unreachable broker as a one-line error
    (one connection first: wrong credentials or an untrusted certificate fail at once)."""
    from streams.kafka.keys import MasterKeyError
    from streams.kafka.topics import TopicNotFound

    try:
        check_broker_or_exit(s)
    except typer.Exit:
        main.close()
        raise
    try:
        return run_until_signal(main)
    except TopicNotFound as missing:
        hint = "(run `leadflow topics create`?)"
        raise fail(f"no topic {missing} on {s.bootstrap} {hint}") from None
    except MasterKeyError as error:  # a malformed LEADFLOW_MASTER_KEY: one line, no key in it
        raise fail(str(error), 2) from None
    except Exception as error:  # cannot reach the broker, topic authorisation, …
        raise fail(f"{s.bootstrap}: {problem(error)}", 1) from None
