"""maas-handlers runtime: task pipelines and the TorchServe / Triton adapters that serve them.

This package is copied into every archive it builds; it imports nothing from build-time code (``scripts/``).
"""
