"""Web UI, JSON API and the `talaria` command line."""
