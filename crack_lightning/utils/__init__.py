"""Torch-free helpers every part uses: :mod:`.files` (atomic writes, our own temporary files)
and :mod:`.parallel` (cores, process pools, one parallel map)."""
