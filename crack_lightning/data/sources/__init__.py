"""Where datasets come from: :mod:`.download` (resumable, checked), :mod:`.archive` (safe
extraction) and :mod:`.install` (``make data``: download -> extract -> lay out -> card)."""
