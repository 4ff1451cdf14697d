"""The streaming worker: the Faust app (`app.make_app`, the composition root), the fetched
batch feed, the batch processor and its acks, outputs, recovery at assignment, the dedup
store, the sweeper, shadow policies, dead letters, metrics, and `run` (start a worker).

May import: `events`, `lifecycle`, `streams.settings`, `streams.internals`,
`streams.kafka`. Never `streams.web`, `streams.cli`, `streams.tools` or `streams.dev`; the
HTTP views are installed on the app by `streams.web.api.install_api`, which the worker's
`run` names only by function.
"""
