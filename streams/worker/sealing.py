"""Personal data at the worker's edges: a state as the table stores it (personal fields and
sentences quoting them sealed with the person's data key, `lifecycle.shredding`), a table
value opened back into a state, and what a dead letter keeps of a rejected message."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from faust.types.tuples import Message

from events.limits import MAX_ID
from lifecycle.shredding import PERSONAL_PROFILE, open_state, seal_state
from lifecycle.state import PersonState
from streams.kafka.keys import KeyRing
from streams.worker.outputs import Outputs, to_json

log = logging.getLogger(__name__)


def state_value(state: PersonState, keys: KeyRing) -> bytes:
    """The state as the table stores it: personal fields and sentences quoting them sealed
    with the person's key (dropped once they are erased)."""
    wire = state.to_wire()
    profile = wire["profile"]  # unpacked by to_wire already (`state.profile` unpacks again)
    if profile and not PERSONAL_PROFILE.isdisjoint(profile):
        person = state.person_id
        key = keys.get(person)
        seal = None if key is None else (lambda part: keys.seal(person, part))
        seal_state(wire, key, seal)
    return to_json(wire)


def state_of_value(person: str, raw: bytes, keys: KeyRing) -> PersonState:
    """A table value back into a state, its sealed fields opened with the person's key."""
    data = orjson.loads(raw)
    if "personal" in data or b'"sealed:' in raw:
        data = open_state(data, keys.get(person))
    return PersonState.from_wire(data)


def rejected_value(
    message: Message,
    person: str,
    state_of: Callable[[], PersonState | None],
    keys: KeyRing,
    key_outputs: Outputs,
    keys_topic: str,
) -> tuple[bytes | None, bool]:
    """A rejected message's value as its dead letter keeps it, and whether it is sealed:
    sealed with the data key of the person its key names (made if they have none), nothing
    once they are erased (`streams.worker.deadletters`)."""
    try:
        state = state_of()
        if state is not None and state.erased:
            return None, True
        if keys.get(person) is None:
            key_outputs.add(keys_topic, message.key, keys.create(person), message.partition)
        data_key = keys.get(person)
        assert data_key is not None
        return data_key.seal(person, message.value).encode(), True
    except Exception:  # a key that cannot be unwrapped: keep nothing rather than plaintext
        log.exception(
            "dead letter at %s[%s]@%s: value not kept",
            message.topic,
            message.partition,
            message.offset,
        )
        return None, True


def person_of_key(key: bytes | None) -> str | None:
    """The person id a message key names (None for no key, or one no person id can be)."""
    if not key or len(key) > MAX_ID:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None
