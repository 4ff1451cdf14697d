"""Size limits on the wire, in one place so errors and docs quote the same numbers."""

MAX_ID = 256
MAX_NAME = 64
MAX_TEXT = 1024
MAX_PAYLOAD_BYTES = 64 * 1024
