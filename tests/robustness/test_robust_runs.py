"""Inference and fine-tuning runs on awkward inputs and under faults: correct results or
a clear error (with what to do), cancellation at any point, absurd memory requests
refused before anything is allocated, unwritable outputs and a full disk that never
damage the previous checkpoint."""

from __future__ import annotations

import errno
import logging
import time

import numpy as np
import pytest
import torch

from conftest import assert_names, tiny_card
from napari_vnet.inference import InferenceMemoryError, PredictionCancelled, predict
from napari_vnet.io import Volume, VolumeWriteError, write_volume
from napari_vnet.models import build_model, load_checkpoint, save_checkpoint
from napari_vnet.training import TrainConfig, TrainingError, TrainingPair, finetune


def blob_pair(shape=(16, 16, 16), value=1, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = [s // 2 for s in shape]
    labels = (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 16).astype(np.uint8)
    image = rng.normal(0, 0.2, shape).astype(np.float32) + labels
    return image, labels * value


def cfg(**kw) -> TrainConfig:
    base = dict(
        arch="vnet",
        arch_kwargs={"channels": [4, 8], "convs": [1, 1], "kernel_size": 3},
        iterations=3,
        patch_size=(8, 8, 8),
        batch_size=1,
        device="cpu",
        amp=False,
        augment=False,
        eval_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def model_card():
    torch.manual_seed(0)
    card = tiny_card()
    return build_model(card), card


# =================================================================== inference


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 1, 9), (16, 2, 40)])
def test_image_smaller_than_the_patch(model_card, shape):
    model, card = model_card
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    pred = predict(image, model, card, spacing=(1, 1, 1), device="cpu")
    assert pred.labels.shape == shape
    assert set(np.unique(pred.labels)) <= {0, 1}


@pytest.mark.parametrize("value", [0.0, -1024.0, 3000.0])
def test_constant_image(model_card, value):
    model, card = model_card
    image = np.full((20, 18, 17), value, np.float32)
    pred = predict(image, model, card, spacing=(1, 1, 1), device="cpu")
    assert pred.labels.shape == image.shape
    assert len(np.unique(pred.labels)) == 1  # a constant input has one answer everywhere


def test_image_with_nan_and_inf(model_card):
    model, card = model_card
    image = np.random.default_rng(0).normal(size=(18, 18, 18)).astype(np.float32)
    image[3:6, 3:6, 3:6] = np.nan
    image[10, 10, 10] = np.inf
    pred = predict(image, model, card, spacing=(1, 1, 1), device="cpu")
    assert pred.labels.shape == image.shape
    assert pred.stats["nonfinite_replaced"] == 28


def _job(image, weights, **settings):
    from napari_vnet._widgets._segment_job import SegmentJob
    from napari_vnet.workflows.segment import RunRequest

    request = RunRequest(
        image=image,
        image_name="scan",
        spacing=(1.0, 1.0, 1.0),
        weights=weights,
        arch="vnet",
        settings={"device": "cpu", **settings},
        threads=1,
    )
    return SegmentJob(request)


def test_nan_image_in_the_segment_job(drain, tiny_weights):
    from napari_vnet.workflows.segment import JobDone, JobFailed, Message

    some = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    some[0] = np.nan
    items, outcome = drain(_job(some, tiny_weights).events())
    assert isinstance(outcome, JobDone) and outcome.labels.shape == some.shape
    warnings = [m.text for m in items if isinstance(m, Message) and m.level == "warning"]
    assert warnings and "NaN/infinite" in warnings[0]
    _, outcome = drain(_job(np.full((12, 12, 12), np.nan, np.float32), tiny_weights).events())
    assert isinstance(outcome, JobFailed) and "no finite values" in outcome.message


def test_cancel_inference_midway(model_card):
    model, card = model_card
    image = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    seen = []

    def stop():
        return len(seen) >= 3

    with pytest.raises(PredictionCancelled, match="after 3/"):
        predict(  # one window a pass: Cancel is checked between passes
            image, model, card, spacing=(1, 1, 1), device="cpu", skip_uniform=False,
            batch_size=1, progress=lambda done, total: seen.append((done, total)),
            should_stop=stop,
        )  # fmt: skip
    assert len(seen) == 3 and seen[-1][0] < seen[-1][1]


def test_cancel_segment_job_midway(tiny_weights):
    from napari_vnet.workflows.segment import JobCancelled, Progress

    image = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    job = _job(image, tiny_weights, batch_size=1)  # Cancel is checked between passes
    gen = job.events()
    progress = []
    try:
        while True:
            item = next(gen)
            if isinstance(item, Progress):
                progress.append(item)
                if len(progress) == 2:
                    job.stop()
    except StopIteration as stop:
        outcome = stop.value
    assert isinstance(outcome, JobCancelled)
    assert progress[-1].done < progress[-1].total


@pytest.mark.parametrize(
    "patch, batch, overlap",
    [((4096, 4096, 4096), 1, 0.5), ((1024, 1024, 1024), 1, 0.5), ((32, 32, 32), 10**6, 0.97)],
)
def test_absurd_patch_or_batch_is_refused_before_allocating(model_card, patch, batch, overlap):
    """Refused by an estimate, in milliseconds: nothing near the size was allocated."""
    model, card = model_card
    card.patch_size = patch
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    image = np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32)
    t0 = time.perf_counter()
    with pytest.raises(InferenceMemoryError) as err:
        predict(image, model, card, spacing=(1, 1, 1), device="cpu", batch_size=batch,
                overlap=overlap)  # fmt: skip
    assert time.perf_counter() - t0 < 5.0 and not calls
    message = str(err.value)
    assert "not enough memory" in message and "GB" in message
    assert "smaller patch size" in message and "batch size 1" in message


def test_absurd_patch_in_the_segment_job_gives_advice(drain, tmp_path):
    from napari_vnet.workflows.segment import JobFailed

    card = tiny_card(patch=(2048, 2048, 2048))
    weights = save_checkpoint(build_model(card), card, tmp_path / "huge_patch.pt")
    _, outcome = drain(_job(np.zeros((16, 16, 16), np.float32), weights).events())
    assert isinstance(outcome, JobFailed)
    assert "Out of memory while segmenting 'scan'" in outcome.message
    assert "smaller patch size" in outcome.message and "Try:" in outcome.message


# =================================================================== fine-tuning


@pytest.mark.parametrize("base", [False, True])
def test_finetune_with_empty_labels_is_refused(drain, tmp_path, tiny_weights, base):
    image, labels = blob_pair()
    pair = TrainingPair(image, np.zeros_like(labels), (1.0, 1.0, 1.0))
    kw = {"base": tiny_weights} if base else {}
    config = cfg(arch=None, arch_kwargs={}) if base else cfg()
    with pytest.raises(TrainingError, match="no foreground value|empty or only background"):
        drain(finetune([pair], config, out=tmp_path / "out.pt", **kw))
    assert not (tmp_path / "out.pt").exists()


def test_finetune_labels_of_another_shape_are_refused(drain, tmp_path):
    image, labels = blob_pair()
    pair = TrainingPair(image, labels[:, :-2], (1.0, 1.0, 1.0), name="case7")
    with pytest.raises(TrainingError, match=r"case7: labels shape \(16, 14, 16\) differs"):
        drain(finetune([pair], cfg(), out=tmp_path / "out.pt"))


def test_finetune_labels_with_another_spacing_are_resampled_onto_the_image(drain, tmp_path):
    image, labels = blob_pair((16, 16, 16))
    img = Volume(image, spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0), direction=np.eye(3))
    lab = Volume(labels[::2, ::2, ::2].copy(), spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5),
                 direction=np.eye(3))  # fmt: skip
    _, summary = drain(finetune([TrainingPair(img, lab)], cfg(), out=tmp_path / "out.pt"))
    assert summary["iterations"] == 3 and (tmp_path / "out.pt").exists()


def test_finetune_label_value_not_in_the_card(drain, tmp_path, tiny_weights, caplog):
    from napari_vnet.training import plan_training

    image, labels = blob_pair()
    labels[2:4, 2:4, 2:4] = 7  # the base card has 0=background, 1=liver only
    pair = TrainingPair(image, labels, (1.0, 1.0, 1.0), name="case with kidney")
    # the engine's training plan (CLI and dock alike): the value becomes a new class
    with caplog.at_level(logging.INFO, logger="napari_vnet.training"):
        _, summary = drain(
            finetune([pair], cfg(arch=None), base=tiny_weights, out=tmp_path / "a.pt")
        )
    assert [(c["value"], c["name"]) for c in summary["classes"]] == [
        (0, "background"), (1, "liver"), (7, "class_7"),
    ]  # fmt: skip
    assert any("new label values become new classes" in r.message for r in caplog.records)
    # named through the config (the Fine-tune dock's "Class names", the CLI's --class-names)
    classes = plan_training([pair], cfg(arch=None, class_names={7: "kidney"}),
                            base=tiny_weights).classes  # fmt: skip
    assert [(c.value, c.name) for c in classes] == [(0, "background"), (1, "liver"), (7, "kidney")]
    _, summary = drain(finetune([pair], cfg(arch=None, class_names={7: "kidney"}),
                              base=tiny_weights, out=tmp_path / "b.pt"))  # fmt: skip
    model, card = load_checkpoint(tmp_path / "b.pt")
    assert card.label_values == [0, 1, 7] and model.head.out_channels == 3


def test_cancel_finetune_midway_keeps_a_loadable_checkpoint(drain, tmp_path):
    image, labels = blob_pair()
    stop_after = {"n": 0}

    def should_stop():
        stop_after["n"] += 1
        return stop_after["n"] > 3

    out = tmp_path / "run.pt"
    events, summary = drain(
        finetune(
            [TrainingPair(image, labels, (1.0, 1.0, 1.0))],
            cfg(iterations=50),
            out=out,
            should_stop=should_stop,
        )
    )
    assert summary["cancelled"] and summary["iterations"] == len(events) == 3
    model, card = load_checkpoint(out)
    assert card.label_values == [0, 1]
    assert summary["resume_file"]  # can be continued with TrainConfig(resume=True)
    assert not list(tmp_path.glob(".*.tmp"))


def test_closing_the_finetune_generator_midway(tmp_path):
    """A napari worker's quit() closes the generator: best + resume files are kept."""
    image, labels = blob_pair()
    out = tmp_path / "closed.pt"
    gen = finetune([TrainingPair(image, labels, (1.0, 1.0, 1.0))], cfg(iterations=50,
                   eval_every=100), out=out)  # fmt: skip
    next(gen)
    next(gen)
    gen.close()
    load_checkpoint(out)
    assert not list(tmp_path.glob(".*.tmp"))


def test_absurd_training_batch_is_refused_before_allocating(drain, tmp_path):
    image, labels = blob_pair((32, 32, 32))
    t0 = time.perf_counter()
    with pytest.raises(TrainingError, match="not enough memory: batch size 100000000") as err:
        drain(
            finetune(
                [TrainingPair(image, labels, (1.0, 1.0, 1.0))],
                cfg(batch_size=10**8, patch_size=(32, 32, 32)),
                out=tmp_path / "x.pt",
            )
        )
    assert "use a batch size of 2-4" in str(err.value)
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "x.pt").exists()


# =================================================================== unwritable output


def _unwritable_targets(tmp_path):
    """Paths that fail even for root: under a regular file, and in /proc."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    return [a_file / "out", a_file / "sub" / "out", tmp_path.parent / "/proc/napari-vnet/out"]


def test_training_output_not_writable_fails_before_training(tmp_path):
    image, labels = blob_pair()
    for target in _unwritable_targets(tmp_path):
        out = target.with_suffix(".pt")
        gen = finetune([TrainingPair(image, labels, (1.0, 1.0, 1.0))], cfg(), out=out)
        with pytest.raises(TrainingError, match="cannot save the weights there") as err:
            next(gen)  # refused before the first iteration
        assert_names(str(err.value), out)


def test_checkpoint_output_not_writable(tmp_path, model_card):
    model, card = model_card
    for target in _unwritable_targets(tmp_path):
        with pytest.raises(OSError, match="cannot save the checkpoint") as err:
            save_checkpoint(model, card, target.with_suffix(".pt"))
        assert str(target.with_suffix(".pt")) in str(err.value)


def test_volume_output_not_writable(tmp_path):
    for target in _unwritable_targets(tmp_path):
        path = target.with_suffix(".nii.gz")
        with pytest.raises(VolumeWriteError) as err:
            write_volume(np.zeros((4, 5, 6), np.uint8), path)
        assert str(path) in str(err.value)
    notes = tmp_path / "notes.txt"
    with pytest.raises(VolumeWriteError, match="is a file, not a folder"):
        write_volume(np.zeros((4, 5, 6), np.uint8), notes / "mask.nii.gz")


# =================================================================== disk full


class _DiskFills:
    """A file wrapper whose write() fails with ENOSPC after ``limit`` bytes."""

    def __init__(self, fh, limit):
        self.fh, self.limit, self.written = fh, limit, 0

    def write(self, data):
        room = self.limit - self.written
        if len(data) > room:
            self.fh.write(bytes(memoryview(data)[: max(room, 0)]))
            self.written = self.limit
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


@pytest.fixture
def full_disk(monkeypatch):
    """torch.save (as used by save_checkpoint) hits a full disk midway through the file."""
    real_save = torch.save
    hits = []

    def save(obj, f, *args, **kwargs):
        hits.append(1)
        return real_save(obj, _DiskFills(f, 2000), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return hits


def test_disk_full_during_checkpoint_save_keeps_the_old_one(tmp_path, model_card, full_disk):
    model, card = model_card
    path = tmp_path / "model.pt"
    with pytest.MonkeyPatch.context() as mp:  # the first save works
        mp.setattr(torch, "save", torch.serialization.save)
        save_checkpoint(model, card, path)
    before = path.read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError) as err:
        save_checkpoint(model, card, path)
    assert err.value.errno == errno.ENOSPC and str(path) in str(err.value)
    assert full_disk, "the full-disk fake was not used"
    assert path.read_bytes() == before  # old checkpoint intact ...
    load_checkpoint(path)  # ... and loadable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp litter


def test_disk_full_during_training_keeps_the_previous_weights(
    drain, tmp_path, tiny_weights, monkeypatch
):
    image, labels = blob_pair()
    out = tmp_path / "weights" / "tuned.pt"
    pair = TrainingPair(image, labels, (1.0, 1.0, 1.0))
    drain(finetune([pair], cfg(arch=None), base=tiny_weights, out=out))  # a first, good run
    before = out.read_bytes()
    real_save = torch.serialization.save
    monkeypatch.setattr(
        torch, "save", lambda obj, f, *a, **k: real_save(obj, _DiskFills(f, 3000), *a, **k)
    )
    with pytest.raises(OSError) as err:
        drain(finetune([pair], cfg(arch=None), base=tiny_weights, out=out))
    assert err.value.errno == errno.ENOSPC and "tuned" in str(err.value)
    assert out.read_bytes() == before
    load_checkpoint(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.pt", "tuned.pt"]
