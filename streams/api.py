"""The HTTP API and dashboard, served by every worker (Faust web views).

Open: `/`, `/healthz`, `/metrics`, `/funnel`, `/policies`, `/reports/…` — aggregates and
definitions only.
Bearer tokens with scopes (`streams.access`): `read` for `/people/…` and `/changes/recent`,
`ingest` for `POST /events` (plus `admin` for a `person_erased` event), `read` or `admin` for
`POST /internal/erased` — anything that shows or writes a person's data. 401 without a known
token, 403 for a token without the scope; every request to a reading route leaves an access
log line (token name, route, person ids, status).

Erasure: what an erased person's data shows is the core's rule (`lifecycle.shredding`): no
profile, reason sentences withheld wherever the API shows them, also in `/changes/recent`,
whose changes come from every partition (the worker asks the others which of the listed
persons they know to be erased). Sentences stored sealed are opened with the person's data
key by the worker that owns them; `/changes/recent` shows them withheld.

A person's requests are answered by the worker that owns their partition: if this worker
does not hold the person, it asks the owner Faust's router names for the key, then any other
worker (the upstream producer's partitioner may differ from Faust's), and answers 404 only
when no worker has them.
"""

from __future__ import annotations

import logging
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
    is_sealed,
    open_record,
    open_text,
    shown_reason,
)
from lifecycle.state import PersonState
from lifecycle.temperature import temperature
from streams.access import ADMIN, INGEST, READ, AccessLog, Grant, bearer
from streams.agent import partition_event
from streams.changefeed import ChangeFeed
from streams.contracts import RECENT_DEFAULT, RECENT_MAX
from streams.internals import writing_for
from streams.outputs import to_json
from streams.reports import install_reports
from streams.topics import iter_to_end

if TYPE_CHECKING:
    from streams.app import LeadflowApp

log = logging.getLogger(__name__)

FORWARDED = "X-Leadflow-Forwarded"
_INTEGER = re.compile(r"^-?[0-9]{1,9}$")
JSON = "application/json"


def _json(view: View, data: Any, status: int = 200) -> Response:
    return view.bytes(to_json(data), content_type=JSON, status=status)


def _problem(view: View, status: int, message: str, **extra: Any) -> Response:
    return _json(view, {"error": message, **extra}, status)


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


class Api:
    """State the views share: the app, the feeds per policy version, the tokens."""

    def __init__(self, app: LeadflowApp, shadows: dict[str, tuple[Policy, str]]) -> None:
        self.app = app
        options = app.settings.aiokafka_kwargs()
        self.live = ChangeFeed(
            app.names.stage_changes, client_options=options, aliases=app.names.aliases
        )
        self.shadow_feeds = {
            version: (policy, ChangeFeed(topic, client_options=options, aliases=app.names.aliases))
            for version, (policy, topic) in shadows.items()
        }
        self.tokens = app.settings.tokens()
        self.access = AccessLog(app.settings.access_log)

    def start(self) -> None:
        self.live.start()
        for _, feed in self.shadow_feeds.values():
            feed.start()

    # -- auth ----------------------------------------------------------------------------------
    def authorize(
        self, view: View, request: Request, *scopes: str
    ) -> tuple[Grant | None, Response | None]:
        """(the caller's grant, None) when its token has one of `scopes`; otherwise the
        refusal to send: 401 without a known token, 403 with a token lacking the scope."""
        if not self.tokens:
            return None, _problem(
                view,
                503,
                "personal data is disabled: set LEADFLOW_API_TOKENS (or LEADFLOW_API_TOKEN) "
                "on the worker",
            )
        presented = bearer(request.headers.get("Authorization", ""))
        grant = self.tokens.identify(presented) if presented is not None else None
        if grant is None:
            response = _problem(view, 401, "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="leadflow"'
            return None, response
        if not any(grant.allows(scope) for scope in scopes):
            needed = " or ".join(scopes)
            response = _problem(
                view, 403, f"token {grant.name!r} lacks the {needed} scope", scope=needed
            )
            response.headers["WWW-Authenticate"] = (
                f'Bearer realm="leadflow", error="insufficient_scope", scope="{" ".join(scopes)}"'
            )
            return grant, response
        return grant, None

    def logged(
        self,
        request: Request,
        grant: Grant | None,
        route: str,
        response: Response,
        persons: list[str] | None = None,
    ) -> Response:
        """`response`, after writing its access-log line (personal-data routes)."""
        self.access.record(
            token=grant.name if grant else None,
            method=request.method,
            route=route,
            status=response.status,
            persons=persons,
            forwarded=bool(request.headers.get(FORWARDED)),
        )
        return response

    # -- persons ---------------------------------------------------------------------------------
    def local_partition(self, person: str) -> int | None:
        for partition, persons in self.app.lifecycle.persons.items():
            if person in persons:
                return partition
        return None

    def _other_hosts(self, person: str | None = None) -> list[str]:
        """Other workers' URLs: the owner of `person` first (when given), then the rest."""
        app = self.app
        hosts: list[str] = []
        if person is not None:
            try:
                hosts.append(str(app.router.key_store("persons", person.encode())).rstrip("/"))
            except Exception:  # no assignment yet, or no such table metadata
                log.debug("router has no owner for %s", person)
        try:
            hosts += [str(h).rstrip("/") for h in app.router.table_metadata("persons")]
        except Exception:
            log.debug("router has no table metadata")
        others: list[str] = []
        for host in hosts:
            if host != str(app.conf.canonical_url).rstrip("/") and host not in others:
                others.append(host)
        return others

    @staticmethod
    def _forward_headers(request: Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        headers[FORWARDED] = "1"
        return headers

    def erased_here(self, persons: set[str]) -> set[str]:
        """Those of `persons` this worker holds and knows to be erased."""
        erased = set()
        for person in persons:
            partition = self.local_partition(person)
            if partition is not None:
                state = self.state_of(person, partition)
                if state is not None and state.erased:
                    erased.add(person)
        return erased

    async def erased(self, request: Request, persons: set[str]) -> set[str]:
        """Erased persons among `persons`: this worker's own, and the other workers' answer
        (`POST /internal/erased`) for the persons it does not hold."""
        erased = self.erased_here(persons)
        remote = sorted(p for p in persons if self.local_partition(p) is None)
        if not remote or request.headers.get(FORWARDED):
            return erased
        headers = self._forward_headers(request)
        for host in self._other_hosts():
            try:
                async with self.app.http_client.post(
                    f"{host}/internal/erased", data=to_json(remote), headers=headers
                ) as response:
                    if response.status == 200:
                        erased.update(p for p in await response.json() if p in persons)
            except Exception as error:
                log.warning("asking %s for erasures failed: %s", host, error)
        return erased

    async def forward(self, view: View, request: Request, person: str) -> Response:
        """Ask the owner, then every other worker; 404 when none holds the person."""
        if request.headers.get(FORWARDED):
            return _problem(view, 404, f"no person {person!r}")
        app = self.app
        headers = self._forward_headers(request)
        for host in self._other_hosts(person):
            url = f"{host}{request.rel_url}"
            try:
                async with app.http_client.get(url, headers=headers) as response:
                    if response.status == 404:
                        continue
                    body = await response.read()
                    return view.bytes(body, content_type=JSON, status=response.status)
            except Exception as error:
                log.warning("forwarding to %s failed: %s", host, error)
        return _problem(view, 404, f"no person {person!r}")

    def state_of(self, person: str, partition: int) -> PersonState | None:
        """The person's current state on this worker (cache, else table)."""
        app = self.app
        with writing_for(partition_event(app, app.names.events, partition)):
            return app.lifecycle.state(person, partition)

    async def history(self, partition: int, person: str) -> list[HistoryRecord]:
        """The person's history records, in order, read from their history partition."""
        key = person.encode()
        records = []
        async for record in iter_to_end(
            self.app.settings.bootstrap,
            self.app.names.history,
            partitions=[partition],
            client_options=self.app.settings.aiokafka_kwargs(),
        ):
            if record.key == key:
                if is_sealed(record.value):
                    data = open_record(
                        orjson.loads(record.value), self.app.lifecycle.keys.get(person)
                    )
                    records.append(HistoryRecord.model_validate(data))
                else:
                    records.append(HistoryRecord.model_validate_json(record.value))
        return records


def install_api(app: LeadflowApp, shadows: dict[str, tuple[Policy, str]] | None = None) -> Api:
    """Hang the API and the dashboard on `app`; returns the shared state (feeds, auth)."""
    api = Api(app, shadows or {})
    policy = app.policy
    dashboard = (resources.files("streams") / "static" / "index.html").read_bytes()

    @app.task
    async def start_feeds() -> None:
        api.start()

    @app.page("/")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(dashboard, content_type="text/html")

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
                return _problem(self, 404, f"no person {person_id!r}")
            key = app.lifecycle.keys.get(person_id)
            return _json(self, person_view(state, policy, datetime.now(UTC), key))

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
                    return _problem(self, 422, f"as_of: {error}")
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
            return _json(self, body)

    @app.page("/changes/recent")
    class RecentChanges(View):
        async def get(self, request: Request) -> Response:
            grant, refused = api.authorize(self, request, READ)
            if refused is not None:
                return api.logged(request, grant, "/changes/recent", refused)
            limit_text = request.query.get("limit", str(RECENT_DEFAULT))
            if not _INTEGER.match(limit_text) or not 1 <= int(limit_text) <= RECENT_MAX:
                problem = f"limit {limit_text!r}: must be a whole number from 1 to {RECENT_MAX}"
                return _problem(self, 422, problem)
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
                return _problem(self, 422, "expected a JSON list of person ids")
            response = _json(self, sorted(api.erased_here(set(persons))))
            return api.logged(request, grant, "/internal/erased", response, sorted(set(persons)))

    @app.page("/funnel")
    class FunnelPage(View):
        async def get(self, request: Request) -> Response:
            version = request.query.get("policy")
            if version is None or version == policy.version:
                return _json(self, funnel_view(api.live, policy, shadow=False))
            if version not in api.shadow_feeds:
                known = [policy.version, *api.shadow_feeds]
                return _problem(self, 404, f"policy {version} is not running here", known=known)
            shadow_policy, feed = api.shadow_feeds[version]
            return _json(self, funnel_view(feed, shadow_policy, shadow=True))

    @app.page("/policies")
    class Policies(View):
        async def get(self, request: Request) -> Response:
            rows = [_policy_row(policy, "active")]
            rows += [_policy_row(p, "shadow") for p, _ in api.shadow_feeds.values()]
            return _json(self, rows)

    @app.page("/policies/{version}")
    class PolicyPage(View):
        async def get(self, request: Request, version: str) -> Response:
            candidates = {
                policy.version: policy,
                **{v: p for v, (p, _) in api.shadow_feeds.items()},
            }
            found = candidates.get(version)
            if found is None:
                return _problem(self, 404, f"no policy {version} in use here")
            return _json(
                self,
                {
                    **_policy_row(found, "active" if found is policy else "shadow"),
                    "policy": found.model_dump(mode="json"),
                },
            )

    @app.page("/events")
    class Ingest(View):
        async def post(self, request: Request) -> Response:
            grant, refused = api.authorize(self, request, INGEST)
            if refused is not None:
                return refused
            if (request.content_length or 0) > MAX_PAYLOAD_BYTES:
                return _problem(self, 413, f"body over {MAX_PAYLOAD_BYTES} bytes")
            body = await read_body(request, MAX_PAYLOAD_BYTES)
            if body is None:
                return _problem(self, 413, f"body over {MAX_PAYLOAD_BYTES} bytes")
            try:
                event = decode_event(body)
            except InvalidMessage as error:
                return _problem(self, 422, str(error))
            if (
                event.type == EventType.PERSON_ERASED
                and grant is not None
                and not grant.allows(ADMIN)
            ):
                return _problem(
                    self,
                    403,
                    f"token {grant.name!r} lacks the admin scope an erasure needs",
                    scope=ADMIN,
                )
            delivery = await app.events_topic.send(key=event.person_id.encode(), value=body)
            await delivery  # answer 202 only once the broker has the event
            return _json(self, {"event_id": event.event_id, "status": "accepted"}, 202)

    del Dashboard, Person, PersonHistory, RecentChanges, Erased, FunnelPage, Policies, PolicyPage
    del Ingest
    install_reports(app)  # /reports/calibration, /reports/cohorts (streams/reports.py)
    return api


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes.

    One `content.read(n)` returns only what has arrived so far (a body sent in chunks, or
    in several TCP segments, came back cut short and was answered 422 as broken JSON).
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


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
