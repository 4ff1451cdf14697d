"""A mapping's rules compiled against one file's header: a getter per event field (template,
parse rule, value map), and each `when:` condition as a test of a row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from streams.tools.mapping.spec import (
    EPOCH,
    EPOCH_START,
    OPTIONAL,
    REQUIRED,
    SKIP,
    Condition,
    FieldRule,
    FileRule,
    Mapping,
    MappingError,
    Template,
)

# --- compiled rules ------------------------------------------------------------------------


class RowProblem(ValueError):
    """Why a row cannot be mapped: the field, the value and the rule."""


Row = Sequence[str]
Getter = Callable[[Row], Any]


@dataclass(slots=True)
class _Field:
    name: str
    get: Getter
    required: bool
    where: str  # the column or template, for messages


@dataclass(slots=True)
class CompiledEvent:
    """One event rule bound to one file's header."""

    index: int
    fields: list[_Field]
    conditions: list[tuple[str, Callable[[Row], bool]]]


class SkipRow(Exception):
    """The event is left out of this row (a value map's `skip`)."""


def _cell(i: int) -> Getter:
    return lambda row: row[i].strip()


def _text_getter(template: Template, at: dict[str, int]) -> Getter:
    parts = [(at[name] if is_column else None, name) for is_column, name in template.parts]
    if len(parts) == 1 and parts[0][0] is not None:
        return _cell(parts[0][0])
    if all(i is None for i, _ in parts):
        constant = "".join(text for _, text in parts)
        return lambda row: constant

    def render(row: Row) -> str:
        out = []
        for i, text in parts:
            if i is None:
                out.append(text)
            else:
                value = row[i].strip()
                if not value:
                    return ""  # a template over an empty column is empty, not "mql-"
                out.append(value)
        return "".join(out)

    return render


def _mapped(rule: FieldRule, raw: Getter, at: dict[str, int], name: str) -> Getter:
    assert rule.map is not None
    fold = str.casefold if rule.ignore_case else (lambda s: s)
    table = {fold(k.strip()): v for k, v in rule.map.items()}
    default = None if rule.default in (None, SKIP) else _text_getter(Template(rule.default), at)
    where = f"column {rule.column!r}" if rule.column else f"template {rule.template!r}"

    def get(row: Row) -> str:
        value = raw(row)
        if value == "":
            return ""
        found = table.get(fold(value))
        if found is None:
            if rule.default == SKIP:
                raise SkipRow(f"{name}: {value!r} not in map")
            if default is None:
                known = ", ".join(list(rule.map)[:8]) + (" …" if len(rule.map) > 8 else "")
                raise RowProblem(
                    f"{name}: {value!r} from {where} is not in the value map ({known}); "
                    "add it, or give default: skip or default: '{column}'"
                )
            return default(row)
        if found == SKIP:
            raise SkipRow(f"{name}: {value!r} maps to skip")
        return found

    return get


def _time_getter(
    rule: FieldRule | None, text: Getter, zone: tzinfo | None, where: str
) -> Callable[[Row], datetime | str]:
    formats: list[str] = []
    if rule is not None and rule.format is not None:
        formats = [rule.format] if isinstance(rule.format, str) else list(rule.format)
    formats = formats or ["iso"]
    shown = " or ".join(repr(f) for f in formats)

    def parse(value: str) -> datetime:
        for fmt in formats:
            try:
                if fmt == "iso":
                    return datetime.fromisoformat(value)
                if fmt in EPOCH:
                    if value.isdigit():  # exact: no float rounding of milliseconds
                        return EPOCH_START + timedelta(milliseconds=int(value) * 1000 // EPOCH[fmt])
                    return datetime.fromtimestamp(float(value) / EPOCH[fmt], UTC)
                return datetime.strptime(value, fmt)
            except (ValueError, OverflowError, OSError):
                continue
        raise RowProblem(f"occurred_at: {value!r} from {where} does not match {shown}")

    def get(row: Row) -> datetime | str:
        value = text(row)
        if value == "":
            return ""
        moment = parse(value)
        if moment.tzinfo is None:
            if zone is None:
                raise RowProblem(
                    f"occurred_at: {value!r} from {where} has no time zone, and the mapping "
                    "gives none (add timezone: UTC, or the zone of the export)"
                )
            moment = moment.replace(tzinfo=zone)
        return moment

    return get


def _condition(cond: Condition, at: dict[str, int]) -> Callable[[Row], bool]:
    i = at[cond.column.strip()]
    if cond.not_empty is not None:
        want = cond.not_empty
        return lambda row: bool(row[i].strip()) == want
    if cond.empty is not None:
        want = cond.empty
        return lambda row: (not row[i].strip()) == want
    if cond.equals is not None:
        equals = cond.equals
        return lambda row: row[i].strip() == equals
    if cond.not_equals is not None:
        not_equals = cond.not_equals
        return lambda row: row[i].strip() != not_equals
    if cond.in_ is not None:
        members = frozenset(cond.in_)
        return lambda row: row[i].strip() in members
    excluded = frozenset(cond.not_in or ())
    return lambda row: row[i].strip() not in excluded


def _columns_of(spec: str | FieldRule | None) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return Template(spec).columns
    names = [spec.column.strip()] if spec.column else Template(spec.template or "").columns
    if spec.default not in (None, SKIP):
        names += Template(spec.default).columns
    return names


def compile_rules(
    mapping: Mapping, rule: FileRule, header: list[str], path: Path
) -> list[CompiledEvent]:
    at: dict[str, int] = {}
    for i, name in enumerate(header):
        at.setdefault(name.strip(), i)
    zone_name = rule.timezone or mapping.timezone
    file_zone = ZoneInfo(zone_name) if zone_name else None
    compiled = []
    for n, event in enumerate(rule.events):
        specs: list[tuple[str, str | FieldRule | None]] = [
            (name, getattr(event, name)) for name in (*REQUIRED, *OPTIONAL)
        ]
        specs += [(f"profile.{k}", v) for k, v in (event.profile or {}).items()]
        needed = [c for _, spec in specs for c in _columns_of(spec)]
        needed += [c.column.strip() for c in event.conditions()]
        missing = sorted({c for c in needed if c not in at})
        if missing:
            shown = ", ".join(repr(h) for h in header[:20])
            raise MappingError(
                f"{path}: events[{n}] needs column(s) {', '.join(map(repr, missing))} that the "
                f"header does not have (it has {shown})"
            )
        fields: list[_Field] = []
        for name, spec in specs:
            if spec is None:
                continue
            try:
                get = _getter(name, spec, at, file_zone)
            except ValueError as error:
                raise MappingError(f"{path}: events[{n}].{name}: {error}") from None
            fields.append(_Field(name, get, name in REQUIRED, _where(spec)))
        conditions = [(c.describe(), _condition(c, at)) for c in event.conditions()]
        compiled.append(CompiledEvent(n, fields, conditions))
    return compiled


def _where(spec: str | FieldRule) -> str:
    if isinstance(spec, str):
        return f"template {spec!r}"
    return f"column {spec.column!r}" if spec.column else f"template {spec.template!r}"


def _getter(
    name: str, spec: str | FieldRule, at: dict[str, int], file_zone: tzinfo | None
) -> Getter:
    rule = spec if isinstance(spec, FieldRule) else None
    where = _where(spec)
    if rule is None:
        assert isinstance(spec, str)
        text = _text_getter(Template(spec), at)
    else:
        column = (
            "{" + rule.column.replace("{", "{{").replace("}", "}}") + "}" if rule.column else ""
        )
        text = _text_getter(Template(rule.template or column), at)
        if rule.map is not None:
            text = _mapped(rule, text, at, name)
    if name != "occurred_at":
        return text
    zone = ZoneInfo(rule.timezone) if rule is not None and rule.timezone else file_zone
    return _time_getter(rule, text, zone, where)
