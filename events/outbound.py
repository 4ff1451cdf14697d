"""What leadflow publishes: stage changes, SLA breaches, history records and dead letters.

These pydantic models are the contract (validation when reading, JSON Schema for consumers).
The core builds light records of the same shape on its hot path and serialises them with
orjson; `tests/unit/test_contract.py` proves the two agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Base64Bytes, BaseModel, ConfigDict, Field

from events.inbound import Event

CLOUDEVENTS_SOURCE = "urn:leadflow"
STAGE_CHANGED_TYPE = "io.leadflow.stage_changed"


class Reason(BaseModel):
    """Why a decision was taken: a stable rule id for machines and one sentence for people."""

    model_config = ConfigDict(frozen=True)

    rule: str
    text: str


class StageChanged(BaseModel):
    """A person moved; published on `leadflow.stage-changes` for sales tools.

    `change_id` is person + sequence (+ index within the event), so a redelivery carries the
    same id and consumers can drop duplicates. The CloudEvents attributes make the message
    usable by CloudEvents-aware tools without a wrapper.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    change_id: str
    person_id: str
    sequence: int = Field(ge=1, description="per-person sequence of the history record")
    from_stage: str | None = Field(description="None when the person had no stage yet")
    to_stage: str
    passed_through: tuple[str, ...] = Field(
        default=(), description="stages skipped by an authoritative sales event, in order"
    )
    occurred_at: AwareDatetime
    event_id: str = Field(description="the inbound event that triggered this change")
    reason: Reason
    lead_source: str | None = None
    first_touch_source: str | None = None
    temperature: Literal["hot", "warm", "cold"] | None = None
    policy_version: str
    last_touch_source: str | None = Field(
        default=None, description="source of the last marketing touch up to this change"
    )
    touches: int = Field(default=0, ge=0, description="marketing touches up to this change")
    # CloudEvents 1.0 attributes
    id: str
    source: str = CLOUDEVENTS_SOURCE
    type: Literal["io.leadflow.stage_changed"] = STAGE_CHANGED_TYPE
    specversion: Literal["1.0"] = "1.0"
    time: AwareDatetime
    merged: tuple[str, ...] = Field(
        default=(),
        description=(
            "identity.merged: the person ids this change folded into the person (they are "
            "aliases of it from now on; count them as this person)"
        ),
    )


class SlaBreached(BaseModel):
    """A person stayed in a stage longer than the policy's SLA allows (not a stage change)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    person_id: str
    stage: str
    entered_at: AwareDatetime
    due_at: AwareDatetime
    detected_at: AwareDatetime = Field(description="occurred_at of the event that detected it")
    sla_days: float
    event_id: str


class MergedFacts(BaseModel):
    """What a merge assigned to the survivor (`lifecycle.merge.fold`), kept so the fold of
    history re-applies no rule."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    entered_at: dict[str, AwareDatetime]
    highest: str | None = None
    profile: dict[str, Any] = Field(default_factory=dict)
    sla_breached: tuple[str, ...] = ()
    aliases: tuple[str, ...] = Field(description="every id the survivor absorbed so far")


class HistoryRecord(BaseModel):
    """One applied inbound event, as stored forever on `leadflow.history`.

    The person's state is the fold of these records; `sequence` lets a worker check its table
    against history and rebuild what is missing.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    person_id: str
    sequence: int = Field(ge=1)
    policy_version: str
    event: Event
    changes: tuple[StageChanged, ...] = ()
    sla_breaches: tuple[SlaBreached, ...] = ()
    note: Reason | None = Field(default=None, description="why the event moved no one, if so")
    activity: bool = Field(description="the event counts as activity for the inactivity window")
    last_activity: AwareDatetime | None = None
    score: float = 0.0
    score_at: AwareDatetime | None = None
    first_touch_source: str | None = None
    lead_source: str | None = None
    erased: bool = False
    last_touch_source: str | None = None
    touches: int = Field(default=0, ge=0, description="marketing touches so far")
    outcomes: dict[str, str] | None = Field(
        default=None,
        description="what the decision read of personal fields, in policy words (the UCP "
        "domain or title keyword, the decision-maker keyword that matched), so replay and "
        "verify reproduce it after the fields are erased",
    )
    first_touch_at: AwareDatetime | None = Field(
        default=None, description="when the first touch happened (merges keep the earlier)"
    )
    merged_into: str | None = Field(
        default=None, description="person_merged accepted: the person is an alias of this id"
    )
    merged: MergedFacts | None = Field(
        default=None, description="person_absorbed: the facts of the merged lifecycle"
    )


class PersonAliased(BaseModel):
    """An id merged into another (`person_merged`), on the compacted aliases topic.

    Keyed by the alias; the latest record per alias names its survivor (a chain, a into b
    then b into c, republishes a as c's). Written by the survivor's worker in the batch that
    folds the merge, so every reader of the stage changes (the live funnel, sales tools) can
    count one person even when the merge moved nobody (no stage change).
    """

    model_config = ConfigDict(frozen=True)

    alias: str = Field(description="the id merged away")
    survivor: str = Field(description="the person it is counted as from now on")
    merged_at: AwareDatetime = Field(description="occurred_at of the merge")
    event_id: str = Field(description="the event whose fold recorded it (history)")
    sequence: int = Field(description="the survivor's history sequence of that fold")


class DeadLetter(BaseModel):
    """Anything rejected, with enough to find and replay it: the bytes (sealed for the person
    the message key names; for a message whose key names no person, their SHA-256 and where
    they are) and where they came from.

    `error` is one line: why the message is not a valid event, or, for a valid one whose
    `event_id` the person already applied with other content, "event_id e1 reused with
    different content; first seen at history sequence 7".
    """

    model_config = ConfigDict(frozen=True)

    error: str
    topic: str
    partition: int
    offset: int
    key: Base64Bytes | None = None
    value: Base64Bytes
    sealed: bool = Field(
        default=False,
        description="`value` is the rejected bytes sealed (`v1.…`) with the data key of the "
        "person the message key names, so their erasure shreds it too; empty once that person "
        "is erased (the rejected bytes are then not kept)",
    )
    value_sha256: str | None = Field(
        default=None,
        description="for a message whose key names no person (none, not UTF-8, too long): "
        "`value` is empty, as nobody's key can seal the bytes and an erasure could never "
        "reach them; this is the SHA-256 (hex) of the rejected bytes, which stay in `topic` "
        "at `partition`/`offset` as long as that topic retains them",
    )
