"""CSV exports → inbound events, by a mapping file instead of a conversion script.

A mapping (YAML, validated here) says per input file how one row becomes one or more events:
constants, `{column}` templates, a column with a parse rule (dates), value maps and `when:`
conditions. The mapping only produces events; every decision about them stays in `lifecycle/`.

Imports are re-runnable: every event needs an `event_id` built from its row, so importing the
same rows again yields byte-identical events, which the core treats as duplicates. A row that
cannot be mapped is reported as `FILE:LINE: reason` (field, value, rule) and counted; its
events are all left out, so a row is never half imported.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from events.inbound import KNOWN_TYPES, Event, Profile
from lifecycle.replay import bulk_gc
from streams.tools.files import PROGRESS_BYTES, BadLine, ReadStats

REQUIRED = ("event_id", "type", "person_id", "occurred_at")
OPTIONAL = ("source", "campaign", "reason", "schema_version")
PROFILE = tuple(Profile.model_fields)
#: A value map's `default: skip` (or a mapped value `skip`) leaves the event out of this row.
SKIP = "skip"
EPOCH = {"epoch_s": 1, "epoch_ms": 1_000}
EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)


class MappingError(ValueError):
    """A mapping that cannot be used; the message names the file, the line and the key."""


# --- the mapping file ----------------------------------------------------------------------


def _zone(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use UTC or an IANA name like Europe/Berlin)"
        ) from None
    return name


Zone = Annotated[str | None, AfterValidator(_zone)]


def _template(text: str) -> str:
    Template(text)  # raises ValueError naming the problem
    return text


#: A constant, or a template over columns: `mql-{mql_id}`.
Text = Annotated[str, AfterValidator(_template)]


_TESTS = ("not_empty", "empty", "equals", "not_equals", "in_", "not_in")


class Condition(BaseModel):
    """`when: {column: origin, not_empty: true}`: the event is made only if the test holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    column: str
    not_empty: bool | None = None
    empty: bool | None = None
    equals: str | None = None
    not_equals: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        if sum(getattr(self, k) is not None for k in _TESTS) != 1:
            raise ValueError(
                "give exactly one test: not_empty, empty, equals, not_equals, in, not_in"
            )
        return self

    def describe(self) -> str:
        """`origin not_empty`, `stage in ['won', 'lost']`: for the skipped-rows summary."""
        name = next(k for k in _TESTS if getattr(self, k) is not None)
        value = getattr(self, name)
        shown = "" if value is True else f" {value!r}" if isinstance(value, str) else f" {value}"
        return f"{self.column} {name.rstrip('_')}{shown}"


def _check_format(fmt: str) -> None:
    """A strptime format must be one strptime can use: `%Q` would fail every row."""
    if fmt in ("iso", *EPOCH):
        return
    problem = "" if "%" in fmt else "a strptime format (%d-%m-%Y), iso, epoch_s or epoch_ms"
    if not problem:
        try:
            datetime.strptime("", fmt)
        except ValueError as error:  # "" matches no format; other complaints are the format's
            problem = "" if "does not match format" in str(error) else str(error)
    if problem:
        raise ValueError(f"{fmt!r}: {problem}")


class FieldRule(BaseModel):
    """A field from a column (or a template), optionally mapped and parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str | None = None
    template: Text | None = None
    map: dict[str, str] | None = None
    default: Text | None = Field(
        default=None,
        description="for values not in `map`: `skip` (leave the event out), or a template "
        "(`{column}` keeps the value); without it an unmapped value makes the row bad",
    )
    ignore_case: bool = False
    format: str | list[str] | None = Field(
        default=None,
        description="occurred_at: strptime format(s), iso (default), epoch_s, epoch_ms",
    )
    timezone: Annotated[Zone, Field(description="for times without an offset")] = None

    @field_validator("format")
    @classmethod
    def _usable_formats(cls, value: str | list[str] | None) -> str | list[str] | None:
        for fmt in [value] if isinstance(value, str) else value or []:
            _check_format(fmt)
        return value

    @model_validator(mode="after")
    def _source(self) -> FieldRule:
        if (self.column is None) == (self.template is None):
            raise ValueError("give column: or template: (one of them)")
        if self.default is not None and self.map is None:
            raise ValueError("default: applies to a value map (give map:)")
        return self


def _spec_kind(value: Any) -> str:
    return "rule" if isinstance(value, dict) else "text"


#: A field is a constant or `{column}` template (text), or a rule (a mapping of options).
Spec = Annotated[
    Annotated[Text, Tag("text")] | Annotated[FieldRule, Tag("rule")], Discriminator(_spec_kind)
]


ProfileField = Literal[tuple(Profile.model_fields)]  # type: ignore[valid-type]


def _as_list(value: Any) -> Any:
    """`when:` takes one condition or a list of them (all must hold)."""
    return [value] if isinstance(value, dict) else value


class EventRule(BaseModel):
    """One event per row (unless `when` says no): each key is an event field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Spec | None = Field(default=None, validate_default=True)
    type: Spec
    person_id: Spec
    occurred_at: Spec
    source: Spec | None = None
    campaign: Spec | None = None
    reason: Spec | None = None
    schema_version: Spec | None = None
    profile: dict[ProfileField, Spec] | None = None
    when: Annotated[list[Condition], BeforeValidator(_as_list)] = []

    @model_validator(mode="before")
    @classmethod
    def _flat_profile(cls, data: Any) -> Any:
        """`profile.job_title: "{Title}"` is the same as `profile: {job_title: "{Title}"}`."""
        if not isinstance(data, dict):
            return data
        flat = {k: v for k, v in data.items() if isinstance(k, str) and k.startswith("profile.")}
        if not flat:
            return data
        rest = {k: v for k, v in data.items() if k not in flat}
        profile = dict(rest.get("profile") or {})
        profile.update({k.removeprefix("profile."): v for k, v in flat.items()})
        return {**rest, "profile": profile}

    @field_validator("event_id")
    @classmethod
    def _deterministic_id(cls, value: str | FieldRule | None) -> str | FieldRule | None:
        if value is None:
            raise ValueError(
                'missing: give an id built from the row (e.g. event_id: "mql-{mql_id}"), so a '
                "second import of the same rows changes nothing; a random id would not"
            )
        if isinstance(value, str) and not Template(value).columns:
            raise ValueError(
                f"{value!r} is a constant: every row would get the same id; use a {{column}}"
            )
        return value

    @model_validator(mode="after")
    def _formats(self) -> EventRule:
        for name in (*REQUIRED[:3], *OPTIONAL):
            spec = getattr(self, name)
            if isinstance(spec, FieldRule) and (spec.format or spec.timezone):
                raise ValueError(f"{name}: format and timezone apply to occurred_at only")
        return self

    def conditions(self) -> list[Condition]:
        return self.when


class FileRule(BaseModel):
    """How the rows of the files whose name matches `match` become events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(default="*", description="file name pattern (fnmatch), e.g. mqls*.csv")
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    encoding: str = "utf-8"
    timezone: Zone = None
    events: Annotated[list[EventRule], Field(min_length=1)]

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (utf-8, latin-1, cp1252 …)") from None
        return value


class Mapping(BaseModel):
    """The whole mapping file: file rules tried in order, the first matching one is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    description: str | None = None
    timezone: Zone = Field(default=None, description="for times without an offset")
    order: Literal["file", "time"] = Field(
        default="file", description="time: order every event by occurred_at (stable)"
    )
    files: Annotated[list[FileRule], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _one_file(cls, data: Any) -> Any:
        """A mapping for one kind of file may give `events:` at the top instead of `files:`."""
        if isinstance(data, dict) and "events" in data and "files" not in data:
            top = {k: data[k] for k in ("name", "description", "timezone", "order") if k in data}
            rule = {k: v for k, v in data.items() if k not in top}
            return {**top, "files": [rule]}
        return data

    def rule_for(self, path: Path) -> FileRule:
        for rule in self.files:
            if fnmatch.fnmatch(path.name, rule.match):
                return rule
        patterns = ", ".join(r.match for r in self.files)
        raise MappingError(f"{path}: no file rule of the mapping matches this name ({patterns})")


class _StringLoader(yaml.SafeLoader):
    """Every scalar stays the text it is: `NO` is Norway, `01` stays `01`, `yes` a value.

    Its own resolver table (a copy with only `<<` merges): SafeLoader's is shared by every
    `yaml.safe_load` in the process.
    """

    yaml_implicit_resolvers: ClassVar[dict[Any, list[tuple[str, Any]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag == "tag:yaml.org,2002:merge"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _line_index(root: yaml.Node | None) -> dict[tuple[str | int, ...], int]:
    """Each key path of the document → its 1-based line; `profile.x` keys also as (profile, x)."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value)
                child = (*path, name)
                lines[child] = key.start_mark.line + 1
                if name.startswith("profile."):
                    lines[(*path, "profile", name.removeprefix("profile."))] = lines[child]
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def parse_mapping(text: str, origin: str = "<mapping>") -> Mapping:
    """Validate mapping YAML; raise MappingError naming origin:line and the key path."""
    try:
        root = yaml.compose(text, Loader=_StringLoader)
        data = yaml.load(text, Loader=_StringLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise MappingError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise MappingError(f"{origin}:1: a mapping is a YAML mapping with files: (or events:)")
    try:
        return Mapping.model_validate(data)
    except ValidationError as error:
        lines = _line_index(root)
        shorthand = "files" not in data
        messages = []
        for item in error.errors(include_url=False):
            loc = tuple(p for p in item["loc"] if p not in ("text", "rule", "[key]"))
            if shorthand and loc[:2] == ("files", 0):
                loc = loc[2:]
            line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 1)
            key = ".".join(str(p) for p in loc) or "(top level)"
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "not a known key here (a typo?)"
            elif item["type"] == "literal_error" and "profile" in loc:
                message = f"not a profile field ({', '.join(PROFILE)})"
            messages.append(f"{origin}:{line}: {key}: {message}")
        raise MappingError("\n".join(messages)) from None


def unknown_event_types(mapping: Mapping) -> list[str]:
    """Event types the mapping writes as constants or map values that no upstream schema
    defines (likely typos: the core records such events with no effect)."""
    named: list[str] = []
    for file_rule in mapping.files:
        for rule in file_rule.events:
            spec = rule.type
            if isinstance(spec, str):
                named.append(spec)
            elif spec.map is not None:
                named += [*spec.map.values(), *([spec.default] if spec.default else [])]
    constants = {t for t in named if t not in ("", SKIP) and not Template(t).columns}
    return sorted(constants - KNOWN_TYPES)


def load_mapping(path: str | Path) -> Mapping:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MappingError(f"{path}: cannot read mapping: {error.strerror}") from None
    return parse_mapping(text, str(path))


def columns_mapping(columns: dict[str, str], header: Sequence[str]) -> Mapping:
    """The mapping `send --csv-map FIELD=HEADER` stands for: each event field from its column.

    A field comes from the header named in `columns`, else from a header named like the field;
    times are ISO 8601 with an offset; empty cells are left out.
    """
    present = {h.strip() for h in header}
    fields: dict[str, Any] = {}
    for target in (*REQUIRED, *OPTIONAL, *(f"profile.{p}" for p in PROFILE)):
        name = columns.get(target, target)
        if name in present or target in columns or target in REQUIRED:
            fields[target] = {"column": name}
    return Mapping.model_validate({"events": [fields]})


# --- compiled rules ------------------------------------------------------------------------


class RowProblem(ValueError):
    """Why a row cannot be mapped: the field, the value and the rule."""


_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[^{}]+|[{}]")


class Template:
    """`mql-{mql_id}`: literal text and column values; `{{` and `}}` are literal braces."""

    __slots__ = ("columns", "parts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[tuple[bool, str]] = []  # (is a column, literal or column name)
        for match in _PART.finditer(text):
            token = match.group(0)
            if match.group(1) is not None:
                name = match.group(1).strip()
                if not name:
                    raise ValueError(f"template {text!r}: empty {{}} (name a column)")
                self.parts.append((True, name))
            elif token in ("{", "}"):
                raise ValueError(f"template {text!r}: unmatched {token!r} (write {token * 2})")
            else:
                self.parts.append((False, token[0] if token in ("{{", "}}") else token))
        self.columns = [name for is_column, name in self.parts if is_column]


Row = Sequence[str]
Getter = Callable[[Row], Any]


@dataclass(slots=True)
class _Field:
    name: str
    get: Getter
    required: bool
    where: str  # the column or template, for messages


@dataclass(slots=True)
class _Compiled:
    """One event rule bound to one file's header."""

    index: int
    fields: list[_Field]
    conditions: list[tuple[str, Callable[[Row], bool]]]


class _Skip(Exception):
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
                raise _Skip(f"{name}: {value!r} not in map")
            if default is None:
                known = ", ".join(list(rule.map)[:8]) + (" …" if len(rule.map) > 8 else "")
                raise RowProblem(
                    f"{name}: {value!r} from {where} is not in the value map ({known}); "
                    "add it, or give default: skip or default: '{column}'"
                )
            return default(row)
        if found == SKIP:
            raise _Skip(f"{name}: {value!r} maps to skip")
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


def _compile(mapping: Mapping, rule: FileRule, header: list[str], path: Path) -> list[_Compiled]:
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
        compiled.append(_Compiled(n, fields, conditions))
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


# --- reading -------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportStats(ReadStats):
    """`lines` counts rows read; `bad` the rows left out because they could not be mapped."""

    files: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    @property
    def skipped_rows(self) -> int:
        return self.skipped.total()


@dataclass(slots=True, frozen=True)
class MappedEvent:
    event: Event
    path: str
    line: int


OnError = Callable[[BadLine], None]


def _raise(error: BadLine) -> None:
    raise error


def _rows(path: Path, rule: FileRule, progress: bool) -> Iterator[tuple[int, list[str], str]]:
    """(first line, cells, problem) per record; the header first. Quoted newlines are kept."""
    size = path.stat().st_size
    bar = None
    if progress and size > PROGRESS_BYTES:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(f"mapping {path.name}", total=size)
    undecodable: dict[int, str] = {}
    encoding = _encoding(rule.encoding)

    def lines(handle: Any) -> Iterator[str]:
        done = 0
        for number, raw in enumerate(handle, start=1):
            if bar is not None:
                done += len(raw)
                if number % 20_000 == 0:
                    bar.update(task, completed=done)
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as error:
                undecodable[number] = (
                    f"not valid {rule.encoding} (byte {error.start}: {error.reason}); "
                    "give the file's encoding: in the mapping (latin-1, cp1252 …)"
                )
                yield raw.decode(encoding, errors="replace")

    try:
        with path.open("rb") as handle:
            reader = csv.reader(lines(handle), delimiter=rule.delimiter)
            last = 0
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as error:
                    yield last + 1, [], f"not readable as CSV: {error}"
                    last = reader.line_num
                    continue
                first, last = last + 1, reader.line_num
                problem = next(
                    (undecodable.pop(n) for n in range(first, last + 1) if n in undecodable), ""
                )
                yield first, cells, problem
    finally:
        if bar is not None:
            bar.stop()


def _file_events(
    path: Path, mapping: Mapping, stats: ImportStats, report: OnError, progress: bool
) -> Iterator[tuple[int, list[Event]]]:
    """(line, the row's events) for every row that maps; bad rows are reported."""
    rule = mapping.rule_for(path)
    name = str(path)
    rows = _rows(path, rule, progress)
    header: list[str] | None = None
    for line, cells, problem in rows:
        if problem and header is None:
            raise MappingError(f"{name}:{line}: header: {problem}")
        if cells:
            header = cells
            break
    if header is None:
        raise MappingError(f"{name}: empty file (a header row is needed)")
    compiled = _compile(mapping, rule, header, path)
    width = len(header)
    for line, cells, problem in rows:
        if not problem and (not cells or (len(cells) == 1 and not cells[0].strip())):
            continue  # a blank line
        stats.lines += 1
        stats.files[name] += 1
        if not problem and len(cells) > width:
            problem = f"{len(cells)} fields, the header has {width} (an unquoted delimiter?)"
        if problem:
            stats.bad += 1
            report(BadLine(name, line, problem))
            continue
        if len(cells) < width:
            cells = cells + [""] * (width - len(cells))
        try:
            events = _row_events(cells, compiled, stats, path.name)
        except RowProblem as error:
            stats.bad += 1
            report(BadLine(name, line, str(error)))
            continue
        if events:
            yield line, events


def _row_events(
    cells: Row, compiled: list[_Compiled], stats: ImportStats, file: str
) -> list[Event]:
    events: list[Event] = []
    skipped: list[str] = []
    for rule in compiled:
        failed = next((what for what, holds in rule.conditions if not holds(cells)), None)
        if failed is not None:
            skipped.append(f"{file} events[{rule.index}]: when {failed}")
            continue
        data: dict[str, Any] = {}
        profile: dict[str, Any] = {}
        try:
            for f in rule.fields:
                value = f.get(cells)
                if value == "":
                    if f.required:
                        raise RowProblem(f"{f.name}: empty from {f.where} (it is required)")
                    continue
                if f.name.startswith("profile."):
                    profile[f.name[8:]] = value
                else:
                    data[f.name] = value
        except _Skip as skip:
            skipped.append(f"{file} events[{rule.index}]: {skip}")
            continue
        if profile:
            data["profile"] = profile
        try:
            events.append(Event.model_validate(data))
        except ValidationError as error:
            raise RowProblem(_describe(error)) from None
    if skipped and not events:
        stats.skipped[skipped[0]] += 1
    return events


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in item["loc"])
        value = item.get("input")
        shown = f" (value {value!r})" if isinstance(value, str | int | float) else ""
        parts.append(f"{where}: {item['msg']}{shown}")
    return "; ".join(parts)


def read_mapped(
    paths: Iterable[str | Path],
    mapping: Mapping,
    *,
    stats: ImportStats | None = None,
    on_error: OnError | None = None,
    strict: bool = False,
    progress: bool = False,
    sort_by_time: bool | None = None,
) -> Iterator[Event]:
    """The events of every file's rows: file order, or time order (stable) when asked.

    The same event id given twice is one event if the bodies agree (counted as a duplicate)
    and a bad row if they differ: the id template is not unique per event.
    """
    stats = stats if stats is not None else ImportStats()
    report = _raise if strict else (on_error or stats.errors.append)
    by_time = mapping.order == "time" if sort_by_time is None else sort_by_time
    seen: dict[str, tuple[int, str, int]] = {}  # event id → (body hash, file, line)

    def unique(path: str, line: int, events: list[Event]) -> list[tuple[Event, str]] | None:
        """The row's events not seen before, with their JSON; None if an id is taken."""
        kept: list[tuple[Event, str]] = []
        new: dict[str, tuple[int, str, int]] = {}
        for event in events:
            body = event.model_dump_json(exclude_none=True)
            earlier = seen.get(event.event_id) or new.get(event.event_id)
            if earlier is None:
                kept.append((event, body))
                new[event.event_id] = (hash(body), path, line)
            elif earlier[0] == hash(body):
                stats.duplicates += 1
            else:
                stats.bad += 1
                report(
                    BadLine(
                        path,
                        line,
                        f"event_id {event.event_id!r} was already given to a different event "
                        f"at {earlier[1]}:{earlier[2]} (make the event_id template unique per "
                        "event, e.g. add the type or the date)",
                    )
                )
                return None
        seen.update(new)
        return kept

    def mapped() -> Iterator[tuple[Event, str]]:
        for path in map(Path, paths):
            for line, events in _file_events(path, mapping, stats, report, progress):
                for event, body in unique(str(path), line, events) or ():
                    stats.events[event.type] += 1
                    yield event, body

    if not by_time:
        for event, _ in mapped():
            yield event
        return
    # Held as JSON until sorted: a validated event takes ~8 times the memory of its JSON.
    with bulk_gc():
        held = [(event.occurred_at, body) for event, body in mapped()]
    held.sort(key=lambda pair: pair[0])
    decode = Event.model_validate_json
    for _, body in held:
        yield decode(body)


def _encoding(name: str) -> str:
    """utf-8 files may start with a byte order mark (Excel writes one); it is not a column."""
    return "utf-8-sig" if codecs.lookup(name).name == "utf-8" else name


def read_header(path: Path, delimiter: str = ",", encoding: str = "utf-8") -> list[str]:
    """The first row of a CSV file."""
    try:
        with path.open(newline="", encoding=_encoding(encoding)) as handle:
            return next(csv.reader(handle, delimiter=delimiter), [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise MappingError(f"{path}:1: header: not readable ({error})") from None


def check_files(paths: Iterable[str | Path], mapping: Mapping) -> None:
    """Before any row is read: every file matches a file rule and has the columns it needs."""
    for path in map(Path, paths):
        if not path.is_file():
            raise MappingError(f"{path}: no such file")
        rule = mapping.rule_for(path)
        header = read_header(path, rule.delimiter, rule.encoding)
        if not header:
            raise MappingError(f"{path}: empty file (a header row is needed)")
        _compile(mapping, rule, header, path)
