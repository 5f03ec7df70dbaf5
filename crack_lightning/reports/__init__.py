"""What a run leaves for people to read: :mod:`.run_report` (``report.md``) and :mod:`.plots`
(the figures, written atomically without pyplot)."""
