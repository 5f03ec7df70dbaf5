"""Serve a trained model over HTTP (LitServe).

    python serve.py ckpt=outputs/train/runs/<run>/checkpoints/best.ckpt            # http://127.0.0.1:8000
    python serve.py ckpt=model.onnx port=8080 api_key=<secret> operating_point=site_b
    curl -F file=@photo.jpg -F file=@other.jpg http://127.0.0.1:8000/predict         # rows of predictions.csv
    curl -F file=@wall.jpg 'http://127.0.0.1:8000/predict?tile=true'                  # whole photos, window by window
    curl http://127.0.0.1:8000/health                                                 # model, threshold, tile window
"""

import hydra
from omegaconf import DictConfig

from crack_lightning import exit_on_user_error
from crack_lightning.cli.entry import run
from crack_lightning.inference.settings import check_serve


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    check_serve(cfg)  # before torch is imported (seconds): a wrong setting or file is refused at once
    from crack_lightning.serving.server import serve

    serve(cfg)


if __name__ == "__main__":
    run(main, "python serve.py")
