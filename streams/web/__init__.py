"""The HTTP side of a worker: the views and routing a person's request to the worker that
owns it, the change feed (funnel and recent changes), analysts' reports, tokens and scopes,
the published contracts (OpenAPI, AsyncAPI, JSON Schema) and the static dashboard.

May import: `events`, `lifecycle`, `streams.settings`, `streams.internals`,
`streams.kafka`, `streams.worker` (the app's state). Never `streams.cli` or `streams.dev`.
"""
