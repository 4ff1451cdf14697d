"""The mapping file: its YAML, validated with errors that name the file, line and key, and
the rules it holds (per input file, how one row becomes events)."""

from __future__ import annotations

import codecs
import fnmatch
import re
from collections.abc import Sequence
from datetime import UTC, datetime
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

from events.inbound import KNOWN_TYPES, Profile

REQUIRED = ("event_id", "type", "person_id", "occurred_at")
OPTIONAL = ("source", "campaign", "reason", "schema_version")
PROFILE = tuple(Profile.model_fields)
#: A value map's `default: skip` (or a mapped value `skip`) leaves the event out of this row.
SKIP = "skip"
EPOCH = {"epoch_s": 1, "epoch_ms": 1_000}
EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)


class MappingError(ValueError):
    """A mapping that cannot be used; the message names the file, the line and the key."""


# --- templates ------------------------------------------------------------------------------

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
