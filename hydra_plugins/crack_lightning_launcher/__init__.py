"""crack-lightning's Hydra launchers (Hydra instantiates plugins only from the ``hydra_plugins`` namespace)."""
