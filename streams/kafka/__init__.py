"""Kafka plumbing every role shares: topic names and specs and their creation, readers that
go to the true end of a topic, keyed publishing, the connection preflight, the transactions
probe, and the data keys (`keys`: per-person keys on the keys topic, wrapped by the master
key).

May import: `events`, `lifecycle` (for record types only), `streams.settings`,
`streams.internals`. Never `streams.worker`, `streams.web`, `streams.cli`, `streams.tools`
or `streams.dev`.
"""
