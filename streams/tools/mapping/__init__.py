"""CSV exports → inbound events, by a mapping file instead of a conversion script.

A mapping (YAML, validated here) says per input file how one row becomes one or more events:
constants, `{column}` templates, a column with a parse rule (dates), value maps and `when:`
conditions. The mapping only produces events; every decision about them stays in `lifecycle/`.

Imports are re-runnable: every event needs an `event_id` built from its row, so importing the
same rows again yields byte-identical events, which the core treats as duplicates. A row that
cannot be mapped is reported as `FILE:LINE: reason` (field, value, rule) and counted; its
events are all left out, so a row is never half imported.

`spec` holds the mapping file and its validation, `compiled` the rules compiled against a
file's header, `reading` the rows read into events. This package's names are the API.
"""

from streams.tools.mapping.compiled import RowProblem
from streams.tools.mapping.reading import (
    ImportStats,
    MappedEvent,
    check_files,
    read_header,
    read_mapped,
)
from streams.tools.mapping.spec import (
    Mapping,
    MappingError,
    Template,
    columns_mapping,
    load_mapping,
    parse_mapping,
    unknown_event_types,
)

__all__ = [
    "ImportStats",
    "MappedEvent",
    "Mapping",
    "MappingError",
    "RowProblem",
    "Template",
    "check_files",
    "columns_mapping",
    "load_mapping",
    "parse_mapping",
    "read_header",
    "read_mapped",
    "unknown_event_types",
]
