"""The inspectors' app: a local web page over a trained model (Gradio, nothing sent anywhere).

    python app.py ckpt=outputs/train/runs/<run>/checkpoints/best.ckpt     # http://127.0.0.1:7860
    python app.py ckpt=model-site_b.onnx operating_point=site_b port=8080 flag_dir=corrections/
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import run
from crack_lightning.inference.settings import check_app


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    check_app(cfg)  # before torch and gradio are imported (seconds): a wrong setting or file is refused at once
    from crack_lightning.app.launch import launch

    launch(cfg)


if __name__ == "__main__":
    run(main, "python app.py")
