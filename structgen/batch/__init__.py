"""Batch jobs: one output type over many JSONL rows, resumable, locally or on Ray Data."""

from structgen.batch.job import BatchJob
from structgen.batch.runner import Summary, run_job

__all__ = ["BatchJob", "Summary", "run_job"]
