"""The HTTP views a worker serves, by group, and the pure shapes they answer with
(`person_view`, `funnel_view`, a timeline entry); `streams.web.api.install_api` installs them.
What erasure withholds is the core's rule (`lifecycle.erasure`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from events.codec import InvalidMessage, decode_event
from events.inbound import EventType
from events.limits import MAX_PAYLOAD_BYTES
from events.outbound import HistoryRecord, Reason
from events.wire import parse_time
from lifecycle.evolve import evolve
from lifecycle.policy import Policy
from lifecycle.shredding import (
    SEALED,
    DataKey,
    erased_profile,
    open_text,
    shown_reason,
)
from lifecycle.state import PersonState
from lifecycle.temperature import temperature
from streams.web.access import ADMIN, INGEST, READ
from streams.web.changefeed import ChangeFeed
from streams.web.contracts import RECENT_DEFAULT, RECENT_MAX

if TYPE_CHECKING:
    from streams.web.api import Api
    from streams.worker.app import LeadflowApp

from streams.web.responses import JSON, json_response, problem_response, read_body

_INTEGER = re.compile(r"^-?[0-9]{1,9}$")


def person_view(
    state: PersonState, policy: Policy, now: datetime, key: DataKey | None = None
) -> dict[str, Any]:
    """What `GET /people/{id}` shows: stage facts, sources, temperature, the last reason.

    `key` opens a last reason stored sealed (it quoted personal data). For an alias (an id
    merged into another) only whom it was merged into: its lifecycle continues as the
    survivor's, which lists its aliases.
    """
    if state.merged_into is not None:
        return {
            "person_id": state.person_id,
            "merged_into": state.merged_into,
            "survivor": f"/people/{state.merged_into}",
            "sequence": state.sequence,
            "policy_version": policy.version,
        }
    stage = state.current_stage
    last_reason = state.last_reason
    if last_reason is not None and not state.erased:
        last_reason = Reason(
            rule=last_reason.rule, text=open_text(last_reason.text, key, state.person_id)
        )
    entered = state.entered_at.get(stage) if stage else None
    return {
        "person_id": state.person_id,
        "stage": stage,
        "highest": state.highest,
        "entered_at": state.entered_at,
        "time_in_stage_days": round((now - entered).total_seconds() / 86400, 2)
        if entered
        else None,
        "lead_source": state.lead_source,
        "first_touch_source": state.first_touch_source,
        "last_touch_source": state.last_touch_source,
        "touches": state.touches,
        "temperature": temperature(policy, state.lead_source) if stage else None,
        "last_reason": shown_reason(last_reason, state.erased),
        "last_activity": state.last_activity,
        "score": round(state.score, 2),
        "sequence": state.sequence,
        "sla_breached": state.sla_breached,
        "erased": state.erased,
        "profile": erased_profile(state.profile, state.erased),
        "aliases": state.aliases,
        "policy_version": policy.version,
    }


def funnel_view(feed: ChangeFeed, policy: Policy, *, shadow: bool) -> dict[str, Any]:
    report = feed.funnel.report().to_dict()
    sources = report["conversion_by_source"]
    return {
        "policy_version": policy.version,
        "policy_name": policy.name,
        "shadow": shadow,
        "topic": feed.topic,
        "changes_seen": feed.seen,
        **report,
        "temperature_by_source": {s: temperature(policy, s) for s in sources},
    }


def install_dashboard(app: LeadflowApp, api: Api) -> None:
    """`/`: the static dashboard (open; it asks for a token to show persons)."""
    dashboard = (resources.files("streams.web") / "static" / "index.html").read_bytes()

    @app.page("/")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(dashboard, content_type="text/html")


def install_person_views(app: LeadflowApp, api: Api) -> None:
    """`/people/{id}` and its history (scope `read`), answered by the owning worker."""
    policy = app.policy

    @app.page("/people/{person_id}")
    class Person(View):
        async def get(self, request: Request, person_id: str) -> Response:
            grant, refused = api.authorize(self, request, READ)
            response = refused if refused is not None else await self.answer(request, person_id)
            return api.logged(request, grant, "/people/{person_id}", response, [person_id])

        async def answer(self, request: Request, person_id: str) -> Response:
            partition = api.local_partition(person_id)
            if partition is None:
                return await api.forward(self, request, person_id)
            state = api.state_of(person_id, partition)
            if state is None:
                return problem_response(self, 404, f"no person {person_id!r}")
            key = app.lifecycle.keys.get(person_id)
            return json_response(self, person_view(state, policy, datetime.now(UTC), key))

    @app.page("/people/{person_id}/history")
    class PersonHistory(View):
        async def get(self, request: Request, person_id: str) -> Response:
            grant, refused = api.authorize(self, request, READ)
            response = refused if refused is not None else await self.answer(request, person_id)
            return api.logged(request, grant, "/people/{person_id}/history", response, [person_id])

        async def answer(self, request: Request, person_id: str) -> Response:
            as_of_text = request.query.get("as_of")
            as_of = None
            if as_of_text is not None:  # given, even empty: it must be a time (the schema's)
                try:
                    as_of = parse_time(as_of_text)
                except ValueError as error:
                    return problem_response(self, 422, f"as_of: {error}")
            partition = api.local_partition(person_id)
            if partition is None:
                return await api.forward(self, request, person_id)
            records = await api.history(partition, person_id)
            erased = any(r.erased for r in records)
            if as_of is not None:
                records = [r for r in records if r.event.occurred_at <= as_of]
            body: dict[str, Any] = {
                "person_id": person_id,
                "as_of": as_of,
                "records": [_record_view(r, erased) for r in records],
            }
            if as_of is not None:
                state = PersonState(person_id)
                for record in records:
                    state = evolve(state, record)
                if erased:  # an erasure also hides what the person's profile was
                    state.profile, state.erased = {}, True
                body["state"] = person_view(state, policy, as_of)
            return json_response(self, body)


def install_change_views(app: LeadflowApp, api: Api) -> None:
    """`/changes/recent` (scope `read`) and `/internal/erased`, which workers ask each other."""

    @app.page("/changes/recent")
    class RecentChanges(View):
        async def get(self, request: Request) -> Response:
            grant, refused = api.authorize(self, request, READ)
            if refused is not None:
                return api.logged(request, grant, "/changes/recent", refused)
            limit_text = request.query.get("limit", str(RECENT_DEFAULT))
            if not _INTEGER.match(limit_text) or not 1 <= int(limit_text) <= RECENT_MAX:
                problem = f"limit {limit_text!r}: must be a whole number from 1 to {RECENT_MAX}"
                return problem_response(self, 422, problem)
            limit = int(limit_text)
            recent = list(api.live.recent)[-limit:][::-1]
            erased = await api.erased(request, {c.person_id for c in recent})
            response = self.bytes(
                b"["
                + b",".join(
                    (
                        c.model_copy(
                            update={
                                "reason": Reason(**shown_reason(c.reason, c.person_id in erased))
                            }
                        )
                        if c.person_id in erased or c.reason.text.startswith(SEALED)
                        else c
                    )
                    .model_dump_json()
                    .encode()
                    for c in recent
                )
                + b"]",
                content_type=JSON,
            )
            persons = list(dict.fromkeys(c.person_id for c in recent))
            return api.logged(request, grant, "/changes/recent", response, persons)

    @app.page("/internal/erased")
    class Erased(View):
        """Between workers: which of the posted person ids this worker knows to be erased."""

        async def post(self, request: Request) -> Response:
            # Read scope is enough: it answers what `GET /people/{id}` shows a read token
            # (`erased`), and a worker asks with the token of the read it is answering.
            grant, refused = api.authorize(self, request, READ, ADMIN)
            if refused is not None:
                return api.logged(request, grant, "/internal/erased", refused)
            body = await request.read()
            try:
                persons = orjson.loads(body) if len(body) <= MAX_PAYLOAD_BYTES * 4 else None
            except orjson.JSONDecodeError:
                persons = None
            if not isinstance(persons, list) or not all(isinstance(p, str) for p in persons):
                return problem_response(self, 422, "expected a JSON list of person ids")
            response = json_response(self, sorted(api.erased_here(set(persons))))
            return api.logged(request, grant, "/internal/erased", response, sorted(set(persons)))


def install_policy_views(app: LeadflowApp, api: Api) -> None:
    """`/funnel`, `/policies`, `/policies/{version}`: open, aggregates and definitions only."""
    policy = app.policy

    @app.page("/funnel")
    class FunnelPage(View):
        async def get(self, request: Request) -> Response:
            version = request.query.get("policy")
            if version is None or version == policy.version:
                return json_response(self, funnel_view(api.live, policy, shadow=False))
            if version not in api.shadow_feeds:
                known = [policy.version, *api.shadow_feeds]
                return problem_response(
                    self, 404, f"policy {version} is not running here", known=known
                )
            shadow_policy, feed = api.shadow_feeds[version]
            return json_response(self, funnel_view(feed, shadow_policy, shadow=True))

    @app.page("/policies")
    class Policies(View):
        async def get(self, request: Request) -> Response:
            rows = [_policy_row(policy, "active")]
            rows += [_policy_row(p, "shadow") for p, _ in api.shadow_feeds.values()]
            return json_response(self, rows)

    @app.page("/policies/{version}")
    class PolicyPage(View):
        async def get(self, request: Request, version: str) -> Response:
            candidates = {
                policy.version: policy,
                **{v: p for v, (p, _) in api.shadow_feeds.items()},
            }
            found = candidates.get(version)
            if found is None:
                return problem_response(self, 404, f"no policy {version} in use here")
            return json_response(
                self,
                {
                    **_policy_row(found, "active" if found is policy else "shadow"),
                    "policy": found.model_dump(mode="json"),
                },
            )


def install_ingest(app: LeadflowApp, api: Api) -> None:
    """`POST /events` (scope `ingest`; `admin` for an erasure): 202 once the broker has it."""

    @app.page("/events")
    class Ingest(View):
        async def post(self, request: Request) -> Response:
            grant, refused = api.authorize(self, request, INGEST)
            if refused is not None:
                return refused
            if (request.content_length or 0) > MAX_PAYLOAD_BYTES:
                return problem_response(self, 413, f"body over {MAX_PAYLOAD_BYTES} bytes")
            body = await read_body(request, MAX_PAYLOAD_BYTES)
            if body is None:
                return problem_response(self, 413, f"body over {MAX_PAYLOAD_BYTES} bytes")
            try:
                event = decode_event(body)
            except InvalidMessage as error:
                return problem_response(self, 422, str(error))
            if (
                event.type == EventType.PERSON_ERASED
                and grant is not None
                and not grant.allows(ADMIN)
            ):
                return problem_response(
                    self,
                    403,
                    f"token {grant.name!r} lacks the admin scope an erasure needs",
                    scope=ADMIN,
                )
            delivery = await app.events_topic.send(key=event.person_id.encode(), value=body)
            await delivery  # answer 202 only once the broker has the event
            return json_response(self, {"event_id": event.event_id, "status": "accepted"}, 202)


def _record_view(record: HistoryRecord, erased: bool = False) -> dict[str, Any]:
    """One timeline entry. For an erased person, reason sentences (which can quote a job
    title or a seniority) are withheld; the rule ids and stage facts stay
    (`lifecycle.shredding.shown_reason`)."""
    event = record.event
    changes = [c.model_dump(mode="json") for c in record.changes]
    note = record.note.model_dump() if record.note else None
    for change in changes:
        change["reason"] = shown_reason(change["reason"], erased)
    note = shown_reason(note, erased)
    return {
        "sequence": record.sequence,
        "policy_version": record.policy_version,
        "event": {
            "event_id": event.event_id,
            "type": event.type,
            "occurred_at": event.occurred_at,
            "source": event.source,
            "campaign": event.campaign,
        },
        "changes": changes,
        "sla_breaches": [b.model_dump(mode="json") for b in record.sla_breaches],
        "note": note,
    }


def _policy_row(policy: Policy, role: str) -> dict[str, Any]:
    return {
        "version": policy.version,
        "name": policy.name,
        "role": role,
        "description": policy.description,
    }
