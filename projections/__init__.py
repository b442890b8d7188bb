"""ClickHouse read models derived from the event log, and the queries over them.

The flow, module by module: `projector` consumes every topic (a `ConsumerLoop`) and hands each
batch to `writer`, which folds it with the pure functions of `fold` (series, jobs, pending
studies) and `journal` (events, audit) and writes through `store`, the one ClickHouse access
layer (chDB in-process or a server; `schema` holds the versioned migrations). `queries` serves
the UI, API and CLI; `rebuild` replays the log into fresh tables and swaps them in. Errors:
`projections.errors`.
"""
