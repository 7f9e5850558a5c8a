"""Benchmarking: served and in-process speed, formats, int8 recipes (reports/)."""
