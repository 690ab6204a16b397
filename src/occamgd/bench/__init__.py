"""Experiments, methods and reports (tables and plots)."""
