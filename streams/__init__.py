"""Stream processing: series and study completion, the rule language, routing decisions."""
