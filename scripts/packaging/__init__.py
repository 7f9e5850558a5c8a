"""Packaging: exports (verified), TorchServe archives and Triton model repositories."""
