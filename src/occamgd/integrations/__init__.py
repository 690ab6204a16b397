"""Occam inside the tools users already train with.

Each integration lives in its own module and imports its framework only when used:
``sklearn`` (estimators), ``lightning`` (a Lightning callback), ``huggingface`` (a
``transformers.Trainer`` callback) and ``distributed`` (DistributedDataParallel).
"""
