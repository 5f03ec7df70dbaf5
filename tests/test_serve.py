"""serve.py: the real LitServe server on 127.0.0.1 -- its answers (patches, and whole photos with
?tile=true), its refusals, its model file, and 8 concurrent clients (stdlib HTTP only: nothing
leaves the machine)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, files: list[tuple[str, bytes]] | None = None, key: str | None = KEY, body: bytes | None = None,
          timeout: float = 60) -> tuple[int, dict]:
    """``(status, JSON answer)`` of a GET (no files, no body) or a multipart POST of ``files``."""
    headers = {"X-API-Key": key} if key else {}
    data = body
    if files is not None:
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
                 for name, content in files]
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, _json(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, _json(err.read())


def _json(body: bytes) -> dict:
    try:
        return json.loads(body or b"{}")
    except json.JSONDecodeError:  # LitServe's /ready answers plain text
        return {"text": body.decode(errors="replace")}


def _oversize(url: str) -> tuple[int, dict]:
    """A 2 MB upload announced by its Content-Length, of which only the first KB is sent: the answer
    must come before the body is read (a client sending all of it may see the connection closed)."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.putrequest("POST", "/predict")
    for key, value in (("Content-Type", "multipart/form-data; boundary=x"), ("Content-Length", str(2 * 2**20)),
                       ("X-API-Key", KEY)):
        conn.putheader(key, value)
    conn.endheaders()
    conn.send(b"--x\r\n" + b"0" * 1024)
    answer = conn.getresponse()
    status, body = answer.status, _json(answer.read())
    conn.close()
    return status, body


def _bomb() -> bytes:
    """A PNG whose header claims 100,000 x 100,000 pixels (30 GB decoded) in a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ckpt = tmp / "best.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", ckpt)
    port = _free_port()
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), f"ckpt={ckpt}", f"port={port}", f"api_key={KEY}",
                             "max_upload_mb=1", "max_batch_size=8", f"hydra.run.dir={tmp / 'run'}"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)  # its own process group: LitServe's workers go with it
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if _call(url + "/ready", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    else:
        _stop(proc)
    if proc.poll() is not None:
        pytest.fail("serve.py did not start:\n" + (tmp / "serve.log").read_text()[-3000:])
    yield url, ckpt, tmp
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the server, its API process and its model workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def test_health_names_the_model_and_the_key_is_required(server):
    from crack_lightning.utils.files import sha256_file

    url, ckpt, _ = server
    status, health = _call(url + "/health")
    assert status == 200 and health["model_hash"] == sha256_file(ckpt)[:12], health
    assert health["classes"] == ["Negative", "Positive"] and 0 <= health["threshold"] <= 1
    assert health["tile_stride"] == [s // 2 for s in health["tile_size"]] and health["tile_batch_size"] == 16
    assert _call(url + "/health", key=None)[0] in (401, 403)
    assert _call(url + "/health", key="wrong")[0] in (401, 403)


def test_a_prediction_is_predict_pys_row(server, tiny_data, tmp_path):
    import csv

    from hydra import compose, initialize_config_dir

    from crack_lightning.inference.predict import predict

    url, ckpt, _ = server
    image = sorted((tiny_data / "Positive").glob("*.jpg"))[0]
    status, answer = _call(url + "/predict", [(image.name, image.read_bytes()), (image.name, image.read_bytes())])
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 2 and rows[0] == rows[1]
    single = tmp_path / "one"
    single.mkdir()
    shutil.copy(image, single / image.name)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        predict(compose(config_name="predict", overrides=[f"ckpt={ckpt}", f"input={single}",
                                                          f"output_dir={tmp_path / 'p'}", "num_workers=0"]))
    expected = next(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert set(rows[0]) == set(expected), "the fields of predictions.csv"
    assert abs(float(rows[0]["crack_probability"]) - float(expected["crack_probability"])) <= 1e-5
    assert {k: v for k, v in rows[0].items() if k not in ("path", "crack_probability")} == {
        k: v for k, v in expected.items() if k not in ("path", "crack_probability")}


def _wall(tiny_data, path):
    """A 600x450 JPEG of tiny_data's patches side by side, stored turned a quarter (EXIF
    orientation 6): both sides must score it upright, 450x600."""
    from PIL import Image

    patches = sorted((tiny_data / "Positive").glob("*.jpg"))[:3] + sorted((tiny_data / "Negative").glob("*.jpg"))[:3]
    wall = Image.new("RGB", (600, 450), (128, 128, 128))
    for k, patch in enumerate(patches):
        with Image.open(patch) as img:
            wall.paste(img.convert("RGB"), (200 * (k % 3), 225 * (k // 3)))
    exif = Image.Exif()
    exif[0x0112] = 6
    wall.save(path, quality=90, exif=exif)
    return path


def test_a_whole_photo_is_predict_pys_tile_row(server, tiny_data, tmp_path):
    import csv

    from hydra import compose, initialize_config_dir

    from crack_lightning.inference.predict import predict

    url, ckpt, _ = server
    (tmp_path / "photos").mkdir()
    photo = _wall(tiny_data, tmp_path / "photos" / "wall.jpg")
    status, answer = _call(url + "/predict?tile=true", [(photo.name, photo.read_bytes())])
    assert status == 200, answer
    row = answer["predictions"][0]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        predict(compose(config_name="predict", overrides=[
            f"ckpt={ckpt}", f"input={tmp_path / 'photos'}", f"output_dir={tmp_path / 'p'}", "tile=true",
            "heatmap.max_side=200"]))
    expected = next(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert set(row) == set(expected) | {"windows"}, "the fields of predictions.csv, and the windows"
    assert abs(float(row["crack_probability"]) - float(expected["crack_probability"])) <= 1e-5
    assert {k: str(v) for k, v in row.items() if k not in ("path", "crack_probability", "windows")} == {
        **{k: v for k, v in expected.items() if k not in ("path", "crack_probability")}, "tiles_csv": "", "heatmap": ""}
    assert row["tiles"] == len(row["windows"]) > 1, row
    assert row["crack_tiles"] == sum(w["crack_probability"] > float(row["threshold"]) for w in row["windows"])
    tiles = list(csv.DictReader(Path(expected["tiles_csv"]).read_text().splitlines()))
    assert [[w[k] for k in ("top", "left", "height", "width")] for w in row["windows"]] == [
        [int(t[k]) for k in ("top", "left", "height", "width")] for t in tiles]
    assert all(abs(w["crack_probability"] - float(t["crack_probability"])) <= 1e-5
               for w, t in zip(row["windows"], tiles))


def test_bad_requests_get_a_4xx_that_says_why(server):
    url, _, _ = server
    cases = [
        ([("notes.txt", b"this is no image")], 422, "notes.txt: not an image"),
        ([("empty.jpg", b"")], 422, "empty.jpg: an empty file"),
        ([("bomb.png", _bomb())], 413, "100000x100000"),
    ]
    for path in ("/predict", "/predict?tile=yes"):  # patches, and whole photos (yes: tile=true)
        for files, code, words in cases:
            status, answer = _call(url + path, files)
            assert status == code and words in answer.get("detail", ""), (path, files[0][0], status, answer)
    status, answer = _call(url + "/predict?tile=maybe", [("a.jpg", b"x")])
    assert status == 422 and "tile='maybe'" in answer["detail"], answer
    status, answer = _oversize(url)
    assert status == 413 and "max_upload_mb=1" in answer["detail"], answer
    status, answer = _call(url + "/predict", body=b"")  # no multipart at all
    assert status == 422 and "multipart" in answer["detail"], answer
    assert _call(url + "/predict", [("a.jpg", b"x")], key=None)[0] in (401, 403)


def test_eight_concurrent_clients_all_get_the_right_answer(server, tiny_data):
    url, _, _ = server
    images = sorted(tiny_data.rglob("*.jpg"))[:8]
    expected = {}
    for image in images:
        status, answer = _call(url + "/predict", [(image.name, image.read_bytes())])
        assert status == 200
        expected[image.name] = answer["predictions"][0]

    def same(row: dict, want: dict) -> bool:  # a batch of other sizes may differ in the last float digits
        return (abs(float(row["crack_probability"]) - float(want["crack_probability"])) <= 1e-5
                and row["label"] == want["label"] and row["path"] == want["path"])

    def client(k: int) -> list[bool]:
        """Ten requests; clients 0 and 1 send a text file every third one, which must be refused alone
        (LitServe answers a whole batch with one request's exception: its refusal must not spread)."""
        image, answers = images[k], []
        for n in range(10):
            if k < 2 and n % 3 == 0:
                status, answer = _call(url + "/predict", [("notes.txt", b"no image")])
                answers.append(status == 422 and "notes.txt" in answer["detail"])
                continue
            status, answer = _call(url + "/predict", [(image.name, image.read_bytes())])
            answers.append(status == 200 and same(answer["predictions"][0], expected[image.name]))
        return answers

    with ThreadPoolExecutor(8) as pool:
        results = [ok for answers in pool.map(client, range(8)) for ok in answers]
    assert len(results) == 80 and all(results), results.count(False)


def test_wrong_settings_are_refused_before_anything_starts(trained_run):
    from hydra import compose, initialize_config_dir

    from crack_lightning import CrackLightningError
    from crack_lightning.inference.settings import check_serve

    ckpt = trained_run / "checkpoints" / "best.ckpt"
    for override, words in (("port=99999", "port=99999"), ("max_batch_size=0", "max_batch_size=0"),
                            ("device=gpu", "device='gpu'"), ("ckpt=nowhere.ckpt", "nowhere.ckpt"),
                            ("tile_stride=0", "tile_stride=0")):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="serve", overrides=[f"ckpt={ckpt}", override])
        with pytest.raises(CrackLightningError, match=None) as refusal:
            check_serve(cfg)
        assert words in str(refusal.value) and "\n" not in str(refusal.value), refusal.value


def test_an_onnx_file_answers_as_its_checkpoint(trained_run, tiny_data, tmp_path):
    """The same LitAPIs in this process (LitServe's loop aside), on a checkpoint and on its export."""
    import io

    from starlette.datastructures import FormData, UploadFile

    from crack_lightning.export.onnx import export_onnx
    from crack_lightning.inference.checkpoint import load_classifier
    from crack_lightning.serving.api import CrackAPI, Refused, TileAPI

    ckpt = trained_run / "checkpoints" / "best.ckpt"
    export_onnx(load_classifier(ckpt), tmp_path / "best.onnx")
    images = sorted(tiny_data.rglob("*.jpg"))[:3]

    def form(*files: tuple[str, bytes]) -> FormData:
        return FormData([("file", UploadFile(io.BytesIO(data), filename=name)) for name, data in files])

    def answer(api, *files):
        return api.encode_response(api.predict([api.decode_request(form(*files))])[0])  # a batch of one request

    rows = {}
    for model in (ckpt, tmp_path / "best.onnx"):
        patches, photos = CrackAPI(str(model)), TileAPI(str(model))
        patches.setup("cpu"), photos.setup("cpu")
        rows[model.suffix] = (answer(patches, *((p.name, p.read_bytes()) for p in images))["predictions"],
                              photos.encode_response(photos.predict(photos.decode_request(
                                  form(("one.jpg", images[0].read_bytes())))))["predictions"])
        refused = patches.decode_request(form(("notes.txt", b"no image")))
        assert isinstance(refused, Refused) and refused.status == 422
    (ckpt_rows, ckpt_photo), (onnx_rows, onnx_photo) = rows[".ckpt"], rows[".onnx"]
    assert len(ckpt_rows) == len(onnx_rows) == 3 and len(ckpt_photo) == len(onnx_photo) == 1
    for a, b in zip([*ckpt_rows, *ckpt_photo], [*onnx_rows, *onnx_photo]):
        assert abs(float(a["crack_probability"]) - float(b["crack_probability"])) <= 1e-4
        assert a["label"] == b["label"] and a["model_hash"] != b["model_hash"]
