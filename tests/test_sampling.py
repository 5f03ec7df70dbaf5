"""The training order and per-image augmentation as functions of (seed, epoch, position): a resumed
epoch continues in the same order with the same pixels, whatever the loader workers.
(The whole path, killed and resumed through train.py: tests/test_resume.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from crack_lightning.data.augmentation import FlipRotate
from crack_lightning.data.dataset import ImageListDataset
from crack_lightning.data.imagefolder import Sample
from crack_lightning.data.sampling import Draw, ResumableSampler

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def test_the_order_is_the_seed_and_epoch_and_a_resume_continues_it():
    sampler = ResumableSampler(50, seed=7)
    sampler.set_epoch(3)
    full = list(sampler)
    assert sorted(full) == list(range(50))
    torch.manual_seed(123)  # the global stream does not choose the order
    again = ResumableSampler(50, seed=7)
    again.set_epoch(3)
    again.start_at(20)
    assert list(again) == full[20:]
    assert list(again) == full, "start_at holds for the next iteration only"
    other = ResumableSampler(50, seed=7)
    other.set_epoch(4)
    assert list(other) != full and len(other) == 50


def test_ranks_share_an_epoch_and_balanced_draws_follow_the_weights():
    shards = []
    for rank in (0, 1):
        sampler = ResumableSampler(11, seed=1)
        sampler.num_replicas, sampler.rank = 2, rank  # as under a 2-rank process group
        sampler.num_samples, sampler.total_size = 6, 12
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(11)), "every image once, one repeated to pad"

    weights = [1.0] * 90 + [9.0] * 10  # ten rare images, drawn as often as the ninety
    drawn = torch.tensor(list(ResumableSampler(100, weights, seed=2)))
    assert 0.35 < (drawn >= 90).float().mean() < 0.65


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Sample]:
    from PIL import Image

    root = tmp_path_factory.mktemp("sampling")
    rng = torch.Generator().manual_seed(0)
    samples = []
    for i in range(12):
        path = root / f"{i}.png"
        Image.fromarray(torch.randint(0, 256, (40, 40, 3), generator=rng, dtype=torch.uint8).numpy()).save(path)
        samples.append(Sample(path, i % 2))
    return samples


def test_keyed_draws_augment_alike_across_workers_and_resumes(images):
    dataset = ImageListDataset(images, FlipRotate(0.5, 0.5, 0.25).pil(DATA_CONFIG))

    def batches(workers: int, skip: int = 0) -> list[torch.Tensor]:
        sampler = ResumableSampler(len(dataset), keyed=True, seed=5)
        sampler.set_epoch(1)
        sampler.start_at(skip)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
        return [x for x, _ in loader]

    serial = batches(0)
    assert all(torch.equal(a, b) for a, b in zip(serial, batches(2))), "2 workers: the same pixels"
    resumed = batches(0, skip=4)
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(serial[1:], resumed))
    item = next(iter(ResumableSampler(len(dataset), keyed=True, seed=5)))
    assert isinstance(item, Draw)
    before = torch.get_rng_state()
    first, second = dataset[item], dataset[Draw(item.index, item.key + 1)]
    assert torch.equal(torch.get_rng_state(), before), "a keyed image leaves the process's stream alone"
    assert torch.equal(first[0], dataset[item][0]) and not torch.equal(first[0], second[0]), "the key is the draw"
