"""Train a concrete-crack classifier.

    python train.py backbone=mobilenetv2
    python train.py experiment=demo
    python train.py -m backbone=mobilenetv2,efficientnet,custom_cnn model.lr=1e-3,1e-4

A multirun keeps going when a job fails (its folder gets error.txt), writes
summary.csv/.md/.png into the sweep folder and exits 1 if any job failed.
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import run
from crack_lightning.sweeps.job import tolerate_job_failure


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error      # single run: a user error is one line and status 2
@tolerate_job_failure    # multirun: a failing job is recorded, the next one runs
def main(cfg: DictConfig) -> float | None:
    from crack_lightning.config_checks import check_config

    check_config(cfg)  # a wrong setting is one line before torch and Lightning take seconds to import
    from crack_lightning.train import train

    return train(cfg)


if __name__ == "__main__":
    run(main, "python train.py")
