"""The decoded cache: same images, labels and order as the JPEG path; rebuilt on change;
written atomically; batch augmentation distributed like the per-image PIL one."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.data import CrackDataModule
from crack_lightning.data import decoded_cache as decoded
from crack_lightning.data.augmentation import FlipRotate, to_resized_image
from crack_lightning.data.synthetic.render import render_sample

DATA_CONFIG = {"input_size": (3, 48, 48), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225)}


def _datamodule(root, tmp_path, cache: bool, name="run", on_device="auto", **kwargs):
    dm = CrackDataModule(str(root), DATA_CONFIG, split={"strategy": "random", "file": str(tmp_path / name / "splits.csv")},
                         cache={"dir": str(tmp_path / "cache"), "enabled": cache, "on_device": on_device},
                         loader={"num_workers": 0, "batch_size": 4}, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_cache_gives_the_jpeg_paths_images_labels_and_order(tiny_data, tmp_path):
    jpeg = _datamodule(tiny_data, tmp_path, cache=False)
    cached = _datamodule(tiny_data, tmp_path, cache=True)
    assert len(list((tmp_path / "cache").glob("decoded-48x48-*.npy"))) == 1
    assert cached.splits == jpeg.splits and cached.num_workers == 0
    for name in ("train", "val", "test"):
        a, b = getattr(jpeg, f"{name}_dataset"), getattr(cached, f"{name}_dataset")
        assert len(a) == len(b)
        for i in range(len(b)):
            image, label = b[i]
            assert image.dtype == torch.uint8 and image.shape == (48, 48, 3)
            assert label == a.samples[i].label
            if name != "train":  # evaluation: the same normalised pixels, to float rounding
                ref, _ = a[i]
                got = cached.batch_transforms["eval"](image.permute(2, 0, 1)[None])[0]
                assert torch.allclose(got, ref, atol=1e-5)
    # through the real loader and the device hook: a channels-last float batch
    batch = next(iter(cached.val_dataloader()))
    images, labels = cached.on_after_batch_transfer(batch, 0)
    assert images.dtype == torch.float32 and images.shape[1:] == (3, 48, 48) and len(images) == len(labels)
    assert images.is_contiguous(memory_format=torch.channels_last)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tiny_data, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    _datamodule(root, tmp_path, cache=True, name="a")
    first = set((tmp_path / "cache").glob("decoded-*.npy"))
    real_build = decoded.build
    monkeypatch.setattr(decoded, "build", lambda *a, **k: pytest.fail("cache rebuilt for unchanged files"))
    _datamodule(root, tmp_path, cache=True, name="b")  # same files: reused
    monkeypatch.setattr(decoded, "build", real_build)
    victim = next((root / "Positive").glob("*.jpg"))
    Image.new("RGB", (227, 227), (200, 10, 10)).save(victim)  # content (and mtime) changed
    os.utime(victim, ns=(1, 1))  # even with an old mtime: the size changed too
    dm = _datamodule(root, tmp_path, cache=True, name="c")
    second = set((tmp_path / "cache").glob("decoded-*.npy")) - first
    assert len(second) == 1
    name, row = next((name, i) for name, part in dm.splits.items()
                     for i, s in enumerate(part) if s.path == victim.resolve())
    image = getattr(dm, f"{name}_dataset")[row][0]  # the new pixels are served: red
    assert image[..., 0].float().mean() > 150 and image[..., 1].float().mean() < 60


def test_broken_image_fails_clearly_and_leaves_no_cache(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    broken = next((root / "Negative").glob("*.jpg"))
    broken.write_bytes(broken.read_bytes()[:200])
    # (the data module screens files first and skips this one; a file that breaks after
    # the screening must still stop the build)
    with pytest.raises(CrackLightningError, match=broken.name):
        decoded.load_or_build(sorted(root.glob("*/*.jpg")), tmp_path / "cache", (48, 48), "bicubic")
    assert not list((tmp_path / "cache").glob("*decoded*"))  # no final file, no partial one


def test_killed_build_leaves_nothing_that_looks_valid(tiny_data, tmp_path, monkeypatch):
    def killed(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(decoded, "_decode_rows", killed)
    paths = sorted(tiny_data.glob("*/*.jpg"))
    with pytest.raises(KeyboardInterrupt):
        decoded.load_or_build(paths, tmp_path / "cache", (32, 32), "bilinear")
    assert not list((tmp_path / "cache").iterdir())


def _statistics(images: torch.Tensor) -> dict[str, float]:
    """Per-augmentation summary numbers, averaged over the draws."""
    flat = images.flatten(1)
    return {
        "mean": flat.mean().item(),
        "std": flat.std(1).mean().item(),
        "left_right": (images[..., :24].mean((1, 2, 3)) - images[..., 24:].mean((1, 2, 3))).abs().mean().item(),
    }


def test_batch_augmentation_matches_the_pil_path_in_distribution():
    """400 draws of both paths on one image: the summary statistics agree within
    0.03 (in normalised units, where the image's own std is ~0.5), the share of
    rotated-in corners within 0.02, and the average image within 0.06 per pixel."""
    torch.manual_seed(0)
    image, _ = render_sample(np.random.default_rng(3), crack=True, size=227)
    aug = FlipRotate(hflip=0.5, vflip=0.5, rotation=0.2)
    pil_tf = aug.pil(DATA_CONFIG)
    pil = torch.stack([pil_tf(image) for _ in range(400)])
    resized = to_resized_image(DATA_CONFIG)(image)  # what the cache stores
    batch = aug.batch(DATA_CONFIG)(resized[None].expand(400, -1, -1, -1).contiguous())
    a, b = _statistics(pil), _statistics(batch)
    for key in ("mean", "std", "left_right"):
        assert abs(a[key] - b[key]) < 0.03, (key, a, b)
    # corners the rotation fills in, measured on a white image: same share on both paths
    white = Image.new("RGB", (227, 227), (255, 255, 255))
    white_batch = torch.full((400, 3, 48, 48), 255, dtype=torch.uint8)
    fill_pil = (torch.stack([pil_tf(white) for _ in range(400)])[:, 0] < 1).float().mean()
    fill_batch = (aug.batch(DATA_CONFIG)(white_batch)[:, 0] < 1).float().mean()
    assert fill_pil > 0.05 and abs(fill_pil - fill_batch) < 0.02, (fill_pil, fill_batch)
    assert (pil.mean(0) - batch.mean(0)).abs().mean() < 0.06
    # and it is random per sample: not the same flip/angle for the whole batch
    assert (batch[0] - batch[1:]).abs().flatten(1).mean(1).min() > 0


def test_prepare_data_builds_the_cache_so_ranks_only_read_it(tiny_data, tmp_path, monkeypatch):
    """Lightning runs prepare_data on one process; every rank's setup must find the cache."""
    dm = CrackDataModule(str(tiny_data), DATA_CONFIG, split={"strategy": "random", "file": str(tmp_path / "splits.csv")},
                         cache={"dir": str(tmp_path / "cache")}, loader={"num_workers": 0})
    dm.prepare_data()
    assert len(list((tmp_path / "cache").glob("decoded-*.npy"))) == 1
    rank = CrackDataModule(str(tiny_data), DATA_CONFIG, split={"strategy": "random", "file": str(tmp_path / "splits.csv")},
                           cache={"dir": str(tmp_path / "cache")}, loader={"num_workers": 0})
    monkeypatch.setattr(decoded, "build", lambda *a, **k: pytest.fail("a rank rebuilt the cache"))
    rank.setup("fit")
    assert len(rank.train_dataset) == len(rank.splits["train"])


def test_every_split_of_a_dataset_shares_one_cache(tiny_data, tmp_path, monkeypatch):
    """The cache is keyed by the files, not by how they are split: another seed or
    strategy reads the same array (a rebuild would cost minutes and gigabytes)."""
    first = _datamodule(tiny_data, tmp_path, cache=True, name="a")
    monkeypatch.setattr(decoded, "build", lambda *a, **k: pytest.fail("cache rebuilt for another split"))
    other = CrackDataModule(str(tiny_data), DATA_CONFIG,
                            split={"strategy": "random", "seed": 7, "file": str(tmp_path / "b" / "splits.csv")},
                            cache={"dir": str(tmp_path / "cache"), "enabled": True}, loader={"num_workers": 0})
    other.prepare_data()
    other.setup("fit")
    assert other.splits["test"] != first.splits["test"]
    jpeg = _datamodule(tiny_data, tmp_path, cache=False, name="b")  # same split file as `other`
    for i, sample in enumerate(jpeg.test_dataset.samples):  # rows follow the new split
        ref, label = jpeg.test_dataset[i]
        image, got_label = other.test_dataset[i]
        assert got_label == label == sample.label
        assert torch.allclose(other.batch_transforms["eval"](image.permute(2, 0, 1)[None])[0], ref, atol=1e-5)


def test_loaders_gather_whole_batches_of_the_same_images(tiny_data, tmp_path):
    """A batch is one gather from the array (DecodedImages.__getitems__), not an image at a
    time: the same pixels, labels and order as indexing image by image."""
    dm = _datamodule(tiny_data, tmp_path, cache=True)
    dataset = dm.train_dataset
    images, labels = dataset.__getitems__([5, 2, 7, 2])
    assert images.dtype == torch.uint8 and images.shape == (4, 48, 48, 3)
    assert torch.equal(images, torch.stack([dataset[i][0] for i in (5, 2, 7, 2)]))
    assert labels.tolist() == [dataset[i][1] for i in (5, 2, 7, 2)]
    batches = list(dm.val_dataloader())  # unshuffled: the split's order, batch after batch
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.stack([img for img, _ in dm.val_dataset]))
    assert torch.cat([b[1] for b in batches]).tolist() == dm.val_dataset.labels
    assert sum(len(b[1]) for b in dm.train_dataloader()) == len(dataset) // 4 * 4  # drop_last


def test_cache_on_the_device_serves_the_same_batches_from_row_numbers(tiny_data, tmp_path, monkeypatch):
    """data.cache.on_device=true (here the device is the CPU): the whole cache is copied once,
    loaders carry row numbers, and device_batch turns them into the very batches of the
    host path -- augmented with the same random draws, or normalised."""
    monkeypatch.setattr(decoded.ResidentImages, "CHUNK", 5)  # several uploads, the last one partial
    host = _datamodule(tiny_data, tmp_path, cache=True, augmentation=FlipRotate(0.5, 0.5, 20.0))
    resident = _datamodule(tiny_data, tmp_path, cache=True, augmentation=FlipRotate(0.5, 0.5, 20.0),
                           on_device=True)
    assert host.resident is None, "auto: a CPU run keeps the memory-mapped cache"
    assert torch.equal(resident.resident.tensor_on(torch.device("cpu")), torch.from_numpy(np.array(resident.train_dataset.array)))
    for name, training in (("val", False), ("train", True)):
        rows = resident.train_dataset.rows[:8] if training else resident.val_dataset.rows
        indices = list(range(len(rows)))
        dataset = getattr(resident, f"{name}_dataset")
        batch = dataset.__getitems__(indices)
        assert batch[0].dtype == torch.int64 and batch[0].tolist() == rows.tolist()
        torch.manual_seed(3)
        got_images, got_labels = resident.device_batch(batch, training=training)
        torch.manual_seed(3)
        want_images, want_labels = host.device_batch(getattr(host, f"{name}_dataset").__getitems__(indices), training=training)
        assert torch.equal(got_labels, want_labels) and torch.equal(got_images, want_images), name
        assert got_images.dtype == torch.float32 and got_images.shape == (len(rows), 3, 48, 48)


# The CUDA variants run where a GPU is (the device tool's H100: `pytest tests/test_cache.py`);
# the CPU ones, run everywhere, put the same code on the CPU with data.cache.on_device=true.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cache_on_a_cuda_device_gives_the_host_paths_batches(tiny_data, tmp_path):
    """auto on a CUDA device: the cache goes to the GPU; evaluation batches equal the host
    path's (float rounding aside), training batches are augmented there."""
    host = _datamodule(tiny_data, tmp_path, cache=True, on_device=False)
    gpu = _datamodule(tiny_data, tmp_path, cache=True)  # auto; no trainer: CUDA when there is one
    assert host.resident is None and gpu.resident is not None
    cuda = torch.device("cuda")
    rows, labels = gpu.val_dataset.__getitems__(list(range(len(gpu.val_dataset))))
    images, got_labels = gpu.device_batch((rows.to(cuda), labels.to(cuda)), training=False)
    assert images.device.type == "cuda" and gpu.resident.tensor_on(cuda).device.type == "cuda"
    want, want_labels = host.device_batch(host.val_dataset.__getitems__(list(range(len(host.val_dataset)))), training=False)
    assert torch.equal(got_labels.cpu(), want_labels) and torch.allclose(images.cpu(), want, atol=1e-5)
    rows, labels = gpu.train_dataset.__getitems__(list(range(8)))
    augmented, _ = gpu.device_batch((rows.to(cuda), labels.to(cuda)), training=True)
    assert augmented.device.type == "cuda" and augmented.shape == (8, 3, 48, 48) and augmented.dtype == torch.float32


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_training_runs_from_a_cache_on_the_device(device, tiny_data, tmp_path, monkeypatch):
    """The real task with the cache on the device (CPU: data.cache.on_device=true; CUDA:
    the auto default): every training, validation and test batch is gathered from the
    resident copy (row numbers in, images out), and the copy is gone when the run ends."""
    import weakref

    from crack_lightning.train import train
    from tests.conftest import compose_cfg

    served, copies, devices = [], [], set()
    gather, upload = decoded.ResidentImages.__call__, decoded.ResidentImages.tensor_on

    def spy_upload(self, where):
        devices.add(where.type)
        copies.append(weakref.ref(upload(self, where)))
        return copies[-1]()

    monkeypatch.setattr(decoded.ResidentImages, "__call__", lambda self, rows: served.append(len(rows)) or gather(self, rows))
    monkeypatch.setattr(decoded.ResidentImages, "tensor_on", spy_upload)
    overrides = ["data.cache.on_device=true"] if device == "cpu" else ["trainer.accelerator=gpu"]
    best = train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn", "callbacks.error_gallery=null", *overrides]))
    assert best is not None and np.isfinite(best)
    assert devices == {device}
    # released when the run ends, not whenever the cycle collector gets to the data module
    assert copies and all(copy() is None for copy in copies), "the device copy outlived the run"
    metrics = __import__("json").loads((tmp_path / "run" / "metrics.json").read_text())
    # debug=fast: 3 epochs of two training batches of 8 (the last partial one dropped), then
    # validation, and the test split last, in one batch
    assert served.count(8) == 3 * 2 and metrics["test/images"] > 0 and served[-1] == metrics["test/images"]
