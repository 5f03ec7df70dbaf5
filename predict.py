"""Predict crack / no crack with a trained model.

    python predict.py ckpt=outputs/train/runs/<run>/checkpoints/best.ckpt input=photos/
    python predict.py ckpt=model.onnx input='photos/**/*.jpg' threshold=0.3
    python predict.py ckpt=<run>/checkpoints/best.ckpt input=wall.jpg tile=true   # whole photos
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import run
from crack_lightning.inference.settings import check_predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> dict:
    check_predict(cfg)  # before torch is imported (seconds): a wrong setting or file is refused at once
    from crack_lightning.inference.predict import predict

    return predict(cfg)


if __name__ == "__main__":
    run(main, "python predict.py")
