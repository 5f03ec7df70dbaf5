"""The REST service of ``serve.py`` on LitServe (Lightning's server, on FastAPI).

``POST /predict`` takes one or more images in the multipart field ``file`` (repeatable) and
answers ``{"predictions": [row, ...]}``, each row with the fields of ``predict.py``'s
``predictions.csv`` (:func:`~crack_lightning.inference.predict.prediction_row`). LitServe
batches concurrent requests (``max_batch_size``, ``batch_timeout``): the images of every request
in a batch go through the model in one forward pass. ``GET /health`` says which model answers
(hash, classes, threshold, tile window); ``GET /ready`` is LitServe's own readiness check.

``POST /predict?tile=true`` (also ``1`` / ``yes``) takes whole photos instead, scored window by
window as ``predict.py tile=true`` does (:mod:`~crack_lightning.inference.tiling`), in forward
passes of ``tile_batch_size`` windows: each row has predict.py's whole-photo fields too
(``crack_area_fraction``, ``tiles``, ``crack_tiles``; ``tiles_csv`` and ``heatmap`` empty, as the
server writes no files) and ``windows``, the per-tile CSV inline. LitServe hands
``decode_request`` the form alone, not the query string, so :class:`UploadGate` routes such a
request to :class:`TileAPI` at ``/predict/tile`` (the same endpoint, by its own path), a model
worker of its own.

What is refused, before any pixel is decoded where it can be: a request that is no multipart
upload or has no ``file`` (422), a ``tile=`` other than true/false (422), a body over
``max_upload_mb`` (413, :class:`UploadGate`), an image whose header claims more than
``max_pixels`` (413: a decompression bomb is not allocated), a file PIL cannot read as an
image (422). Each answer names the file and what to send instead.
"""

import io  # (no `from __future__ import annotations`: LitServe reads decode_request's annotation as a class)
from contextlib import contextmanager
from typing import NamedTuple
from urllib.parse import parse_qs

import litserve as ls
import torch
from fastapi import HTTPException, Request
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.responses import JSONResponse

from crack_lightning.data.augmentation import eval_transform
from crack_lightning.data.dataset import to_rgb
from crack_lightning.data.quality.screening import header_problem
from crack_lightning.inference import tiling
from crack_lightning.inference.backends import open_backend
from crack_lightning.inference.photos import PhotoScorer
from crack_lightning.inference.predict import columns, prediction_row
from crack_lightning.inference.sources import reason

FIELD = "file"
PREDICT_PATH = "/predict"
TILE_PATH = "/predict/tile"
TILE_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class Refused(NamedTuple):
    """A request refused in ``decode_request``, answered as such by ``encode_response``: raised there,
    the HTTPException would answer every request of its LitServe batch (litserve 0.2.19)."""

    status: int
    detail: str


class _UploadAPI(ls.LitAPI):
    """What both endpoints share: the model, and the uploads of a request checked one by one."""

    def __init__(self, ckpt: str, device: str, operating_point: str | None, max_pixels: int, **litapi):
        super().__init__(**litapi)
        self.ckpt, self.device_name, self.operating_point, self.max_pixels = ckpt, device, operating_point, max_pixels

    def setup(self, device) -> None:
        self.backend = open_backend(self.ckpt, self.device_name, self.operating_point)
        self.transform = eval_transform(self.backend.card.preprocessing.to_timm_data_config())

    def _uploads(self, request, example: str) -> list[tuple[str, bytes]]:
        uploads = [u for u in request.getlist(FIELD) if hasattr(u, "read")] if hasattr(request, "getlist") else []
        if not uploads:
            raise HTTPException(422, f"no image: send one or more files in the multipart field '{FIELD}', e.g. "
                                     f"curl -F {FIELD}=@{example}")
        return [(upload.filename or f"upload {k + 1}", upload.file.read()) for k, upload in enumerate(uploads)]

    @contextmanager
    def _opened(self, name: str, data: bytes):
        """The upload opened by PIL (header read, pixels not yet), or the 413/422 that says why not;
        whatever fails while the ``with`` body decodes it is a 422 naming the file too."""
        if not data:
            raise HTTPException(422, f"{name}: an empty file; send the image's bytes")
        if problem := header_problem(io.BytesIO(data), 1, self.max_pixels):
            raise HTTPException(413, f"{name}: {problem.replace('data.screening.max_pixels', 'max_pixels')}")
        try:
            with Image.open(io.BytesIO(data)) as img:
                yield img
        except UnidentifiedImageError:
            raise HTTPException(422, f"{name}: not an image (no image format PIL knows); send a JPEG, PNG, TIFF, "
                                     f"BMP or WebP") from None
        except Exception as err:  # noqa: BLE001 - truncated, an unsupported mode
            raise HTTPException(422, f"{name}: not an image PIL can read ({reason(err)}); send a JPEG, PNG, "
                                     f"TIFF, BMP or WebP") from None

    def _row(self, name: str, prob: float, classes) -> list:
        card = self.backend.card
        return prediction_row(name, prob, classes, "", card.threshold, self.backend.model_hash, card.class_names)


class CrackAPI(_UploadAPI):
    """A model file (``.ckpt`` or ``.onnx``) at its operating point (or a named one) behind ``/predict``."""

    def __init__(self, ckpt: str, device: str = "cpu", operating_point: str | None = None,
                 max_pixels: int = 89478485, max_batch_size: int = 16, batch_timeout: float = 0.01):
        super().__init__(ckpt, device, operating_point, max_pixels, max_batch_size=max_batch_size,
                         batch_timeout=batch_timeout, api_path=PREDICT_PATH)

    def setup(self, device) -> None:
        super().setup(device)
        self.columns = columns(self.backend.card.class_names, tile=False)

    def decode_request(self, request: Request):
        """The request's images preprocessed, or why it is :class:`Refused` (its own answer alone)."""
        try:
            uploads = self._uploads(request, f"photo.jpg http://<host>:<port>{PREDICT_PATH}")
            return [self._image(name, data) for name, data in uploads]
        except HTTPException as err:
            return Refused(err.status_code, err.detail)

    def _image(self, name: str, data: bytes) -> tuple[str, torch.Tensor]:
        with self._opened(name, data) as img:
            return name, self.transform(to_rgb(img))

    def predict(self, x):
        requests = x if self.max_batch_size > 1 else [x]  # LitServe hands a list only when it batches
        images = [tensor for request in requests if not isinstance(request, Refused) for _, tensor in request]
        crack, every = self.backend.scores(torch.stack(images)) if images else ([], [])
        out, start = [], 0
        for request in requests:
            if isinstance(request, Refused):
                out.append(request)
                continue
            out.append([(name, float(crack[start + i]), every[start + i]) for i, (name, _) in enumerate(request)])
            start += len(request)
        return out if self.max_batch_size > 1 else out[0]

    def batch(self, inputs):
        return inputs  # requests of several images each: stacked in predict

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        if isinstance(output, Refused):  # this request's refusal; the others of its batch are answered
            return JSONResponse({"detail": output.detail}, status_code=output.status)
        return {"predictions": [dict(zip(self.columns, self._row(*scored))) for scored in output]}


class TileAPI(_UploadAPI):
    """Whole photos behind ``/predict/tile`` (``POST /predict?tile=true``): every window of
    ``size`` every ``stride`` px (null: :func:`~crack_lightning.inference.photos.tile_windows`), scored
    as :class:`~crack_lightning.inference.photos.PhotoScorer` does for predict.py.

    One request at a time (no LitServe batching): a photo already fills forward passes of its
    own windows, and in a LitServe batch one bad upload fails every request of it. Uploads are
    checked in ``decode_request`` but decoded in ``predict``, one photo at a time: a 32 MB body
    of small PNGs can claim gigabytes of pixels."""

    def __init__(self, ckpt: str, device: str = "cpu", operating_point: str | None = None,
                 max_pixels: int = 89478485, **tiles):
        super().__init__(ckpt, device, operating_point, max_pixels, max_batch_size=1, api_path=TILE_PATH)
        self.tiles = tiles  # PhotoScorer's keywords (tile_size, tile_stride, mode, batch_size, block_megapixels)

    def setup(self, device) -> None:
        super().setup(device)
        self.scorer = PhotoScorer(self.backend, **self.tiles)
        self.columns = columns(self.backend.card.class_names, tile=True)

    def decode_request(self, request: Request) -> list[tuple[str, bytes]]:
        uploads = self._uploads(request, "wall.jpg 'http://<host>:<port>/predict?tile=true'")
        for name, data in uploads:
            with self._opened(name, data):
                pass  # empty, a bomb, no image: refused before any photo is scored
        return uploads

    def predict(self, uploads: list[tuple[str, bytes]]) -> list:
        out = []
        for name, data in uploads:
            with self._opened(name, data) as img:  # as tiling.load_photo: the EXIF rotation applied
                photo = to_rgb(ImageOps.exif_transpose(img))
            scores = self.scorer(photo)  # its class probabilities: its most crack-like window's
            del photo
            out.append((name, float(scores.probabilities.max()), scores.classes, scores))
        return out

    def encode_response(self, output) -> dict:
        rows = []
        for name, prob, classes, scores in output:
            result = scores.at(self.backend.card.threshold)
            cells = [f"{result.crack_area_fraction:.6f}", result.tiles, result.crack_tiles, "", ""]
            windows = [dict(zip(tiling.TILE_COLUMNS, (*win, float(f"{p:.9g}"))))
                       for win, p in zip(scores.windows(), scores.probabilities.tolist())]
            rows.append({**dict(zip(self.columns, self._row(name, prob, classes) + cells)), "windows": windows})
        return {"predictions": rows}


class UploadGate:
    """ASGI middleware in front of ``POST /predict`` (and ``/predict/tile``): a body that is no
    multipart upload (empty, JSON) gets a 422 naming the field, instead of LitServe's JSON parser
    failing as a 500; one over ``max_bytes`` by its Content-Length a 413, before it is read
    (uvicorn reads no more than that header says; a body without one gets a 411). Not LitServe's
    ``max_payload_size``: its middleware leaves the upload unpicklable for the worker (litserve
    0.2.19). Then ``/predict?tile=true`` goes on as ``/predict/tile``: LitServe gives the API the
    form alone, so the query string is read here."""

    def __init__(self, app, max_bytes: int, path: str = PREDICT_PATH, tile_path: str = TILE_PATH):
        self.app, self.max_bytes, self.path, self.tile_path = app, max_bytes, path, tile_path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in (self.path, self.tile_path):
            refusal, tile = self._refusal(scope)
            if refusal:
                await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
                return
            if tile and scope["path"] == self.path:
                scope = {**scope, "path": self.tile_path, "raw_path": self.tile_path.encode()}
        await self.app(scope, receive, send)

    def _refusal(self, scope) -> tuple[tuple[int, str] | None, bool]:
        """(status and reason of a refusal, or None; whether ``tile=`` asks for whole photos)."""
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            return (422, f"send the images as a multipart upload in the field '{FIELD}' (Content-Type "
                         f"multipart/form-data), e.g. curl -F {FIELD}=@photo.jpg"), False
        if not headers.get(b"content-length", b"").isdigit():
            return (411, "send a Content-Length header (curl and every HTTP library do for a file upload)"), False
        if int(headers[b"content-length"]) > self.max_bytes:
            return (413, f"the upload is {int(headers[b'content-length']) / 2**20:.1f} MB, over the server's "
                         f"max_upload_mb={self.max_bytes // 2**20}; send fewer or smaller images per request"), False
        values = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get("tile")
        value = values[-1].strip().lower() if values else "false"
        if value not in TILE_VALUES:
            return (422, f"tile={values[-1]!r}: use tile=true for whole photos (scored window by window) or "
                         f"tile=false (the default) for patches"), False
        return None, TILE_VALUES[value]
