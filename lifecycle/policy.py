"""The policy: the lead definition sales and marketing agreed on, as a validated YAML file.

Its version is a hash of its validated content, so reformatting or comments do not change it
but any rule change does. Errors name the file, the key path and the line.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from events.inbound import KNOWN_TYPES, EventType
from lifecycle.stages import Stage

PRESETS = ("default", "seed", "growth", "mature")

#: Longest window a policy may set (100 years): event times are limited to 1900–2999, so
#: every deadline stays inside what `datetime` can hold.
MAX_DAYS = 36_500


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names file, key and line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Icp(_Strict):
    """Ideal customer profile. Empty lists mean "any"; `unknown_passes` decides missing data."""

    industries: list[str] = []
    countries: list[str] = []
    employees_min: int | None = Field(default=None, ge=0)
    employees_max: int | None = Field(default=None, ge=0)
    unknown_passes: bool = True

    @model_validator(mode="after")
    def _range(self) -> Icp:
        if (
            self.employees_min is not None
            and self.employees_max is not None
            and self.employees_min > self.employees_max
        ):
            raise ValueError("employees_min is greater than employees_max")
        return self


class Ucp(_Strict):
    """Unacceptable customer profile: such contacts never reach lead or mql."""

    email_domains: list[str] = []
    industries: list[str] = []
    countries: list[str] = []
    title_keywords: list[str] = []


class DecisionMakers(_Strict):
    """Who counts as a decision maker or influencer: a seniority or a title keyword."""

    required: bool = True
    seniorities: list[str] = ["c_level", "vp", "director", "head", "manager", "owner"]
    title_keywords: list[str] = ["chief", "vp", "vice president", "director", "head of"]
    unknown_passes: bool = True


class Scoring(_Strict):
    """Optional simple scoring: weights per event type, a threshold to mql, a half-life decay."""

    weights: dict[str, float]
    threshold: float = Field(gt=0)
    half_life_days: float | None = Field(default=None, gt=0, le=MAX_DAYS)


class Temperature(_Strict):
    """Hot / warm / cold from the lead source's measured conversion rate (mql → customer)."""

    hot: float = Field(ge=0, le=1)
    warm: float = Field(ge=0, le=1)
    source_conversion: dict[str, float] = {}
    default_conversion: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _order(self) -> Temperature:
        if self.warm > self.hot:
            raise ValueError("warm threshold is above the hot threshold")
        return self


_SALES_TRIGGERS = {
    EventType.SALES_ACCEPTED.value: "accept",
    EventType.SALES_REJECTED.value: "reject",
    EventType.OPPORTUNITY_OPENED.value: "open_opportunity",
    EventType.DEAL_WON.value: "win",
    EventType.DEAL_LOST.value: "lose",
}

#: Types that never count as activity for the inactivity window, whatever the policy says.
_NOT_ACTIVITY = {
    EventType.PROFILE_UPDATED.value,
    EventType.UNSUBSCRIBED.value,
    EventType.INACTIVITY_TIMEOUT.value,
    EventType.PERSON_ERASED.value,
}


def _lower(values: list[str]) -> frozenset[str]:
    return frozenset(v.lower() for v in values)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A policy's lists as lookup sets and its event types mapped to machine triggers."""

    triggers: dict[str, str]
    activity: frozenset[str]
    not_a_lead: frozenset[str]
    gated: frozenset[str]
    allowed: frozenset[str] | None
    icp_industries: frozenset[str]
    icp_countries: frozenset[str]
    ucp_domains: frozenset[str]
    ucp_industries: frozenset[str]
    ucp_countries: frozenset[str]
    ucp_titles: tuple[str, ...]
    icp_unknown_passes: bool
    employees_min: int | None
    employees_max: int | None
    dm_required: bool
    dm_seniorities: frozenset[str]
    dm_titles: tuple[str, ...]
    dm_unknown_passes: bool
    timeout_stages: frozenset[str]
    weights: dict[str, float]
    # Scalars decide() reads on every event, bound once: a frozen dataclass slot is cheaper to
    # read than the pydantic model's nested attributes (policy.scoring.threshold …).
    version: str
    name: str
    sla_days: dict[str, float]
    inactivity_window: timedelta
    threshold: float
    half_life_days: float | None

    @classmethod
    def of(cls, policy: Policy) -> Compiled:
        triggers = dict(_SALES_TRIGGERS)
        for event_type in policy.subscribe_actions:
            triggers[event_type] = "subscribe"
        for event_type in policy.interest_actions:
            triggers[event_type] = "show_interest"
        for event_type in policy.hand_raises:
            triggers[event_type] = "raise_hand"
        activity = (KNOWN_TYPES | set(triggers)) - _NOT_ACTIVITY - set(policy.not_a_lead)
        return cls(
            triggers=triggers,
            activity=frozenset(activity),
            not_a_lead=frozenset(policy.not_a_lead),
            gated=_lower(policy.gated_sources),
            allowed=None if policy.allowed_sources is None else _lower(policy.allowed_sources),
            icp_industries=_lower(policy.icp.industries),
            icp_countries=_lower(policy.icp.countries),
            ucp_domains=_lower(policy.ucp.email_domains),
            ucp_industries=_lower(policy.ucp.industries),
            ucp_countries=_lower(policy.ucp.countries),
            ucp_titles=tuple(_lower(policy.ucp.title_keywords)),
            icp_unknown_passes=policy.icp.unknown_passes,
            employees_min=policy.icp.employees_min,
            employees_max=policy.icp.employees_max,
            dm_required=policy.decision_makers.required,
            dm_seniorities=_lower(policy.decision_makers.seniorities),
            dm_titles=tuple(_lower(policy.decision_makers.title_keywords)),
            dm_unknown_passes=policy.decision_makers.unknown_passes,
            timeout_stages=frozenset(policy.timeout_stages),
            weights=dict(policy.scoring.weights) if policy.scoring else {},
            version=policy.version,
            name=policy.name,
            sla_days=dict(policy.sla_days),
            inactivity_window=policy.inactivity_window,
            threshold=policy.scoring.threshold if policy.scoring else math.inf,
            half_life_days=policy.scoring.half_life_days if policy.scoring else None,
        )


class Policy(_Strict):
    """The whole lead definition. Build with `load_policy` or `load_preset`."""

    name: str
    description: str = ""
    icp: Icp = Icp()
    ucp: Ucp = Ucp()
    decision_makers: DecisionMakers = DecisionMakers()
    subscribe_actions: list[str] = [EventType.NEWSLETTER_SIGNUP.value]
    interest_actions: list[str]
    hand_raises: list[str]
    not_a_lead: list[str] = []
    gated_sources: list[str] = []
    allowed_sources: list[str] | None = Field(
        default=None, description="when set, every source not listed is gated (mature companies)"
    )
    scoring: Scoring | None = None
    inactivity_days: float = Field(default=90, gt=0, le=MAX_DAYS)
    timeout_stages: list[Stage] = ["lead", "mql"]
    sla_days: dict[Stage, Annotated[float, Field(gt=0, le=MAX_DAYS)]] = {}
    temperature: Temperature | None = None

    @model_validator(mode="after")
    def _no_overlap(self) -> Policy:
        lists = {
            "subscribe_actions": self.subscribe_actions,
            "interest_actions": self.interest_actions,
            "hand_raises": self.hand_raises,
            "not_a_lead": self.not_a_lead,
        }
        seen: dict[str, str] = {}
        for key, types in lists.items():
            for event_type in types:
                if event_type in seen:
                    raise ValueError(f"{event_type} is listed in both {seen[event_type]} and {key}")
                seen[event_type] = key
        if "customer" in self.timeout_stages:
            raise ValueError("timeout_stages: customer is terminal and cannot time out")
        return self

    # cached_property values live in the instance __dict__: plain attribute reads on the
    # per-event path (pydantic private attributes go through a slow __getattr__).
    @cached_property
    def version(self) -> str:
        """Content hash of the validated policy: the `policy_version` on every decision."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @cached_property
    def inactivity_window(self) -> timedelta:
        return timedelta(days=self.inactivity_days)

    @cached_property
    def compiled(self) -> Compiled:
        """Lookup sets built once, so the per-event path does no list scans or lowercasing."""
        return Compiled.of(self)

    def unknown_event_types(self) -> list[str]:
        """Event types named by the policy that no upstream schema defines (likely typos)."""
        named = [*self.subscribe_actions, *self.interest_actions, *self.hand_raises]
        named += self.not_a_lead
        if self.scoring:
            named += list(self.scoring.weights)
        return sorted({t for t in named if t not in KNOWN_TYPES})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
                lines[child] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def parse_policy(text: str, origin: str = "<policy>") -> Policy:
    """Validate policy YAML text; raise PolicyError naming origin:line and the key path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise PolicyError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}:1: a policy is a mapping of keys (name, interest_actions, …)")
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        index = _line_index(text)
        messages = []
        for item in error.errors(include_url=False):
            loc = tuple(item["loc"])
            line = next((index[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in index), 1)
            key = ".".join(str(p) for p in loc) or "(top level)"
            messages.append(f"{origin}:{line}: {key}: {item['msg']}")
        raise PolicyError("\n".join(messages)) from None


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(f"{path}: cannot read policy: {error.strerror}") from None
    return parse_policy(text, str(path))


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise PolicyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(resources.files("lifecycle") / "policies" / f"{name}.yaml"))


def load_preset(name: str) -> Policy:
    return load_policy(preset_path(name))


def named_policy(value: str | Path) -> Policy:
    """A policy given as a file path or a preset name (as `--shadow` and `--against` take)."""
    if Path(value).is_file():
        return load_policy(value)
    if str(value) in PRESETS:
        return load_preset(str(value))
    raise PolicyError(f"{value}: no such policy file, and not a preset ({', '.join(PRESETS)})")


def resolve_policy(path: str | Path | None = None, preset: str | None = None) -> Policy:
    """The policy a command runs with: a file, a named preset, or the default preset."""
    if path is not None and preset is not None:
        raise PolicyError("give either a policy file or a preset, not both")
    if path is not None:
        return load_policy(path)
    return load_preset(preset or "default")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def policy_changes(a: Policy, b: Policy) -> list[tuple[str, Any, Any]]:
    """(key path, before, after) for every rule that differs between two policies, in key
    order: what `policy diff` prints and what `calibrate` proposes to change."""
    fa, fb = _flatten(a.model_dump(mode="json")), _flatten(b.model_dump(mode="json"))
    return [
        (k, fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)
    ]
