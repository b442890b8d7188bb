"""ClickHouse read models derived from the event log, and the queries over them."""
