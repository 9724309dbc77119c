"""Diagnostics around training: IoU statistics of sampled negatives (``sampling_stats``, a CLI) and
per-loss gradient norms into the shared features (``grad_balance``, called by the trainer)."""
