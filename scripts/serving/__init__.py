"""Serving: start and stop the servers, sample requests, and both handlers in process (maas check)."""
