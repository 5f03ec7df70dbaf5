"""``crack-data [overrides]`` (``make data``; ``python -m crack_lightning.cli.data``): download the
dataset archive that ``source`` names, verify it, extract it and lay it out at ``root``
(config ``conf/get_data.yaml``)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import CONF_DIR, run
from crack_lightning.data.sources.install import get_data


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="get_data")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    try:
        get_data(cfg)
    except KeyboardInterrupt:
        logging.getLogger("crack_lightning").error(
            "Interrupted; a partial download is kept as <archive>.part: rerun to resume")
        sys.exit(130)


def main() -> None:
    run(_hydra_main, "crack-data")


if __name__ == "__main__":
    main()
