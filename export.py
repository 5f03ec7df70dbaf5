"""Export a trained crack classifier for deployment.

    python export.py ckpt=outputs/train/runs/<run>/checkpoints/best.ckpt            # -> best.onnx beside it
    python export.py ckpt=<run>/checkpoints/best.ckpt output=crack.onnx input=photos/
    python predict.py ckpt=crack.onnx input=photos/                                  # onnxruntime only
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import run
from crack_lightning.inference.settings import check_export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> dict:
    check_export(cfg)  # before torch is imported (seconds): a wrong setting or file is refused at once
    from crack_lightning.export.run import export

    return export(cfg)


if __name__ == "__main__":
    run(main, "python export.py")
