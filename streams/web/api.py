"""The HTTP API and dashboard, served by every worker (Faust web views).

Open: `/`, `/healthz`, `/metrics`, `/funnel`, `/policies`, `/reports/…` — aggregates and
definitions only.
Bearer tokens with scopes (`streams.web.access`): `read` for `/people/…` and `/changes/recent`,
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
from typing import TYPE_CHECKING

import orjson
from faust.web import Request, Response, View

from events.outbound import HistoryRecord
from lifecycle.policy import Policy
from lifecycle.shredding import is_sealed, open_record
from lifecycle.state import PersonState
from streams.internals import writing_for
from streams.kafka.readers import iter_to_end
from streams.web import views
from streams.web.access import AccessLog, Grant, bearer
from streams.web.changefeed import ChangeFeed
from streams.web.reports import install_reports
from streams.web.responses import JSON, problem_response
from streams.worker.agent import partition_event
from streams.worker.outputs import to_json

if TYPE_CHECKING:
    from streams.worker.app import LeadflowApp

log = logging.getLogger(__name__)

FORWARDED = "X-Leadflow-Forwarded"


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
            return None, problem_response(
                view,
                503,
                "personal data is disabled: set LEADFLOW_API_TOKENS (or LEADFLOW_API_TOKEN) "
                "on the worker",
            )
        presented = bearer(request.headers.get("Authorization", ""))
        grant = self.tokens.identify(presented) if presented is not None else None
        if grant is None:
            response = problem_response(view, 401, "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="leadflow"'
            return None, response
        if not any(grant.allows(scope) for scope in scopes):
            needed = " or ".join(scopes)
            response = problem_response(
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
            return problem_response(view, 404, f"no person {person!r}")
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
        return problem_response(view, 404, f"no person {person!r}")

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

    @app.task
    async def start_feeds() -> None:
        api.start()

    views.install_dashboard(app, api)
    views.install_person_views(app, api)
    views.install_change_views(app, api)
    views.install_policy_views(app, api)
    views.install_ingest(app, api)
    install_reports(app)  # /reports/calibration, /reports/cohorts (streams/web/reports.py)
    return api
