"""Multirun helpers: keep a sweep going when a job fails, summarise the sweep, write run reports.

- :mod:`.job`: the task wrapper that records a failing multirun job (``error.txt``, ``job.json``)
  instead of letting it end the sweep.
- :mod:`.summary`: ``summary.csv``/``summary.md``/``summary.png`` of a sweep folder
  (``python -m crack_lightning.cli.sweep_summary <sweep folder>`` rebuilds them).
- :mod:`.callback`: the Hydra callback that writes the summary when a multirun ends.
- :mod:`.report`: ``report.md`` of one run folder.
"""
