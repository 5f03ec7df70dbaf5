"""Every command's start: :mod:`.entry` (one-line errors and exit codes for all of them) and the
mains of the packaged commands -- ``crack-data`` (:mod:`.data`), ``crack-validate``
(:mod:`.validate`), ``crack-synth`` (:mod:`.synth`), ``crack-sweep-summary`` (:mod:`.sweep_summary`).
``train.py``, ``predict.py`` and ``export.py`` at the top of the checkout call :mod:`.entry` too."""
