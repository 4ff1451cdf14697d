"""Size limits on the wire, in one place so errors and docs quote the same numbers."""

MAX_ID = 256
MAX_NAME = 64
MAX_TEXT = 1024
#: A sealed personal part (`forwarded_personal`): base64 of its fields (each at most MAX_TEXT)
MAX_SEALED = 8 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024

#: The years of `occurred_at` accepted, as written (in the event's own offset, so the JSON
#: Schema's pattern states the same limit): far beyond them, deadline arithmetic (window +
#: SLA days) overflows Python's datetime, which would stop the worker instead of rejecting
#: one event.
FIRST_YEAR = 1900
LAST_YEAR = 2999
