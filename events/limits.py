"""Size limits on the wire, in one place so errors and docs quote the same numbers."""

from datetime import UTC, datetime

MAX_ID = 256
MAX_NAME = 64
MAX_TEXT = 1024
MAX_PAYLOAD_BYTES = 64 * 1024

#: The range of `occurred_at` accepted: beyond it, deadline arithmetic (window + SLA days)
#: overflows Python's datetime, which would stop the worker instead of rejecting one event.
EARLIEST_OCCURRED_AT = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_OCCURRED_AT = datetime(3000, 1, 1, tzinfo=UTC)
