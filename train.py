"""Train a concrete-crack classifier.

    python train.py backbone=mobilenetv2
    python train.py experiment=demo
    python train.py -m backbone=mobilenetv2,efficientnet,custom_cnn model.lr=1e-3,1e-4
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from crack_lightning import CrackLightningError
from crack_lightning.train import train


def _user_error(err: BaseException | None) -> CrackLightningError | None:
    """The CrackLightningError behind ``err`` (Hydra's instantiate wraps it), if any."""
    while err is not None:
        if isinstance(err, CrackLightningError):
            return err
        err = err.__cause__ or err.__context__
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        # a problem the user can fix: one clear line (console and train.log), no stack trace
        logging.getLogger("crack_lightning").error("%s", user_error)
        sys.exit(2)


if __name__ == "__main__":
    main()
