"""Dead letters: anything the worker cannot accept, kept with enough to find and re-drive it.

The worker never stops on a bad message: the raw bytes, where they came from and a one-line
reason go to the dead-letter topic and processing continues with the next message.

A rejected message can carry personal data. When its key names a person, its bytes are kept
sealed with that person's data key (`DeadLetter.sealed`), so erasing them shreds their dead
letters too; once they are erased nothing of a rejected message of theirs is kept. A message
whose key names no person (none, not UTF-8, too long) cannot be sealed for anybody, and no
erasure could reach a copy of it: its letter keeps the SHA-256 of its bytes instead of the
bytes, which stay where they came from (`topic`, `partition`, `offset`) for that topic's
retention, so the worker adds no copy of them that outlives the original.
"""

from __future__ import annotations

import base64

from events.outbound import DeadLetter

#: Longest error kept in a dead letter; a reason is one line, never a traceback.
MAX_ERROR = 1000


def one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def dead_letter(
    error: object,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    sealed: bool = False,
    value_sha256: str | None = None,
) -> bytes:
    """The `DeadLetter` JSON for one rejected message (raw key and value base64-encoded;
    `sealed`: `value` is already sealed for the person the key names, or withheld;
    `value_sha256`: the bytes were not kept, as their key names no person)."""
    letter = DeadLetter(
        error=one_line(error),
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else base64.b64encode(key),
        value=base64.b64encode(value or b""),
        sealed=sealed,
        value_sha256=value_sha256,
    )
    return letter.model_dump_json().encode()
