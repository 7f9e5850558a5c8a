"""Compression beyond int8 for text classifiers: distillation (``distill.py``) and structured pruning
(``prune.py``), sharing the teacher's soft labels, the training loop and the acceptance rule (``kd.py``)."""
