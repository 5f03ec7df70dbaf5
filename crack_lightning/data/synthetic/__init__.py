"""The synthetic stand-in for the real dataset: :mod:`.render` draws one wall patch, :mod:`.scenes`
cuts patches from shared wall scenes (the real set's leak), :mod:`.generate` writes a folder."""
