"""Per-person data keys on the compacted keys topic, wrapped by a master key from the environment.

`leadflow.keys` holds one record per person (key = person id, same partition as their events):
their data key, wrapped (AES-GCM) by the master key named in the record (`kid`). Erasure
writes a tombstone; on Kafka, compaction then removes the key for good, and every byte sealed
with it (`lifecycle.shredding`) — history, stage changes, the table and its changelog, the
dedup store, exports — stays unreadable.

Master keys come from `LEADFLOW_MASTER_KEY` (`kid:base64,kid:base64…`) or the file named by
`LEADFLOW_MASTER_KEY_FILE` (one `kid:base64` per line); the first is the current one, used to
wrap new keys; the others are accepted for unwrapping. Rotation: put the new key first and
keep the old ones; the worker rewraps every key it loads under an old master key (at
assignment), and `leadflow keys rewrap` does it for the whole topic. Once no record names an
old key any more, it can be dropped from the environment.

The worker unwraps a person's key once and keeps it in a bounded LRU (`KeyRing`): the
per-event path does a dict lookup, never an unwrap.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from lifecycle.shredding import KEY_SIZE, DataKey, seal_personal

MASTER_KEY_ENV = "LEADFLOW_MASTER_KEY"
MASTER_KEY_FILE_ENV = "LEADFLOW_MASTER_KEY_FILE"


#: Keys-topic records of transit keys (an alias's forwarded events to its survivor) start
#: with this: 0xff never occurs in UTF-8, so no person id's record can look like one.
TRANSIT_PREFIX = b"\xfftransit\x00"


def transit_record(survivor: str, alias: str) -> bytes:
    """The keys-topic key of the transit key of `alias`'s events forwarded to `survivor`
    (at the survivor's partition)."""
    return TRANSIT_PREFIX + survivor.encode() + b"\x00" + alias.encode()


def _transit_aad(record: bytes) -> str:
    """What a transit key's wrapping is bound to (as a person id binds a data key's)."""
    return "transit:" + record[len(TRANSIT_PREFIX) :].decode().replace("\x00", ":", 1)


class MasterKeyError(ValueError):
    """The master key configuration is missing or malformed; the message says what to do."""


def generate_master_key(kid: str | None = None) -> str:
    """A new master key entry, `kid:base64` (what `leadflow keys new-master` prints)."""
    kid = kid or f"m{secrets.token_hex(4)}"
    return f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode()}"


@dataclass(frozen=True, slots=True)
class MasterKeys:
    """The master keys by id; `current` wraps new data keys."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)  # never in a log line or a traceback

    @classmethod
    def parse(cls, text: str, *, where: str = MASTER_KEY_ENV) -> MasterKeys:
        entries = [e.strip() for e in text.replace("\n", ",").split(",") if e.strip()]
        if not entries:
            raise MasterKeyError(f"{where} is empty: give kid:base64 (32 bytes)")
        keys: dict[str, bytes] = {}
        for number, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            try:
                raw = base64.b64decode(encoded, validate=True) if sep and kid else b""
            except ValueError:
                raw = b""
            if len(raw) != KEY_SIZE:
                raise MasterKeyError(
                    f"{where}: entry {number} is not kid:base64 of {KEY_SIZE} bytes "
                    "(make one with `leadflow keys new-master`)"
                )
            if kid in keys:
                raise MasterKeyError(f"{where}: key id {kid!r} appears twice")
            keys[kid] = raw
        return cls(next(iter(keys)), keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MasterKeys | None:
        env = os.environ if environ is None else environ
        text = env.get(MASTER_KEY_ENV)
        if text:
            return cls.parse(text)
        path = env.get(MASTER_KEY_FILE_ENV)
        if path:
            try:
                content = Path(path).read_text()
            except OSError as error:
                raise MasterKeyError(f"{MASTER_KEY_FILE_ENV}={path}: {error.strerror}") from None
            return cls.parse(content, where=f"{MASTER_KEY_FILE_ENV}={path}")
        return None

    @classmethod
    def required(cls, environ: Mapping[str, str] | None = None) -> MasterKeys:
        keys = cls.from_env(environ)
        if keys is None:
            raise MasterKeyError(
                f"no master key: set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV} "
                "(personal fields are stored encrypted; `leadflow keys new-master` makes one)"
            )
        return keys

    def wrap(self, person: str, key: DataKey) -> bytes:
        """The keys-topic value of `person`'s data key, wrapped by the current master key."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # not at start (issue 13)

        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, key.raw, person.encode())
        # The JSON orjson writes for {"kid": …, "key": …}, built by concatenation: orjson's
        # output is a malloc'd buffer shrunk in place, and those long-lived small chunks,
        # interleaved with the AES contexts of keys made and dropped, kept ~4 KB of heap per
        # key made (60k keys made, 10k kept open: 304 MB of RSS instead of 78).
        kid = orjson.dumps(self.current)
        return b'{"kid":' + kid + b',"key":"' + base64.b64encode(nonce + sealed) + b'"}'

    def unwrap(self, person: str, value: bytes) -> tuple[DataKey, str]:
        """The data key and the id of the master key that wrapped it."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            data = orjson.loads(value)
            kid, sealed = data["kid"], base64.b64decode(data["key"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise MasterKeyError(f"keys record of {person!r} is not a wrapped key") from None
        master = self.keys.get(kid)
        if master is None:
            raise MasterKeyError(
                f"the data key of {person!r} is wrapped by master key {kid!r}, which is not "
                f"in {MASTER_KEY_ENV}: keep old master keys until `leadflow keys rewrap` ran"
            )
        try:
            raw = AESGCM(master).decrypt(sealed[:12], sealed[12:], person.encode())
        except InvalidTag:
            raise MasterKeyError(
                f"the data key of {person!r} does not open with master key {kid!r}"
            ) from None
        return DataKey(raw), kid


async def read_keys(
    bootstrap: str,
    topic: str,
    master: MasterKeys | None,
    *,
    partitions: list[int] | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> KeyRing:
    """The keys topic (all of it, or `partitions`) as a KeyRing; empty if there is no topic."""
    from streams.kafka.readers import iter_to_end
    from streams.kafka.topics import TopicNotFound

    ring = KeyRing(master, cache_size=10_000_000)
    try:
        async for record in iter_to_end(
            bootstrap, topic, partitions=partitions, client_options=client_options
        ):
            if record.key is not None:
                ring.load_record(record.key, record.value)
    except TopicNotFound:
        pass
    return ring


def opener(ring: KeyRing, on_error: Callable[[str], None]) -> Callable[[str], DataKey | None]:
    """`ring.get` for offline readers: a key that cannot be unwrapped is reported once and
    read as missing (its records show withheld sentences and recorded outcomes)."""
    reported: set[str] = set()

    def get(person: str) -> DataKey | None:
        try:
            return ring.get(person)
        except MasterKeyError as error:
            if person not in reported:
                reported.add(person)
                on_error(str(error))
            return None

    return get


def new_data_key() -> DataKey:
    return DataKey(secrets.token_bytes(KEY_SIZE))


class KeyRing:
    """The data keys of the persons a process reads: wrapped values as loaded from the keys
    topic, unwrapped on first use and kept in a bounded LRU."""

    __slots__ = (
        "cache_size",
        "master",
        "open",
        "sealed",
        "stale",
        "transit",
        "transit_open",
        "wrapped",
    )

    def __init__(self, master: MasterKeys | None, *, cache_size: int = 100_000) -> None:
        self.master = master
        self.cache_size = cache_size
        self.wrapped: dict[str, bytes] = {}
        self.open: dict[str, DataKey] = {}
        #: persons whose key is wrapped by an old master key (rewrap them)
        self.stale: set[str] = set()
        #: person -> (personal part, its ciphertext): the last one sealed. Sealing is
        #: deterministic, and upstream resends the same profile with most events, so most
        #: seals are a comparison (bounded with `open`)
        self.sealed: dict[str, tuple[Mapping[str, str], str]] = {}
        #: transit records (`transit_record`) -> wrapped value: few (one per merged pair)
        self.transit: dict[bytes, bytes] = {}
        self.transit_open: dict[bytes, DataKey] = {}

    def seal(self, person: str, part: Mapping[str, str]) -> str:
        """`part` sealed with the person's key (which must exist: `create` first)."""
        last = self.sealed.get(person)
        if last is not None and last[0] == part:
            return last[1]
        key = self.get(person)
        if key is None:
            raise KeyError(f"no data key for {person!r}")
        token = seal_personal(key, person, part)
        self.sealed[person] = (dict(part), token)
        if len(self.sealed) > self.cache_size:
            del self.sealed[next(iter(self.sealed))]
        return token

    def load_record(self, key: bytes, value: bytes | None) -> str | None:
        """One keys-topic record as read (a person's key, or a transit key); returns the
        person it is the key of, None for a transit key."""
        if key.startswith(TRANSIT_PREFIX):
            self.transit_open.pop(key, None)
            if value is None:
                self.transit.pop(key, None)
            else:
                self.transit[key] = value
            return None
        person = key.decode()
        self.load(person, value)
        return person

    def get_transit(self, record: bytes) -> DataKey | None:
        """The transit key of `record` (None: not loaded, or wrapped by a master key that is
        not at hand any more: its alias's worker publishes it again)."""
        value = self.transit.get(record)
        if value is None or self.master is None:
            return None
        key = self.transit_open.get(record)
        if key is None:
            try:
                key = self.master.unwrap(_transit_aad(record), value)[0]
            except MasterKeyError:
                return None
            self.transit_open[record] = key
        return key

    def add_transit(self, record: bytes, key: DataKey) -> bytes:
        """Keep a transit key made here; returns the keys-topic value to publish."""
        if self.master is None:
            raise MasterKeyError(f"no master key to wrap a transit key with ({MASTER_KEY_ENV})")
        value = self.master.wrap(_transit_aad(record), key)
        self.transit[record] = value
        self.transit_open[record] = key
        return value

    def drop_transit(self, record: bytes) -> bool:
        """Forget a transit key (its tombstone is the caller's); whether it was there."""
        self.transit_open.pop(record, None)
        return self.transit.pop(record, None) is not None

    def transits_of(self, survivor: str) -> list[bytes]:
        """The transit records of the aliases forwarding to `survivor` (erased with them)."""
        prefix = TRANSIT_PREFIX + survivor.encode() + b"\x00"
        return [record for record in self.transit if record.startswith(prefix)]

    def load(self, person: str, value: bytes | None) -> None:
        """One keys-topic record, in topic order (None: a tombstone, the person was erased)."""
        self.open.pop(person, None)
        self.sealed.pop(person, None)
        if value is None:
            self.wrapped.pop(person, None)
            self.stale.discard(person)
            return
        self.wrapped[person] = value
        if self.master is not None and orjson.loads(value).get("kid") != self.master.current:
            self.stale.add(person)
        else:
            self.stale.discard(person)

    def get(self, person: str) -> DataKey | None:
        """The person's data key, or None if they have none (never had one, or erased)."""
        key = self.open.get(person)
        if key is not None:
            return key
        value = self.wrapped.get(person)
        if value is None or self.master is None:
            return None
        key, _ = self.master.unwrap(person, value)
        self._keep_open(person, key)
        return key

    def _keep_open(self, person: str, key: DataKey) -> None:
        """Keep `key` unwrapped, the least recently opened out beyond `cache_size` (an open
        key holds its AES and HMAC contexts: ~7 KB of memory)."""
        self.open[person] = key
        while len(self.open) > self.cache_size:
            del self.open[next(iter(self.open))]

    def create(self, person: str) -> bytes:
        """A new data key for `person`; returns the keys-topic value to publish."""
        if self.master is None:
            raise MasterKeyError(f"no master key to wrap a new data key with ({MASTER_KEY_ENV})")
        key = new_data_key()
        value = self.master.wrap(person, key)
        self.wrapped[person] = value
        self._keep_open(person, key)
        return value

    def rewrapped(self, person: str) -> bytes | None:
        """The person's key wrapped by the current master key (None if they have none)."""
        key = self.get(person)
        if key is None or self.master is None:
            return None
        value = self.master.wrap(person, key)
        self.wrapped[person] = value
        self.stale.discard(person)
        return value

    def destroy(self, person: str) -> None:
        self.wrapped.pop(person, None)
        self.open.pop(person, None)
        self.sealed.pop(person, None)
        self.stale.discard(person)

    def forget(self, persons: Iterable[str]) -> None:
        for person in persons:
            self.destroy(person)

    def __contains__(self, person: str) -> bool:
        return person in self.wrapped


async def opener_of(
    settings: Any, on_error: Callable[[str], None]
) -> Callable[[str], DataKey | None]:
    """The keys topic of `settings` read with its master key, as an `opener` for offline
    readers (export, reconcile, the shares of `--partitions`)."""
    ring = await read_keys(
        settings.bootstrap,
        settings.topics.keys,
        settings.master_keys(),
        client_options=settings.aiokafka_kwargs(),
    )
    return opener(ring, on_error)
