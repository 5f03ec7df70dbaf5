"""The REST service of ``serve.py`` on LitServe (Lightning's server, on FastAPI).

``POST /predict`` takes one or more images in the multipart field ``file`` (repeatable) and
answers ``{"predictions": [row, ...]}``, each row with the fields of ``predict.py``'s
``predictions.csv`` (:func:`~crack_lightning.inference.predict.prediction_row`). LitServe
batches concurrent requests (``max_batch_size``, ``batch_timeout``): the images of every request
in a batch go through the model in one forward pass. ``GET /health`` says which model answers
(hash, classes, threshold); ``GET /ready`` is LitServe's own readiness check.

What is refused, before any pixel is decoded where it can be: a request that is no multipart
upload or has no ``file`` (422), a body over ``max_upload_mb`` (413, :class:`UploadGate`), an
image whose header claims more than ``max_pixels`` (413: a decompression bomb is not allocated),
a file PIL cannot read as an image (422). Each answer names the file and what to send instead.
"""

import io  # (no `from __future__ import annotations`: LitServe reads decode_request's annotation as a class)

import litserve as ls
import torch
from fastapi import HTTPException, Request
from PIL import Image, UnidentifiedImageError
from starlette.responses import JSONResponse

from crack_lightning.data.augmentation import eval_transform
from crack_lightning.data.dataset import to_rgb
from crack_lightning.data.quality.screening import header_problem
from crack_lightning.inference.backends import open_backend
from crack_lightning.inference.predict import columns, prediction_row
from crack_lightning.inference.sources import reason

FIELD = "file"
PREDICT_PATH = "/predict"


class CrackAPI(ls.LitAPI):
    """A model file (``.ckpt`` or ``.onnx``) at its operating point (or a named one) behind ``/predict``."""

    def __init__(self, ckpt: str, device: str = "cpu", operating_point: str | None = None,
                 max_pixels: int = 89478485, max_batch_size: int = 16, batch_timeout: float = 0.01):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=PREDICT_PATH)
        self.ckpt, self.device_name, self.operating_point, self.max_pixels = ckpt, device, operating_point, max_pixels

    def setup(self, device) -> None:
        self.backend = open_backend(self.ckpt, self.device_name, self.operating_point)
        self.transform = eval_transform(self.backend.card.preprocessing.to_timm_data_config())
        self.columns = columns(self.backend.card.class_names, tile=False)

    def decode_request(self, request: Request) -> list[tuple[str, torch.Tensor]]:
        uploads = [u for u in request.getlist(FIELD) if hasattr(u, "read")] if hasattr(request, "getlist") else []
        if not uploads:
            raise HTTPException(422, f"no image: send one or more files in the multipart field '{FIELD}', e.g. "
                                     f"curl -F {FIELD}=@photo.jpg http://<host>:<port>{PREDICT_PATH}")
        return [self._image(upload.filename or f"upload {k + 1}", upload.file.read()) for k, upload in enumerate(uploads)]

    def _image(self, name: str, data: bytes) -> tuple[str, torch.Tensor]:
        if not data:
            raise HTTPException(422, f"{name}: an empty file; send the image's bytes")
        if problem := header_problem(io.BytesIO(data), 1, self.max_pixels):
            raise HTTPException(413, f"{name}: {problem.replace('data.screening.max_pixels', 'max_pixels')}")
        try:
            with Image.open(io.BytesIO(data)) as img:
                return name, self.transform(to_rgb(img))
        except UnidentifiedImageError:
            raise HTTPException(422, f"{name}: not an image (no image format PIL knows); send a JPEG, PNG, TIFF, "
                                     f"BMP or WebP") from None
        except Exception as err:  # noqa: BLE001 - truncated, an unsupported mode
            raise HTTPException(422, f"{name}: not an image PIL can read ({reason(err)}); send a JPEG, PNG, "
                                     f"TIFF, BMP or WebP") from None

    def predict(self, x):
        requests = x if self.max_batch_size > 1 else [x]  # LitServe hands a list only when it batches
        images = torch.stack([tensor for request in requests for _, tensor in request])
        crack, every = self.backend.scores(images)
        out, start = [], 0
        for request in requests:
            out.append([(name, float(crack[start + i]), every[start + i]) for i, (name, _) in enumerate(request)])
            start += len(request)
        return out if self.max_batch_size > 1 else out[0]

    def batch(self, inputs):
        return inputs  # requests of several images each: stacked in predict

    def unbatch(self, output):
        return output

    def encode_response(self, output) -> dict:
        card, threshold = self.backend.card, self.backend.card.threshold
        return {"predictions": [dict(zip(self.columns, prediction_row(
            name, prob, classes, "", threshold, self.backend.model_hash, card.class_names))) for name, prob, classes in output]}


class UploadGate:
    """ASGI middleware in front of ``POST /predict``: a body that is no multipart upload (empty,
    JSON) gets a 422 naming the field, instead of LitServe's JSON parser failing as a 500; one
    over ``max_bytes`` by its Content-Length a 413, before it is read (uvicorn reads no more than
    that header says; a body without one gets a 411). Not LitServe's ``max_payload_size``: its
    middleware leaves the upload unpicklable for the worker (litserve 0.2.19)."""

    def __init__(self, app, max_bytes: int, path: str = PREDICT_PATH):
        self.app, self.max_bytes, self.path = app, max_bytes, path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            headers = dict(scope["headers"])
            refusal = None
            if not headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
                refusal = 422, (f"send the images as a multipart upload in the field '{FIELD}' (Content-Type "
                                f"multipart/form-data), e.g. curl -F {FIELD}=@photo.jpg")
            elif not headers.get(b"content-length", b"").isdigit():
                refusal = 411, "send a Content-Length header (curl and every HTTP library do for a file upload)"
            elif int(headers[b"content-length"]) > self.max_bytes:
                refusal = 413, (f"the upload is {int(headers[b'content-length']) / 2**20:.1f} MB, over the server's "
                                f"max_upload_mb={self.max_bytes // 2**20}; send fewer or smaller images per request")
            if refusal:
                await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)
