"""The backbone every Talaria service shares: events, the Kafka log, blob stores, settings."""
