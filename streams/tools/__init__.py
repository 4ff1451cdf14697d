"""Operator tools that read or write topics and files without a worker: tail, export of
history, reconcile (gaps: inputs committed but never applied), file readers, the CSV mapping
engine, and the sharded replay.

May import: `events`, `lifecycle`, `streams.settings`, `streams.kafka`. Never
`streams.worker`, `streams.web`, `streams.cli` or `streams.dev`.
"""
