"""Fine-tuning engine: learning, sparse labels, cancel/resume, atomic checkpoints, data prep.

Tiny networks and volumes (16-24 voxels a side) keep this file cheap on 2 shared cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_vnet.io import Volume
from napari_vnet.models import ModelCard, build_model, load_checkpoint, save_checkpoint
from napari_vnet.training import (
    PatchSampler,
    TrainConfig,
    TrainingError,
    TrainingPair,
    finetune,
    parse_classes,
    prepare_cases,
    resume_path,
    run_training,
)
from napari_vnet.training.transfer import _transfer_weights

TINY = {
    "unet3d": {"channels": [4, 8, 16]},
    "vnet": {"channels": [4, 8, 16], "kernel_size": 3},
    "vox2vox": {"channels": [4, 8], "bottleneck_blocks": 1},
}


def sphere_pair(shape=(16, 24, 24), value=1, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = [s // 2 for s in shape]
    labels = (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2] + 1) ** 2) < 30).astype(np.uint8)
    image = rng.normal(0, 0.2, shape).astype(np.float32) + labels
    return image, labels * value


def config(arch="unet3d", **kw):
    base = dict(
        arch=arch,
        arch_kwargs=TINY[arch],
        iterations=4,
        patch_size=(16, 16, 16),
        batch_size=2,
        lr=3e-3,
        warmup=0.0,
        eval_every=2,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet3d", "vnet", "vox2vox"])
def test_loss_decreases_for_each_architecture(drain, arch, tmp_path):
    image, labels = sphere_pair()
    cfg = config(arch, iterations=10, augment=False, eval_every=10)
    events, summary = drain(finetune([TrainingPair(image, labels)], cfg, out=tmp_path / "m.pt"))
    key = "gdl" if arch == "vox2vox" else None
    losses = [e["losses"][key] if key else e["loss"] for e in events]
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.02, losses
    model, card = load_checkpoint(summary["out"])
    assert card.arch == arch and card.label_values == [0, 1]
    assert card.history["iterations"] == 10 and card.history["run"]["started_from"] == "scratch"
    assert not resume_path(tmp_path / "m.pt").exists()  # removed after a finished run
    if arch == "vox2vox":
        from napari_vnet.models import load_discriminator

        assert load_discriminator(summary["out"]) is not None
    # event contract
    e = events[-1]
    assert {"iteration", "total", "loss", "losses", "lr", "seconds"} <= set(e)
    assert e["iteration"] == e["total"] == 10


@pytest.mark.slow
def test_sparse_labels_train_and_unannotated_voxels_are_invisible(drain, tmp_path):
    image, labels = sphere_pair()
    annotated = [5, 8, 11]  # three annotated z slices
    garbage = labels.copy()
    rng = np.random.default_rng(1)
    outside = np.ones(labels.shape, bool)
    outside[annotated] = False
    garbage[outside] = rng.integers(0, 2, outside.sum())  # every unannotated label scrambled
    assert (garbage != labels).any()
    runs = []
    for i, lab in enumerate((labels, garbage)):
        torch.manual_seed(0)
        cfg = config(iterations=8, classes="1=organ", eval_every=100)
        events, summary = drain(
            finetune(
                [TrainingPair(image, lab, annotated=annotated)], cfg, out=tmp_path / f"m{i}.pt"
            )
        )
        runs.append(([e["loss"] for e in events], summary))
    (loss_a, sum_a), (loss_b, sum_b) = runs
    assert loss_a == loss_b  # bit-identical losses at every iteration
    state_a = load_checkpoint(sum_a["out"])[0].state_dict()
    state_b = load_checkpoint(sum_b["out"])[0].state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert np.mean(loss_a[-3:]) < np.mean(loss_a[:3])  # and it still learns


def test_ignore_index_is_unannotated():
    image, labels = sphere_pair()
    labels = labels.astype(np.int16)
    labels[:4] = -1
    cases, classes, _ = prepare_cases(
        [TrainingPair(image, labels)], None, spacing=None, normalization={"kind": "zscore"},
        ignore_index=-1,
    )  # fmt: skip
    assert [c.value for c in classes] == [0, 1]  # -1 is not a class
    assert not cases[0].mask[:4].any() and cases[0].mask[4:].all()


def test_cancel_keeps_best_checkpoint_and_resume_continues(drain, tmp_path):
    image, labels = sphere_pair()
    out = tmp_path / "m.pt"
    seen = []
    gen = finetune(
        [TrainingPair(image, labels)],
        config(iterations=10, eval_every=3),
        out=out,
        should_stop=lambda: len(seen) >= 5,
    )
    events, summary = [], None
    while True:
        try:
            e = next(gen)
        except StopIteration as stop:
            summary = stop.value
            break
        seen.append(e)
        events.append(e)
    assert summary["cancelled"] and summary["iterations"] == 5
    model, card = load_checkpoint(out)  # the best checkpoint is on disk and loadable
    assert card.history["iterations"] in (3, 5)
    assert resume_path(out).exists() and summary["resume_file"] == str(resume_path(out))
    # resume: continues at iteration 6 and ends at 10
    events2, summary2 = drain(
        finetune(
            [TrainingPair(image, labels)], config(iterations=10, eval_every=3, resume=True), out=out
        )
    )
    assert [e["iteration"] for e in events2] == list(range(6, 11))
    assert summary2["iterations"] == 10 and not summary2["cancelled"]
    assert not resume_path(out).exists()
    assert load_checkpoint(out)[1].history["iterations"] >= 3


def test_closing_the_generator_writes_checkpoint_and_resume_file(tmp_path):
    image, labels = sphere_pair()
    out = tmp_path / "m.pt"
    gen = finetune([TrainingPair(image, labels)], config(iterations=50, eval_every=100), out=out)
    next(gen)
    next(gen)
    gen.close()  # what a napari GeneratorWorker.quit() does
    model, card = load_checkpoint(out)
    assert card.history["iterations"] == 2
    assert resume_path(out).exists()


def test_failed_checkpoint_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    image, labels = sphere_pair()
    out = tmp_path / "m.pt"
    run_training([TrainingPair(image, labels)], config(iterations=2), out=out)
    before = out.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]

    def killed_save(obj, f, *args, **kwargs):  # dies half-way through writing
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(OSError, match="simulated"):
        run_training([TrainingPair(image, labels)], config(iterations=2, seed=3), out=out)
    monkeypatch.undo()
    assert out.read_bytes() == before
    load_checkpoint(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_time_budget_stops_the_run(drain, tmp_path):
    image, labels = sphere_pair()
    events, summary = drain(
        finetune(
            [TrainingPair(image, labels)],
            config(iterations=None, minutes=0.03, eval_every=1000),
            out=tmp_path / "m.pt",
        )
    )
    assert summary["iterations"] == len(events) >= 1
    assert 1.8 <= summary["seconds"] < 60
    assert (tmp_path / "m.pt").exists()


def test_validation_split_reports_dice(drain, tmp_path):
    image, labels = sphere_pair()
    events, summary = drain(
        finetune(
            [TrainingPair(image, labels)],
            config(iterations=4, val_fraction=0.3),
            out=tmp_path / "m.pt",
        )
    )
    vals = [e["val_dice"] for e in events if "val_dice" in e]
    assert len(vals) == 2 and all(0.0 <= v <= 1.0 for v in vals)
    assert summary["val_dice"] == max(vals)
    card = load_checkpoint(tmp_path / "m.pt")[1]
    assert card.history["val_dice"] == summary["val_dice"]
    assert card.history["run"]["validation_cases"] == ["pair 0 (validation slab)"]


def test_finetune_with_new_classes_reinitialises_the_output_layer(drain, tmp_path):
    base_card = ModelCard(arch="unet3d", arch_kwargs=TINY["unet3d"], spacing=(1.0, 1.0, 1.0))
    base_card.classes = parse_classes("1=organ")
    base_model = build_model(base_card)
    save_checkpoint(base_model, base_card, tmp_path / "base.pt")
    image, labels = sphere_pair()
    labels = labels.copy()
    labels[:3] = 7  # a new class
    events, summary = drain(
        finetune(
            [TrainingPair(image, labels)],
            TrainConfig(iterations=2, classes="1=organ,7=slab", patch_size=(16, 16, 16)),
            base=tmp_path / "base.pt",
            out=tmp_path / "new.pt",
        )
    )
    model, card = load_checkpoint(tmp_path / "new.pt")
    assert card.label_values == [0, 1, 7] and model.out_channels == 3
    run = card.history["run"]
    assert run["reinitialised_output_layer"] and run["started_from"] == "base.pt"
    assert "head.weight" in run["reinitialised_tensors"]
    assert [c["value"] for c in run["previous_classes"]] == [0, 1]
    # the rows of classes kept from the base are copied, not re-initialised
    fresh = build_model(card)
    _transfer_weights(fresh, base_model.state_dict(), base_card.classes, card.classes)
    old = base_model.state_dict()["head.weight"]
    assert torch.equal(fresh.state_dict()["head.weight"][:2], old)
    body = [k for k in fresh.state_dict() if not k.startswith("head.")]
    assert body and all(
        torch.equal(fresh.state_dict()[k], base_model.state_dict()[k]) for k in body
    )


def test_classes_select_values_and_others_become_background():
    image, _ = sphere_pair()
    labels = np.zeros(image.shape, np.uint8)
    labels[2:5] = 5
    labels[6:9] = 1
    labels[10:12] = 6
    cases, classes, _ = prepare_cases(
        [TrainingPair(image, labels)], parse_classes("5=liver,1=spleen"), spacing=None,
        normalization={"kind": "zscore"},
    )  # fmt: skip
    assert [(c.value, c.name) for c in classes] == [(0, "background"), (5, "liver"), (1, "spleen")]
    t = cases[0].target
    assert (t[2:5] == 1).all() and (t[6:9] == 2).all() and (t[10:12] == 0).all()
    with pytest.raises(TrainingError, match="VALUE=NAME"):
        parse_classes("liver")


def test_files_with_flipped_label_geometry_are_aligned_and_resampled(tmp_path):
    image, labels = sphere_pair()
    labels[:, :5, :] = 2  # asymmetric in y so a flip would show
    img = sitk.GetImageFromArray(image)
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "img.nii.gz"))
    # labels stored with rows flipped: direction diag(1, -1, 1), origin at the last row
    lab = sitk.GetImageFromArray(labels[:, ::-1, :].copy())
    lab.SetSpacing((1.0, 1.0, 2.0))
    lab.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    lab.SetOrigin((0.0, float(labels.shape[1] - 1), 0.0))
    sitk.WriteImage(lab, str(tmp_path / "lab.nii.gz"))
    pair = TrainingPair(str(tmp_path / "img.nii.gz"), str(tmp_path / "lab.nii.gz"))
    cases, classes, spacing = prepare_cases(
        [pair], None, spacing=None, normalization={"kind": "none"}
    )
    assert spacing == (2.0, 1.0, 1.0)
    lut = {c.value: i for i, c in enumerate(classes)}
    np.testing.assert_array_equal(cases[0].target, np.vectorize(lut.get)(labels))
    # resampled to 2 mm: half the rows and columns, labels still on the anatomy
    cases2, _, _ = prepare_cases(
        [pair], classes, spacing=(2.0, 2.0, 2.0), normalization={"kind": "none"}
    )
    assert cases2[0].shape == (16, 12, 12)
    assert (cases2[0].target[:, :2] == lut[2]).all() and (cases2[0].target[:, 3:] != lut[2]).all()


def test_patch_sampler_oversamples_foreground_and_augments_consistently():
    image, labels = sphere_pair(shape=(24, 32, 32))
    cases, _, _ = prepare_cases(
        [TrainingPair(labels.astype(np.float32), labels)], None, spacing=None,
        normalization={"kind": "none"},
    )  # fmt: skip
    sampler = PatchSampler(cases, (8, 8, 8), foreground_fraction=1.0, augment=True, seed=0)
    img, tgt, msk = sampler.sample(16)
    assert img.shape == (16, 1, 8, 8, 8) and tgt.shape == (16, 8, 8, 8) and msk is None
    assert all((t > 0).any() for t in tgt)  # every patch holds foreground
    # flips/rotations move image and labels together; intensity changes stay small
    np.testing.assert_array_equal(img[:, 0] > 0.5, tgt > 0)
    plain = PatchSampler(cases, (8, 8, 8), foreground_fraction=0.0, augment=False, seed=0)
    frac = np.mean([(plain.sample(1)[1] > 0).any() for _ in range(40)])
    assert frac < 0.9  # without oversampling many patches miss the small sphere


def test_sparse_sampler_patches_always_hold_annotated_voxels():
    image, labels = sphere_pair(shape=(32, 16, 16))
    cases, _, _ = prepare_cases(
        [TrainingPair(image, labels, annotated=[3])], parse_classes("1=organ"), spacing=None,
        normalization={"kind": "zscore"},
    )  # fmt: skip
    sampler = PatchSampler(cases, (8, 8, 8), foreground_fraction=0.3, seed=0)
    _, _, msk = sampler.sample(12)
    assert msk is not None and all(m.any() for m in msk)


def test_sparse_slices_resampled_to_a_coarser_spacing_are_all_kept():
    # 5 corrected 2-mm slices, fine-tuned at a base model's 3.85 mm: nearest neighbour
    # alone kept 3 of them (14 and 18 fell between output slices)
    z, y, x = np.indices((20, 16, 16))
    labels = ((y - 8) ** 2 + (x - 8) ** 2 < (z % 7 + 2) ** 2).astype(np.uint8)  # differs per z
    image = Volume(labels.astype(np.float32), spacing=(2.0, 1.0, 1.0))
    slices = [2, 6, 10, 14, 18]
    cases, _, spacing = prepare_cases(
        [TrainingPair(image, labels, annotated=slices)], parse_classes("1=organ"),
        spacing=(3.85, 1.0, 1.0), normalization={"kind": "zscore"},
    )  # fmt: skip
    (case,) = cases
    assert spacing == (3.85, 1.0, 1.0) and case.shape == (10, 16, 16)
    kept = np.flatnonzero(case.mask.reshape(10, -1).any(1))
    assert len(kept) == 5
    # each kept output slice carries one annotated slice's labels, within half a slice
    for k in kept:
        src = min(slices, key=lambda s: abs(s * 2.0 - k * 3.85))
        assert abs(src * 2.0 - k * 3.85) <= 3.85 / 2
        np.testing.assert_array_equal(case.target[k], labels[src])
        assert case.mask[k].all()
    # dense labels (no mask) still resample by plain nearest neighbour
    dense, _, _ = prepare_cases(
        [TrainingPair(image, labels)], parse_classes("1=organ"), spacing=(3.85, 1.0, 1.0),
        normalization={"kind": "zscore"},
    )  # fmt: skip
    np.testing.assert_array_equal(dense[0].target[7], labels[13])  # round(7 * 1.925) = 13


def test_small_volume_is_padded_to_the_patch(drain, tmp_path):
    image, labels = sphere_pair(shape=(6, 20, 20))
    events, summary = drain(
        finetune(
            [TrainingPair(image, labels)],
            config(iterations=2, patch_size=(16, 16, 16)),
            out=tmp_path / "m.pt",
        )
    )
    assert summary["patch_size"] == [6, 16, 16]  # clipped to the data along z
    assert np.isfinite(events[-1]["loss"])


def test_bad_inputs_raise_specific_errors(drain, tmp_path):
    image, labels = sphere_pair()
    with pytest.raises(TrainingError, match="pair 0: labels shape"):
        prepare_cases([TrainingPair(image, labels[:-1])], None, spacing=None, normalization={})
    with pytest.raises(TrainingError, match="no foreground"):
        prepare_cases([TrainingPair(image, labels * 0)], None, spacing=None, normalization={})
    with pytest.raises(TrainingError, match="slice indices"):
        prepare_cases(
            [TrainingPair(image, labels, annotated=[99])], None, spacing=None, normalization={}
        )
    with pytest.raises(TrainingError, match="architecture"):
        drain(finetune([TrainingPair(image, labels)], TrainConfig(), out=tmp_path / "m.pt"))


def test_volume_inputs_keep_their_spacing():
    image, labels = sphere_pair()
    vol = Volume(image, spacing=(2.0, 0.5, 0.5))
    cases, _, spacing = prepare_cases(
        [TrainingPair(vol, Volume(labels, spacing=(2.0, 0.5, 0.5)))], None, spacing=(2.0, 1.0, 1.0),
        normalization={"kind": "zscore"},
    )  # fmt: skip
    assert spacing == (2.0, 1.0, 1.0) and cases[0].shape == (16, 12, 12)


def test_output_channels_follow_class_names_then_values():
    from napari_vnet.training.transfer import _matching_channels

    phantom = parse_classes("1=liver,2=spleen,3=kidneys")
    ct = parse_classes("5=liver,1=spleen,6=stomach")
    assert _matching_channels(phantom, ct) == [(0, 0), (1, 1), (2, 2)]
    # same number of classes in another order: the head rows are permuted, not kept
    old_card = ModelCard(
        arch="unet3d", arch_kwargs=TINY["unet3d"], classes=parse_classes("1=a,2=b")
    )
    old = build_model(old_card)
    new_card = ModelCard(
        arch="unet3d", arch_kwargs=TINY["unet3d"], classes=parse_classes("2=b,1=a")
    )
    new = build_model(new_card)
    reinit = _transfer_weights(new, old.state_dict(), old_card.classes, new_card.classes)
    assert set(reinit) == {"head.weight", "head.bias"}
    w_old, w_new = old.state_dict()["head.weight"], new.state_dict()["head.weight"]
    assert torch.equal(w_new[1], w_old[2]) and torch.equal(w_new[2], w_old[1])


@pytest.mark.slow
def test_vox2vox_adversarial_loss_ignores_unannotated_voxels(drain, tmp_path):
    """The discriminator sees segmentations masked to the annotated voxels, so the
    adversarial terms (generator and discriminator) are invariant too."""
    image, labels = sphere_pair()
    annotated = [6, 9]
    garbage = labels.copy()
    outside = np.ones(labels.shape, bool)
    outside[annotated] = False
    garbage[outside] = 1 - garbage[outside]
    runs = []
    for i, lab in enumerate((labels, garbage)):
        torch.manual_seed(0)
        cfg = config("vox2vox", iterations=3, classes="1=organ", eval_every=100)
        events, _ = drain(
            finetune([TrainingPair(image, lab, annotated=annotated)], cfg, out=tmp_path / f"{i}.pt")
        )
        runs.append([e["losses"] for e in events])
    assert runs[0] == runs[1]
    assert all(set(r) == {"gdl", "ce", "adversarial", "discriminator"} for r in runs[0])


def test_a_collapsed_class_gets_gradient_from_cross_entropy_not_from_generalized_dice():
    """Why the Vox2Vox generator loss has a cross-entropy term: once a class's softmax
    probability is ~0 everywhere, the generalized Dice gradient reaching its logits
    vanishes (through p * (1 - p)), so the class never comes back; the cross entropy's
    does not vanish. (The shipped Vox2Vox weights trained without it had liver and spleen
    Dice 0.000.)"""
    from napari_vnet.training.losses import cross_entropy_loss, generalized_dice_loss

    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6, 2:6] = 1  # a large organ
    target[:, 0, 0, :4] = 2  # a small one, learnt
    logits = torch.randn(1, 3, 8, 8, 8, generator=gen)
    logits[:, 2] += 10.0 * (target == 2)
    logits[:, 1] = -25.0  # class 1 collapsed: predicted nowhere
    grads = {}
    for name, fn in (("gdl", generalized_dice_loss), ("ce", cross_entropy_loss)):
        lg = logits.clone().requires_grad_(True)
        fn(lg, target).backward()
        grads[name] = lg.grad[:, 1][target == 1].abs().max().item()
    assert grads["gdl"] < 1e-9
    assert grads["ce"] > 1e-4


@pytest.mark.slow
def test_vox2vox_generator_loss_weights_cross_entropy_inside_lambda(drain, tmp_path):
    """loss = adversarial + gan_lambda * (gdl + gan_ce_weight * ce); gan_ce_weight = 0 is
    the paper's loss (no "ce" part)."""
    image, labels = sphere_pair()
    pair = TrainingPair(image, labels)
    cfg = config("vox2vox", iterations=2, eval_every=100, gan_lambda=7.0, gan_ce_weight=0.5)
    events, summary = drain(finetune([pair], cfg, out=tmp_path / "ce.pt"))
    for e in events:
        p = e["losses"]
        assert set(p) == {"gdl", "ce", "adversarial", "discriminator"}
        assert p["ce"] > 0
        expected = p["adversarial"] + 7.0 * (p["gdl"] + 0.5 * p["ce"])
        assert e["loss"] == pytest.approx(expected, rel=1e-5)
    card = load_checkpoint(summary["out"])[1]
    assert card.history["run"]["config"]["gan_ce_weight"] == 0.5

    cfg = config("vox2vox", iterations=2, eval_every=100, gan_lambda=7.0, gan_ce_weight=0.0)
    events, _ = drain(finetune([pair], cfg, out=tmp_path / "paper.pt"))
    for e in events:
        p = e["losses"]
        assert set(p) == {"gdl", "adversarial", "discriminator"}
        assert e["loss"] == pytest.approx(p["adversarial"] + 7.0 * p["gdl"], rel=1e-5)


def test_finetuned_card_keeps_the_base_inference_window(tmp_path):
    """Fine-tuning trains on small patches but must not shrink the base's inference window."""
    from napari_vnet.models import ClassInfo
    from napari_vnet.training import run_training

    card = ModelCard(
        arch="unet3d",
        arch_kwargs={"channels": [4, 8], "norm": "instance"},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "organ")],
        normalization={"kind": "zscore"},
        spacing=(1.0, 1.0, 1.0),
        patch_size=(24, 32, 32),
    )
    base = tmp_path / "base.pt"
    save_checkpoint(build_model(card), card, base)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(24, 32, 32)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[8:16, 10:20, 10:20] = 1
    image[labels == 1] += 3
    out = tmp_path / "ft.pt"
    run_training(
        [TrainingPair(image, labels, spacing=(1.0, 1.0, 1.0))],
        TrainConfig(iterations=2, patch_size=(8, 16, 16), batch_size=1, device="cpu"),
        base=base,
        out=out,
    )
    _, new_card = load_checkpoint(out)
    assert tuple(new_card.patch_size) == (24, 32, 32)


def test_finetune_keeps_matched_class_channels_bit_identical_at_iteration_0(tmp_path):
    """Classes the base knows under other label values and in another order (phantom
    liver=1, spleen=2 -> CT liver=5, spleen=1) keep their output channel's weights exactly;
    only the new class (stomach) starts fresh, and every other tensor is the base's."""
    base_card = ModelCard(
        arch="unet3d",
        arch_kwargs=TINY["unet3d"],
        classes=parse_classes("1=liver,2=spleen,3=kidneys"),
        spacing=(1.0, 1.0, 1.0),
        normalization={"kind": "zscore"},
        patch_size=(16, 16, 16),
    )
    torch.manual_seed(123)  # not the run's seed (0): its fresh rows must differ
    base_model = build_model(base_card)
    save_checkpoint(base_model, base_card, tmp_path / "base.pt")
    image, labels = sphere_pair()
    labels = labels * 5  # the organ is "liver" under the CT's value 5
    labels[:3] = 1  # spleen (value 1, the base's *liver* value)
    labels[-3:] = 6  # stomach: new
    # lr 0: one full training iteration (sampling, loss, backward, AdamW step) that must
    # leave every weight as the channel mapping put it.
    summary = run_training(
        [TrainingPair(image, labels)],
        TrainConfig(iterations=1, lr=0.0, classes="5=liver,1=spleen,6=stomach", batch_size=1),
        base=tmp_path / "base.pt",
        out=tmp_path / "ft.pt",
    )
    assert summary["iterations"] == 1
    model, card = load_checkpoint(tmp_path / "ft.pt")
    assert [(c.value, c.name) for c in card.classes] == [
        (0, "background"), (5, "liver"), (1, "spleen"), (6, "stomach"),
    ]  # fmt: skip
    old, new = base_model.state_dict(), model.state_dict()
    for key in ("head.weight", "head.bias"):
        assert torch.equal(new[key][0], old[key][0])  # background
        assert torch.equal(new[key][1], old[key][1])  # liver: by name, not by value 5
        assert torch.equal(new[key][2], old[key][2])  # spleen: by name, not value 1 (liver)
        assert not any(torch.equal(new[key][3], old[key][i]) for i in range(4))  # fresh
    body = [k for k in new if not k.startswith("head.")]
    assert body and all(torch.equal(new[k], old[k]) for k in body)
    assert card.history["run"]["kept_classes"] == [
        "background (channel 0) -> background (channel 0)",
        "liver (channel 1) -> liver (channel 1)",
        "spleen (channel 2) -> spleen (channel 2)",
    ]


def test_finetune_on_a_thin_volume_trains_on_the_inference_window(drain, tmp_path):
    """A fine-tuned model keeps its base's inference window, and inference pads a thin
    volume up to it (data first, then the image minimum). Training must see the same
    windows: the patch is not clipped to the data and the padding matches inference."""
    from napari_vnet.inference import predict
    from napari_vnet.training.validation import predict_channels as _predict_case

    base_card = ModelCard(
        arch="unet3d",
        arch_kwargs={"channels": [4, 8], "norm": "instance"},
        classes=parse_classes("1=organ"),
        spacing=(1.0, 1.0, 1.0),
        normalization={"kind": "zscore"},
        patch_size=(16, 16, 16),
    )
    torch.manual_seed(0)
    save_checkpoint(build_model(base_card), base_card, tmp_path / "base.pt")
    image, labels = sphere_pair(shape=(6, 24, 24))
    events, summary = drain(
        finetune(
            [TrainingPair(image, labels)],
            TrainConfig(iterations=2, batch_size=1, lr=1e-3),
            base=tmp_path / "base.pt",
            out=tmp_path / "ft.pt",
        )
    )
    assert summary["patch_size"] == [16, 16, 16]  # not clipped to the 6 slices
    assert np.isfinite(events[-1]["loss"])
    # a larger training patch becomes the window the fine-tuned model segments with
    run_training(
        [TrainingPair(image, labels)],
        TrainConfig(iterations=1, batch_size=1, patch_size=(8, 24, 24)),
        base=tmp_path / "base.pt",
        out=tmp_path / "ft_big.pt",
    )
    assert tuple(load_checkpoint(tmp_path / "ft_big.pt")[1].patch_size) == (8, 24, 24)
    # the sampler pads as inference does: data at the low end, the minimum after it
    cases, _, _ = prepare_cases(
        [TrainingPair(image, labels)], parse_classes("1=organ"), spacing=None,
        normalization={"kind": "zscore"},
    )  # fmt: skip
    sampler = PatchSampler(cases, (16, 16, 16), augment=False, seed=0)
    img, _, msk = sampler.sample(3)
    for i in range(3):
        assert (img[i, 0, 6:] == cases[0].image.min()).all() and not msk[i, 6:].any()
        assert msk[i, :6].all()
        assert any(np.array_equal(img[i, 0, :6], cases[0].image[:, y : y + 16, x : x + 16])
                   for y in range(9) for x in range(9))  # fmt: skip
    # validation predicts in the same padded windows as inference
    model, card = load_checkpoint(tmp_path / "ft.pt")
    model.eval()
    from napari_vnet.transforms import normalize_intensity

    crop = image[:, :16, :16]
    net_input = normalize_intensity(crop, card.normalization)
    val = _predict_case(model, net_input, (16, 16, 16), torch.device("cpu"), None)
    ref = predict(crop, model, card, spacing=(1.0, 1.0, 1.0), amp=False)
    assert val.shape == crop.shape
    np.testing.assert_array_equal(val, ref.labels)


# ----------------------------------------------------------------------------- bf16


@pytest.mark.parametrize(("kernel", "depth"), [(3, 2), (5, 3)])
def test_bf16_weight_gradient_of_a_conv_on_few_slices_matches_fp32(kernel, depth):
    """oneDNN's CPU bf16 weight gradient of conv3d is garbage (inf, or ~1e26) when the input
    has fewer slices than the kernel (but more than one); under the guard it is the fp32
    gradient of the bf16-rounded values, to bf16 accuracy."""
    from napari_vnet.runtime import bf16_conv_guard

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 16, kernel, padding=kernel // 2)
    x = torch.randn(2, 8, depth, 6, 6).bfloat16().float()
    go = torch.randn(2, 16, depth, 6, 6).bfloat16().float()
    conv(x).backward(go)
    reference = conv.weight.grad.clone()
    conv.zero_grad()
    with bf16_conv_guard(conv), torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.backward(go.to(y.dtype))
    got = conv.weight.grad
    assert torch.isfinite(got).all()
    rel = float((got - reference).abs().max() / reference.abs().max())
    assert rel < 2e-2, rel
    assert not conv._forward_pre_hooks and not conv._forward_hooks  # guard removed
    with torch.autocast("cpu", dtype=torch.bfloat16):  # forward outside: bf16 as before
        assert conv(x).dtype == torch.bfloat16


@pytest.mark.slow
def test_forced_bf16_training_stays_finite_and_predicts_like_fp32(drain, tmp_path):
    """A 4-level U-Net on 8-slice patches (2 slices at its bottom: the shape that made
    ``train`` go NaN in 2 runs of 3 on CPUs with native bf16) trained under bf16 autocast,
    emulated where the CPU has no bf16, for three initialisations. Tolerance: bf16 keeps 8
    bits of mantissa, so the softmax of the bf16 forward stays within 0.1 of fp32 at every
    voxel (mean within 0.01) and the labels agree on >= 98% of the voxels."""
    from napari_vnet.inference import predict

    image, labels = sphere_pair((12, 24, 24), value=1)
    for seed in range(3):
        cfg = config(
            arch_kwargs={"channels": [4, 8, 16, 32]},
            patch_size=(8, 16, 16),
            iterations=5,
            lr=1e-3,
            amp="bf16",
            seed=seed,
            eval_every=5,
        )
        events, summary = drain(
            finetune([TrainingPair(image, labels)], cfg, out=tmp_path / f"bf16_{seed}.pt")
        )
        assert len(events) == 5 and all(np.isfinite(e["loss"]) for e in events), events
        model, card = load_checkpoint(tmp_path / f"bf16_{seed}.pt")
        assert all(torch.isfinite(p).all() for p in model.parameters())
        kw = dict(spacing=(1, 1, 1), device="cpu", overlap=0.0, return_probabilities=True)
        fp32 = predict(image, model, card, amp=False, **kw)
        bf16 = predict(image, model, card, amp="bf16", **kw)
        assert bf16.amp == "bf16" and fp32.amp is None
        diff = np.abs(bf16.probabilities.astype(np.float32) - fp32.probabilities)
        assert diff.max() < 0.1 and diff.mean() < 0.01, (diff.max(), diff.mean())
        assert np.mean(bf16.labels == fp32.labels) >= 0.98


class _WindowMeanModel(torch.nn.Module):
    """Class 1 wherever the whole window's mean intensity is above 0.5: its answer
    depends on what fills the window beyond the image."""

    out_channels = 2

    def forward(self, x):
        m = x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)
        return torch.cat([torch.zeros_like(x), (m - 0.5) * 100], dim=1)


def test_validation_of_a_slab_at_the_case_end_sees_real_slices_not_padding():
    from napari_vnet.training.data import _Case
    from napari_vnet.training.validation import validation_dice

    image = np.ones((16, 8, 8), np.float32)
    image[10, 0, 0] = -100.0  # the minimum, which pads a window short of slices
    mask = np.zeros(image.shape, bool)
    mask[14:] = True  # the held-out slab: the last two slices
    case = _Case("c", image, np.ones(image.shape, np.uint8), mask)
    dice = validation_dice(_WindowMeanModel(), [case], (8, 8, 8), torch.device("cpu"), None, 2)
    assert dice == pytest.approx(1.0)  # 6 real slices + 2 of padding gave 0
