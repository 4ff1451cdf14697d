"""The inbound envelope: every engagement and sales-feedback event on `leadflow.events`.

One model for every `type`, so an unknown type from a newer producer is still a valid envelope
that the core records and ignores, instead of a dead letter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from events.limits import FIRST_YEAR, LAST_YEAR, MAX_ID, MAX_NAME, MAX_SEALED, MAX_TEXT
from events.wire import OCCURRED_AT, YEARS_PROBLEM, JsonInt, JsonTime

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


def _to_utc(value: datetime) -> datetime:
    # One shared tzinfo makes every later comparison and subtraction ~10x cheaper than
    # with the per-value offsets the parser attaches; the instant is unchanged.
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        utc = None
    # From JSON the schema's pattern (events.wire.OCCURRED_AT) already holds, which implies
    # this; from Python (the CSV mapping) this is the check.
    if utc is None or not FIRST_YEAR <= utc.year <= LAST_YEAR:
        raise ValueError(YEARS_PROBLEM)
    return utc


UtcDatetime = Annotated[
    AwareDatetime,
    JsonTime,
    AfterValidator(_to_utc),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": OCCURRED_AT,
            "description": f"RFC 3339 with a time zone, in the years {FIRST_YEAR} to "
            f"{LAST_YEAR} (on {FIRST_YEAR}-01-01 and {LAST_YEAR}-12-31 in UTC: Z or +00:00)",
        }
    ),
]


class EventType(StrEnum):
    """Every event type the core knows. Other values are accepted and have no effect."""

    # marketing engagement
    NEWSLETTER_SIGNUP = "newsletter_signup"
    CONTENT_DOWNLOAD = "content_download"
    WEBINAR_REGISTERED = "webinar_registered"
    WEBINAR_ATTENDED = "webinar_attended"
    EVENT_VISIT = "event_visit"
    FORM_SUBMITTED = "form_submitted"
    EMAIL_CLICKED = "email_clicked"
    PAGE_VIEWED = "page_viewed"
    FREE_TRIAL_STARTED = "free_trial_started"
    DEMO_REQUESTED = "demo_requested"
    CONTACT_SALES = "contact_sales"
    QUOTE_REQUESTED = "quote_requested"
    CHAT_SALES_REQUEST = "chat_sales_request"
    INTENT_SIGNAL = "intent_signal"
    LINKEDIN_CONNECTION = "linkedin_connection"
    APPOINTMENT_SET = "appointment_set"
    PROFILE_UPDATED = "profile_updated"
    UNSUBSCRIBED = "unsubscribed"
    # sales feedback (authoritative)
    SALES_ACCEPTED = "sales_accepted"
    SALES_REJECTED = "sales_rejected"
    OPPORTUNITY_OPENED = "opportunity_opened"
    DEAL_WON = "deal_won"
    DEAL_LOST = "deal_lost"
    # system
    INACTIVITY_TIMEOUT = "inactivity_timeout"
    PERSON_ERASED = "person_erased"
    # identity (a CRM merged two contacts): `person_merged` comes from upstream, keyed by the
    # absorbed person; `person_absorbed` is the hand-off leadflow writes for the survivor
    PERSON_MERGED = "person_merged"
    PERSON_ABSORBED = "person_absorbed"


MARKETING_TYPES = frozenset(
    t
    for t in EventType
    if t
    not in {
        EventType.SALES_ACCEPTED,
        EventType.SALES_REJECTED,
        EventType.OPPORTUNITY_OPENED,
        EventType.DEAL_WON,
        EventType.DEAL_LOST,
        EventType.INACTIVITY_TIMEOUT,
        EventType.PERSON_ERASED,
        EventType.PERSON_MERGED,
        EventType.PERSON_ABSORBED,
    }
)
SALES_TYPES = frozenset(
    {
        EventType.SALES_ACCEPTED,
        EventType.SALES_REJECTED,
        EventType.OPPORTUNITY_OPENED,
        EventType.DEAL_WON,
        EventType.DEAL_LOST,
    }
)
KNOWN_TYPES = frozenset(t.value for t in EventType)


class Profile(BaseModel):
    """What upstream systems know of the person. Personal data: erased on `person_erased`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    email: Text | None = None
    job_title: Text | None = None
    seniority: Name | None = None
    company: Text | None = None
    industry: Name | None = None
    employees: Annotated[int, Field(ge=0, le=10_000_000), JsonInt] | None = None
    country: Name | None = None

    def given(self) -> dict[str, Any]:
        """The fields given, in field order: `model_dump(exclude_none=True)` (no field has a
        serializer) at a fifth of its cost; the core reads it once per event with a profile."""
        return {k: v for k, v in vars(self).items() if v is not None}


class Absorbed(BaseModel):
    """The lifecycle of a person merged into another, as the hand-off (`person_absorbed`)
    carries it to the survivor: every fact the merge rules read (`lifecycle.merge`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    person_id: Id
    stage: Name | None = None
    highest: Name | None = None
    entered_at: dict[Name, UtcDatetime] = Field(default_factory=dict)
    last_activity: UtcDatetime | None = None
    first_touch_source: Name | None = None
    first_touch_at: UtcDatetime | None = None
    lead_source: Name | None = None
    score: Annotated[float, Field(strict=True)] = 0.0  # never `true` or "3"
    score_at: UtcDatetime | None = None
    profile: Profile | None = None
    sla_breached: tuple[Name, ...] = ()
    last_touch_source: Name | None = None
    touches: Annotated[int, Field(ge=0), JsonInt] = 0
    aliases: tuple[Id, ...] = Field(
        default=(), description="ids the absorbed person had absorbed before (chains)"
    )
    erased: Annotated[bool, Field(strict=True)] = False


class Event(BaseModel):
    """The inbound envelope, discriminated by `type`; `event_id` is the idempotency key.

    Per person and forever: the same `event_id` again with the same content (the validated
    fields; key order, ignored fields and the offset of the same instant do not count) is a
    redelivery and changes nothing; with other content it is a conflict and is dead-lettered.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Id
    type: Name
    person_id: Id
    occurred_at: UtcDatetime
    source: Name | None = Field(
        default=None, description="campaign touch type: webinar, tradeshow, form, paid_search …"
    )
    campaign: Text | None = None
    profile: Profile | None = None
    reason: Text | None = Field(default=None, description="why, for sales feedback")
    schema_version: Annotated[int, Field(ge=1, le=1000), JsonInt] = 1
    merged_into: Id | None = Field(
        default=None,
        description="person_merged: the surviving person id (the key is the absorbed one)",
    )
    absorbed: Absorbed | None = Field(
        default=None, description="person_absorbed: the absorbed lifecycle (leadflow writes it)"
    )
    forwarded_via: tuple[Id, ...] | None = Field(
        default=None,
        description=(
            "set by leadflow on an event for an alias (a merged id) re-keyed to its survivor: "
            "the aliases it was sent for, in order"
        ),
    )
    forwarded_personal: Annotated[str, Field(max_length=MAX_SEALED)] | None = Field(
        default=None,
        description=(
            "set by leadflow on an alias's event forwarded to its survivor: the event's "
            "personal fields (profile email, job title, company; reason), sealed with the "
            "key of that alias and survivor on leadflow.keys (destroyed with the survivor's "
            "erasure) instead of in the clear"
        ),
    )
