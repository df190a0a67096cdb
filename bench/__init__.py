"""Benchmarks of the job backend, each against a baseline measured in the same run.

``python -m bench`` runs them all (see ``bench/__main__.py``); one module per benchmark.
"""

from __future__ import annotations
