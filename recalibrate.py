"""Refit a model's operating point for a new site from a few labelled images of it.

    python recalibrate.py ckpt=<run>/checkpoints/best.ckpt data.root=site_b_sample/ name=site_b
    python predict.py ckpt=<recalibrate run>/best-site_b.ckpt operating_point=site_b input=site_b_photos/

The temperature and the recall-targeted threshold (eval.target_recall) are fitted on the
site's images and stored as the named operating point in a copy of the model (.ckpt or
.onnx) in the run folder; the original file is never modified. recalibration.json and the
log say recall and precision before and after, with 95 % intervals, and warn when the
sample has too few cracks to support the target recall.
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import run
from crack_lightning.inference.settings import check_recalibrate


@hydra.main(version_base="1.3", config_path="conf", config_name="recalibrate")
@exit_on_user_error
def main(cfg: DictConfig) -> dict:
    check_recalibrate(cfg)  # before torch is imported (seconds): a wrong setting or file is refused at once
    from crack_lightning.evaluation.recalibrate import recalibrate

    return recalibrate(cfg)


if __name__ == "__main__":
    run(main, "python recalibrate.py")
