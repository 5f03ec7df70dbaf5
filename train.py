"""Train a concrete-crack classifier.

    python train.py backbone=mobilenetv2
    python train.py experiment=demo
    python train.py -m backbone=mobilenetv2,efficientnet,custom_cnn model.lr=1e-3,1e-4
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
