"""Batch runners over files: progress, cancellation, resume, reports, executors."""
