"""`python -m ingest ...`: the intake commands without the rest of the `talaria` CLI."""

from ingest.cli import ingest_app

ingest_app(prog_name="talaria ingest")
