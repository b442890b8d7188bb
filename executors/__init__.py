"""Command consumers: processing modules, dispatch targets, notifications, retention."""
