"""Benchmarks: scripts that print figures side by side with reference tools."""
