"""Is the data fit to train on: :mod:`.fingerprints` (hashes and decode checks per file),
:mod:`.screening` (bad files before training), :mod:`.grouping` (patches of one photo, for
grouped splits), :mod:`.validate` (the full report) and :mod:`.card` (the dataset card)."""
