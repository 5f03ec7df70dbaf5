"""Evaluate a trained model on any labelled images, without training.

    python evaluate.py ckpt=outputs/train/runs/<run>/checkpoints/best.ckpt data.root=site_b/
    python evaluate.py ckpt=model.onnx data.manifest=site_b.csv
    python evaluate.py ckpt=<run>/checkpoints/best.ckpt data=sdnet2018 data.root=SDNET2018/
    python evaluate.py ckpt=site_b.ckpt data.root=site_b_rest/ operating_point=site_b   # recalibrate.py's

The run folder gets what training's test stage writes: metrics.json (at the model's
operating threshold and at 0.5, with 95 % intervals), report.md, the classification
report, confusion matrix, PR/ROC curves, reliability diagram and error gallery.
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import run
from crack_lightning.inference.settings import check_evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> dict:
    check_evaluate(cfg)  # before torch is imported (seconds): a wrong setting or file is refused at once
    from crack_lightning.evaluation.evaluate import evaluate

    return evaluate(cfg)


if __name__ == "__main__":
    run(main, "python evaluate.py")
