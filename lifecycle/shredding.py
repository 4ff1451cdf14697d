"""Crypto-shredding: what is personal, how it is sealed per person, and what erasure leaves.

Personal fields — a profile's email, job title, company (name and phone are not part of the
envelope: they are dropped when an event is parsed, so never stored), and an event's `reason`
(free text from sales) — are written to every topic and store sealed with the person's data
key (AES-GCM). Destroying that key (erasure) makes every sealed byte unreadable, wherever the
copies went. Reason sentences that quote a personal value (a job title, an email domain, a
sales note) are sealed the same way; the rule id beside them stays readable.

Kept in the clear, because the rules read them on every interest action and they describe a
company or a role rather than a person: industry, employee count, country and seniority.

Sealing is deterministic: the nonce is an HMAC of the plaintext under the data key, so the
same plaintext sealed twice gives the same bytes (a redelivered event is still a duplicate of
the record history holds, and a re-emitted change is byte-identical). It reveals only that two
sealed values of one person are equal; AES-GCM's nonce is never reused for two plaintexts.

Decisions that read a personal field record their outcome in the clear (`outcomes`): which
UCP domain or title keyword matched, which decision-maker keyword, whether a title was given.
Policy words, not the person's; replay and verify use them when the fields are unreadable.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from events.inbound import Event, Profile
from lifecycle.records import Reason, StageChange

#: Profile fields sealed per person. Everything else in a profile stays in the clear.
PERSONAL_PROFILE = frozenset({"email", "job_title", "company", "name", "phone"})
#: Profile fields the rules need, kept in the clear (a company or a role, not a person).
CLEAR_PROFILE = ("industry", "employees", "country", "seniority")
KEY_SIZE = 32
_PREFIX = "v1."
#: A reason sentence stored sealed starts with this, then the ciphertext.
SEALED = "sealed:"
#: What a sealed value reads as once the person's key is gone.
WITHHELD = "withheld: the person was erased"


class DataKey:
    """One person's data key: AES-256-GCM with a synthetic (HMAC-derived) nonce."""

    __slots__ = ("_aead", "_nonce_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise ValueError(f"a data key is {KEY_SIZE} bytes, not {len(raw)}")
        # imported with the first key, not the module: a replay of a file without sealed fields
        # never opens one, and cryptography's bindings cost ~8 MB of RSS at start (issue 13)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.raw = raw
        self._aead = AESGCM(raw)
        self._nonce_key = hmac.new(raw, b"leadflow nonce", hashlib.sha256).digest()

    def seal(self, person: str, plaintext: bytes) -> str:
        aad = person.encode()
        nonce = hmac.new(self._nonce_key, aad + b"\0" + plaintext, hashlib.sha256).digest()[:12]
        sealed = nonce + self._aead.encrypt(nonce, plaintext, aad)
        return _PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open(self, person: str, token: str) -> bytes:
        """The plaintext; ValueError if the token was not sealed by this key for `person`."""
        if not token.startswith(_PREFIX):
            raise ValueError("not a sealed value")
        from cryptography.exceptions import InvalidTag

        sealed = base64.urlsafe_b64decode(token[len(_PREFIX) :])
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], person.encode())
        except InvalidTag:
            raise ValueError("sealed with another key") from None


# -- what is personal ----------------------------------------------------------------------------


def personal_part(event: Event) -> dict[str, str] | None:
    """The event's personal fields (None when it carries none: most events)."""
    out: dict[str, str] = {}
    profile = event.profile
    if profile is not None:
        for name in ("email", "job_title", "company"):
            value = getattr(profile, name)
            if value is not None:
                out[name] = value
    if event.reason is not None:
        out["reason"] = event.reason
    return out or None


def transit_key(alias_key: DataKey, survivor: str) -> DataKey:
    """The key an alias's forwarded events to `survivor` are sealed with: derived from the
    alias's data key (the same every time, so a re-forwarded event seals to the same bytes),
    published on the keys topic at the survivor's partition, destroyed with their erasure."""
    raw = hmac.new(alias_key.raw, b"leadflow transit\0" + survivor.encode(), hashlib.sha256)
    return DataKey(raw.digest())


def sealed_forward(event: Event, key: DataKey) -> Event:
    """A forwarded event (`lifecycle.merge.forwarded`) with its personal fields sealed into
    `forwarded_personal` for the person it is now keyed by."""
    part = personal_part(event)
    if part is None:
        return event
    token = seal_personal(key, event.person_id, part)
    return without_personal(event).model_copy(update={"forwarded_personal": token})


def opened_forward(event: Event, key: DataKey | None) -> Event:
    """A forwarded event with its sealed personal fields back in place (dropped when `key`
    is None: the survivor was erased). ValueError if `key` does not open them."""
    token = event.forwarded_personal
    if token is None:
        return event
    if key is None:
        return event.model_copy(update={"forwarded_personal": None})
    part = orjson.loads(key.open(event.person_id, token))
    update: dict[str, Any] = {"forwarded_personal": None}
    reason = part.pop("reason", None)
    if reason is not None:
        update["reason"] = reason
    if part:
        profile = event.profile
        update["profile"] = (
            Profile.model_validate(part) if profile is None else profile.model_copy(update=part)
        )
    return event.model_copy(update=update)


def clear_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """A profile without its personal fields (what a merge hand-off carries)."""
    return {k: v for k, v in profile.items() if k not in PERSONAL_PROFILE}


def without_personal(event: Event) -> Event:
    """The event as an erased person's worker reads it: personal fields dropped."""
    if personal_part(event) is None:
        return event
    profile = event.profile
    if profile is not None:
        profile = profile.model_copy(update={"email": None, "job_title": None, "company": None})
    return event.model_copy(update={"profile": profile, "reason": None})


def personal_values(profile: Mapping[str, Any], event: Event | None = None) -> tuple[str, ...]:
    """Strings whose appearance in a reason sentence makes the sentence personal."""
    values: list[str] = []
    merged = dict(profile)
    part = None if event is None else personal_part(event)
    if part:
        merged.update(part)
    for name in ("email", "job_title", "company", "reason"):
        value = merged.get(name)
        if isinstance(value, str) and value:
            values.append(value)
            if name == "email" and "@" in value:
                values.append(value.rsplit("@", 1)[1])
    return tuple(values)


def quotes(text: str, values: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(v.lower() in lowered for v in values)


# -- sealing for the wire ------------------------------------------------------------------------


def seal_personal(key: DataKey, person: str, part: Mapping[str, str]) -> str:
    return key.seal(person, orjson.dumps(part, option=orjson.OPT_SORT_KEYS))


def stored_body(body: dict[str, Any], token: str | None) -> dict[str, Any]:
    """The event as history stores it: personal fields out, their ciphertext (if any) in
    `personal`. `token` None drops them (an erased person's later events)."""
    profile = body.get("profile")
    if not (body.get("reason") is not None or (profile and PERSONAL_PROFILE & profile.keys())):
        return body
    body = dict(body)
    body.pop("reason", None)
    if profile:
        body["profile"] = {k: v for k, v in profile.items() if k not in PERSONAL_PROFILE}
    if token is not None:
        body["personal"] = token
    return body


def seal_reason(
    reason: Reason, key: DataKey | None, person: str, values: tuple[str, ...]
) -> Reason:
    """The reason as stored: a sentence quoting a personal value sealed (withheld if no key)."""
    if not values or reason.text.startswith(SEALED) or not quotes(reason.text, values):
        return reason
    if key is None:
        return Reason(reason.rule, WITHHELD)
    return Reason(reason.rule, SEALED + key.seal(person, reason.text.encode()))


def seal_changes(
    changes: tuple[StageChange, ...],
    key: DataKey | None,
    person: str,
    values: tuple[str, ...],
) -> tuple[StageChange, ...]:
    if not values:
        return changes
    out = []
    for change in changes:
        reason = seal_reason(change.reason, key, person, values)
        out.append(change if reason is change.reason else replace(change, reason=reason))
    return tuple(out)


def seal_sentences(
    changes: tuple[StageChange, ...],
    note: Reason | None,
    profile: Mapping[str, Any],
    event: Event,
    key: DataKey | None,
) -> tuple[tuple[StageChange, ...], Reason | None]:
    """A decision's sentences as stored: those quoting a personal value of the person's
    profile (before the event) or of the event sealed (withheld without a key)."""
    values = personal_values(profile, event)
    if not values:
        return changes, note
    person = event.person_id
    changes = seal_changes(changes, key, person, values)
    if note is not None:
        note = seal_reason(note, key, person, values)
    return changes, note


def open_text(text: str, key: DataKey | None, person: str) -> str:
    """A stored reason sentence back to what it said, or WITHHELD once the key is gone."""
    if not text.startswith(SEALED):
        return text
    if key is None:
        return WITHHELD
    try:
        return key.open(person, text[len(SEALED) :]).decode()
    except ValueError:
        return WITHHELD


def _open_reason(reason: dict[str, Any] | None, key: DataKey | None, person: str) -> None:
    if reason is not None:
        reason["text"] = open_text(reason["text"], key, person)


def open_body(body: dict[str, Any], key: DataKey | None, person: str) -> dict[str, Any]:
    """A stored event back to the event as received (without its personal fields if the key
    is gone)."""
    token = body.get("personal")
    if token is None:
        return body
    body = {k: v for k, v in body.items() if k != "personal"}
    if key is None:
        return body
    try:
        part = orjson.loads(key.open(person, token))
    except ValueError:
        return body
    reason = part.pop("reason", None)
    if reason is not None:
        body["reason"] = reason
    if part:
        body["profile"] = {**(body.get("profile") or {}), **part}
    return body


def open_record(data: dict[str, Any], key: DataKey | None, *, texts: bool = True) -> dict[str, Any]:
    """A history record (as JSON data) with what `key` can open opened, in place.

    `texts=False` opens the event only: a state folded from it keeps its last reason sealed,
    as the live worker's does."""
    person = data["person_id"]
    data["event"] = open_body(data["event"], key, person)
    _open_merged(data.get("merged"), key, person)
    if not texts:
        return data
    for change in data.get("changes") or ():
        _open_reason(change.get("reason"), key, person)
    _open_reason(data.get("note"), key, person)
    return data


def seal_merged(merged: Any, seal: Callable[[Mapping[str, str]], str]) -> Any:
    """A survivor's merge facts (`Decision.merged`) as history stores them: the personal
    fields of the folded profile (the survivor's own: a hand-off carries none) sealed."""
    profile = merged.profile
    if PERSONAL_PROFILE.isdisjoint(profile):
        return merged
    part = {k: v for k, v in profile.items() if k in PERSONAL_PROFILE}
    return {
        "entered_at": merged.entered_at,
        "highest": merged.highest,
        "profile": {k: v for k, v in profile.items() if k not in PERSONAL_PROFILE},
        "sla_breached": merged.sla_breached,
        "aliases": merged.aliases,
        "personal": seal(part),
    }


def _open_merged(merged: dict[str, Any] | None, key: DataKey | None, person: str) -> None:
    if merged is None:
        return
    token = merged.pop("personal", None)
    if token is not None and key is not None:
        with contextlib.suppress(ValueError):
            merged["profile"] = {**merged["profile"], **orjson.loads(key.open(person, token))}


def is_sealed(raw: bytes) -> bool:
    """Whether a stored record holds anything sealed (most records do not: a fast check)."""
    return b'"personal":' in raw or b'"sealed:' in raw


def seal_state(
    wire: dict[str, Any],
    key: DataKey | None,
    seal: Callable[[Mapping[str, str]], str] | None = None,
) -> None:
    """A state's table value (`PersonState.to_wire()`), sealed in place.

    `seal` seals the profile's personal part (default: with `key`; the worker passes its
    memo, `streams.kafka.keys.KeyRing.seal`). The last reason is sealed if it quotes a personal
    value and is not sealed yet (the worker's states hold it as stored)."""
    profile = wire["profile"]
    person = wire["person_id"]
    if not (profile and PERSONAL_PROFILE & profile.keys()):
        return
    part = {k: v for k, v in profile.items() if k in PERSONAL_PROFILE}
    wire["profile"] = {k: v for k, v in profile.items() if k not in PERSONAL_PROFILE}
    if seal is not None:
        wire["personal"] = seal(part)
    elif key is not None:
        wire["personal"] = seal_personal(key, person, part)
    reason = wire["last_reason"]
    if reason is not None and not Reason.of(reason).text.startswith(SEALED):
        values = personal_values(part)
        wire["last_reason"] = seal_reason(Reason.of(reason), key, person, values)


def open_state(data: dict[str, Any], key: DataKey | None) -> dict[str, Any]:
    """A table value's profile back to plaintext (in place), as far as `key` allows.

    The last reason stays as stored (sealed if it quotes personal data), as in the live
    worker's state; `open_text` shows it."""
    person = data["person_id"]
    token = data.pop("personal", None)
    if token is not None and key is not None:
        with contextlib.suppress(ValueError):
            data["profile"] = {**data["profile"], **orjson.loads(key.open(person, token))}
    return data


# -- what an erased person's data shows ----------------------------------------------------------


def withheld(reason: Any) -> dict[str, str]:
    """A reason of an erased person: the rule id stays, the sentence is withheld."""
    rule = reason["rule"] if isinstance(reason, dict) else reason.rule
    return {"rule": rule, "text": WITHHELD}


def shown_reason(reason: Any, erased: bool) -> Any:
    """What a reason shows: withheld for an erased person (sentences can quote a seniority, a
    title or a note), and a sentence whose key is not at hand is withheld too."""
    if reason is None:
        return None
    if erased:
        return withheld(reason)
    text = reason["text"] if isinstance(reason, dict) else reason.text
    if text.startswith(SEALED):
        return withheld(reason)
    return reason


def erased_profile(profile: Mapping[str, Any], erased: bool) -> Mapping[str, Any]:
    """An erased person shows no profile at all (the clear firmographics went with it)."""
    return {} if erased else profile
