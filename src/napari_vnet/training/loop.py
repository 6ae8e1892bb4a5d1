"""The training loop: set up from a plan, step, validate, checkpoint, resume (no Qt).

:func:`finetune` is a generator of :class:`~.events.TrainingStep` events returning a
:class:`~.events.TrainingSummary`; :class:`_Run` holds one run's state with nnU-Net's
trainer seams: :meth:`_Run.train_step`, :meth:`_Run.evaluate` (validation + checkpoint),
:meth:`_Run.save_resume`, :meth:`_Run.summary`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vnet.models.card import ModelCard
from napari_vnet.runtime import available_memory, bf16_conv_guard, resolve_amp
from napari_vnet.training.augment import make_augmenter
from napari_vnet.training.config import (
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    TrainingPair,
    lr_factor,
    resume_path,
)
from napari_vnet.training.data import (
    _check_foreground,
    _split_validation,
    prepare_cases,
    weighting_note,
)
from napari_vnet.training.deep_supervision import (
    DeepSupervision,
    DeepSupervisionLoss,
    supports_deep_supervision,
)
from napari_vnet.training.distributed import Distributed, unwrap
from napari_vnet.training.events import TrainingStep, TrainingSummary
from napari_vnet.training.losses import DiceCELoss
from napari_vnet.training.plan import TrainingPlan
from napari_vnet.training.postprocess_choice import choose_postprocess
from napari_vnet.training.sampler import PatchSampler
from napari_vnet.training.selection import learnt_channels, make_selection
from napari_vnet.training.steps import segmentation_step, vox2vox_step
from napari_vnet.training.transfer import Start, build_networks, starting_point
from napari_vnet.training.validation import validation_dice

log = logging.getLogger(__name__)

__all__ = ["finetune", "run_training"]


def _check_output(out: Path) -> None:
    """Fail before training, not at the first checkpoint, when ``out`` cannot be written."""
    import tempfile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        parent = next((p for p in out.parents if p.exists()), None)
        reason = exc.strerror or str(exc)
        if parent is not None and not parent.is_dir():
            reason = f"{parent} is a file, not a folder"
        raise TrainingError(f"{out}: cannot save the weights there ({reason})") from exc
    if out.is_dir():
        raise TrainingError(f"{out}: is a folder; give a file name for the weights (.pt)")


def _remove_orphaned_temps(*paths: Path) -> None:
    """Delete what killed runs writing these files (the weights, their resume state)
    left: their hidden ``.<name>.XXXXXXXX.tmp.pt`` files, and no one else's."""
    from napari_vnet._atomic import orphaned_temps

    for path in paths:
        for tmp in orphaned_temps(path):
            try:
                tmp.unlink()
                log.info("removed %s, left by an interrupted run", tmp)
            except OSError as exc:
                log.warning("%s: left by an interrupted run, not removed: %s", tmp, exc)


def _check_batch_memory(card: ModelCard, patch, batch_size: int, n_classes: int, device) -> None:
    """Refuse a batch whose input, targets and first feature maps alone exceed the free
    main memory (an absurd batch size would otherwise fill the machine)."""
    if device.type != "cpu":
        return
    free = available_memory()
    if free is None:
        return
    widths = card.arch_kwargs.get("channels") if isinstance(card.arch_kwargs, dict) else None
    first = int(widths[0]) if isinstance(widths, (list, tuple)) and widths else 16
    # input + int64 target + mask, logits/softmax/grad, first feature map + its gradient
    per_voxel = 4 + 8 + 1 + 4 * 3 * n_classes + 4 * 2 * first
    need = int(batch_size) * int(np.prod(patch)) * per_voxel
    if need > free:
        gb = 1024**3
        raise TrainingError(
            f"not enough memory: batch size {batch_size} with patch {tuple(patch)} needs at "
            f"least {need / gb:.1f} GB, but only {free / gb:.1f} GB is free; use a batch "
            "size of 2-4 and a smaller patch size"
        )


def _save(model, card, path, disc=None, extra=None) -> None:
    from napari_vnet.models import save_checkpoint

    save_checkpoint(
        unwrap(model), card, path, discriminator=None if disc is None else unwrap(disc), extra=extra
    )


class _Run:
    """One training run's state (set up in ``__init__`` from its plan and starting
    weights, driven by :func:`finetune`)."""

    def __init__(self, plan: TrainingPlan, start: Start, out: Path, dist: Distributed):
        t_setup = time.perf_counter()
        config = plan.config
        self.plan, self.config, self.out, self.dist = plan, config, out, dist
        self.device = dist.device
        self.rpath = resume_path(out)
        self.classes, self.n_classes, self.patch = plan.classes, len(plan.classes), plan.patch_size
        cases = self._prepare_cases(start.card)
        self.voxels = weighting_note(plan.loaded, config.uncorrected_weight)
        if self.voxels:
            log.info("%s", self.voxels["message"])
        _check_batch_memory(start.card, self.patch, config.batch_size, self.n_classes, self.device)
        self._build_networks(start)
        resume_state = start.resume_state
        self._split_cases(cases, resume_state)
        self._setup_optimisation(plan.from_scratch, resume_state)
        self.history = dict(self.card.history)
        self.run_notes = self._run_notes(start.notes, cases)
        self.last_eval_it = -1
        self.best_written = out.exists() and resume_state is not None and self.best["iteration"] > 0
        log.info(
            "training %s on %d case(s), patch %s, batch %d x %d rank(s), device %s, amp %s, "
            "setup %.1fs", self.card.arch, len(self.train_cases), self.patch, config.batch_size,
            dist.world, self.device, self.amp_dtype, time.perf_counter() - t_setup,
        )  # fmt: skip

    def _prepare_cases(self, card: ModelCard) -> list:
        """The plan's pairs as network-ready cases (foreign weights: prepared by their own
        preprocessing)."""
        plan, config = self.plan, self.config
        producer = None
        if (card.preprocessing or {}).get("kind"):  # foreign weights: their preprocessing
            from napari_vnet.inference.preprocess import preprocessing_for

            producer = preprocessing_for(card)
        cases = prepare_cases(
            plan.loaded, plan.classes, spacing=plan.spacing,
            normalization=plan.normalization, ignore_index=config.ignore_index,
            producer=producer if producer is not None and producer.prepares_training else None,
            regions=config.augment and config.augment_phase,
            uncorrected_weight=config.uncorrected_weight,
        )[0]  # fmt: skip
        _check_foreground(cases, plan.classes)
        return cases

    def _build_networks(self, start: Start) -> None:
        """The trained model's card (:meth:`TrainingPlan.new_card`), its network and, for
        Vox2Vox, its discriminator: resumed, or built from scratch / the base."""
        card = self.plan.new_card(start.card)
        if (card.preprocessing or {}).get("kind"):
            card.source = {**card.source, "fine_tuned": True}
        disc = None
        if start.resume_state is not None:
            model = start.model
            if card.arch == "vox2vox":
                from napari_vnet.models import build_discriminator

                kwargs = start.resume_state.get("discriminator_kwargs", {})
                disc = build_discriminator(card, **kwargs)
                if start.disc_state is not None:
                    disc.load_state_dict(start.disc_state)
        else:
            torch.manual_seed(self.config.seed)  # a new network's initial weights follow the seed
            model, disc = build_networks(
                card, start.base_info, self.plan.classes, start.notes, self.config
            )
            card.arch_kwargs = dict(getattr(model, "arch_kwargs", card.arch_kwargs))
        self.card, self.model, self.disc = card, model, disc
        self.disc_kwargs = dict(getattr(disc, "arch_kwargs", {})) if disc is not None else {}

    def _split_cases(self, cases, resume_state) -> None:
        """Training and validation cases, the checkpoint selection, the patch sampler."""
        config, dist = self.config, self.dist
        rng = np.random.default_rng([config.seed, 7])
        self.train_cases, self.val_cases = _split_validation(cases, config.val_fraction, rng)
        self.selection = make_selection(
            cases, self.val_cases, self.classes, config.min_val_voxels,
            state=None if resume_state is None else resume_state.get("selection"),
            mode=config.keep,
        )  # fmt: skip
        self.decision: dict[str, Any] | None = None
        # classes no annotated voxel shows: kept as they are (partial labels)
        learnt = learnt_channels(cases)
        self.open_classes = (
            [ch for ch in range(1, self.n_classes) if ch not in learnt]
            if config.partial_labels and self.disc is None
            else []
        )
        start = 0 if resume_state is None else int(resume_state["iteration"])
        self.sampler = PatchSampler(
            self.train_cases, self.patch, foreground_fraction=config.foreground_fraction,
            augment=config.augment, seed=[config.seed, dist.rank, start],
            augmenter=make_augmenter(self.patch, config), phase=config.augment_phase,
        )  # fmt: skip
        torch.manual_seed(config.seed + 1000 * dist.rank)

    def _run_notes(self, notes: dict[str, Any], cases) -> dict[str, Any]:
        """What the card's run history records of this run."""
        return {
            **notes,
            "config": {k: v for k, v in self.config.to_dict().items() if k != "resume"},
            "cases": [c.name for c in cases],
            "validation_cases": [c.name for c in self.val_cases],
            "world_size": self.dist.world,
            "plan": list(self.plan.reasons),
            "partial_labels": [self.classes[ch].name for ch in self.open_classes],
            "voxels": self.voxels,
            "device": str(self.device),
        }

    def _setup_optimisation(self, from_scratch: bool, resume_state) -> None:
        config, device, model, disc = self.config, self.device, self.model, self.disc
        model.to(device).train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        # deep supervision: auxiliary heads in a wrapper, trained, never saved
        self.ds = None
        if config.deep_supervision and disc is None and supports_deep_supervision(model):
            self.ds = DeepSupervision(model, self.n_classes).to(device).train()
            self.params += list(self.ds.heads.parameters())
        base_lr = config.lr if config.lr is not None else (1e-3 if from_scratch else 3e-4)
        # pix2pix / Vox2Vox train both networks with Adam(beta1 = 0.5)
        betas = (0.9, 0.999) if disc is None else (0.5, 0.999)
        wd = config.weight_decay
        self.optimizer = torch.optim.AdamW(self.params, lr=base_lr, betas=betas, weight_decay=wd)
        self.d_optimizer = None
        if disc is not None:
            disc.to(device).train()
            self.d_optimizer = torch.optim.AdamW(
                disc.parameters(), lr=base_lr, betas=betas, weight_decay=wd
            )
        self.amp_dtype = resolve_amp(config.amp, device)
        fp16 = self.amp_dtype == torch.float16  # bf16 keeps fp32's range: no loss scaling
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.d_scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.start_it, self.elapsed0, self.ema = 0, 0.0, None
        self.best = {"metric": -math.inf, "iteration": 0, "val_dice": None, "loss": None}
        if resume_state is not None:
            self.optimizer.load_state_dict(resume_state["optimizer"])
            if self.d_optimizer is not None and resume_state.get("d_optimizer"):
                self.d_optimizer.load_state_dict(resume_state["d_optimizer"])
            if resume_state.get("scaler"):
                self.scaler.load_state_dict(resume_state["scaler"])
            self.start_it = int(resume_state["iteration"])
            self.elapsed0 = float(resume_state.get("seconds", 0.0))
            self.best.update(resume_state.get("best", {}))
            self.ema = resume_state.get("ema")
            base_lr = float(resume_state.get("base_lr", base_lr))
        self.base_lr = base_lr
        self.train_model, self.train_disc = model if self.ds is None else self.ds, disc
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.train_model = DDP(self.train_model, device_ids=ids)
            if disc is not None:
                self.train_disc = DDP(disc, device_ids=ids)
        self.criterion = DiceCELoss(
            config.dice_weight, config.ce_weight, batch_dice=config.batch_dice,
            open_classes=self.open_classes,
        )  # fmt: skip
        if self.ds is not None:
            self.criterion = DeepSupervisionLoss(self.criterion, self.ds.weights)

    # ------------------------------------------------------------------ checkpoints

    def card_with_history(self, it: int, seconds: float) -> ModelCard:
        c = copy.deepcopy(self.card)
        c.history = dict(self.history)
        c.history["run"] = dict(self.run_notes)
        loss = self.best["loss"]
        c.history.update(
            {
                "iterations": it,
                "seconds": round(seconds, 2),
                "best_iteration": self.best["iteration"],
                "val_dice": self.best["val_dice"],
                "train_loss": loss if loss is None else round(loss, 5),
                "classes": [f"{cl.value}={cl.name}" for cl in self.card.classes],
            }
        )
        if self.decision is not None:
            c.history["selection"] = dict(self.decision)
        return c

    def save_best(self, it: int, seconds: float) -> None:
        card = self.card_with_history(it, seconds)
        _save(self.model, card, self.out, self.disc, {"best": dict(self.best)})

    def save_resume(self, it: int, seconds: float) -> None:
        extra = {
            "resume": {
                "iteration": it,
                "seconds": seconds,
                "optimizer": self.optimizer.state_dict(),
                "d_optimizer": None if self.d_optimizer is None else self.d_optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "best": dict(self.best),
                "selection": self.selection.state(),
                "ema": self.ema,
                "base_lr": self.base_lr,
                "discriminator_kwargs": self.disc_kwargs,
            }
        }
        _save(self.model, self.card_with_history(it, seconds), self.rpath, self.disc, extra)

    def evaluate(self, it: int, seconds: float, loss_value: float | None):
        """Validation + checkpoints at an evaluation point (all ranks call it): the
        weights file gets this iteration's weights when they are the smoothed best so
        far, or always when the final weights will be kept (:mod:`.selection`)."""
        dist = self.dist
        val = None
        if self.val_cases:
            if dist.is_main:
                val = validation_dice(
                    self.model, self.val_cases, self.patch, self.device, self.amp_dtype,
                    self.n_classes,
                )  # fmt: skip
            val = dist.broadcast(val)
        candidate = self.selection.add(it, val)
        written = candidate or not self.selection.keeps_best or not self.best_written
        if written:
            self.best.update(metric=self.selection.smoothed, iteration=it, val_dice=val,
                             loss=loss_value)  # fmt: skip
        if dist.is_main:
            if written:
                self.save_best(it, seconds)
            self.save_resume(it, seconds)
        self.best_written = True  # on every rank, so all take the same branches
        self.last_eval_it = it
        dist.barrier()
        return val, written

    def keep_selected(self, it: int, seconds: float, resume_again: bool = False) -> None:
        """Decide which weights the run keeps (main rank, at its end) and write them with
        the decision in their card: the final weights, or the earlier checkpoint already
        in the weights file. The final weights written become the candidate a resumed run
        compares with (``resume_again``: the resume file is rewritten to say so)."""
        decision = self.selection.decide(it)
        self.decision = decision
        if decision["kept"] == "final":
            last = self.selection.rebase(it)
            self.best.update(iteration=it, val_dice=last, loss=self.ema)
            self.save_best(it, seconds)
            if resume_again:
                self.save_resume(it, seconds)
        elif self.out.exists():
            _restamp(self.out, lambda card: card.history.__setitem__("selection", decision))
        log.info("%s", decision["message"])

    # ------------------------------------------------------------------ one step

    def train_step(self, lr: float):
        for opt in (self.optimizer, self.d_optimizer):
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] = lr
        img, tgt, msk = self.sampler.sample(self.config.batch_size)
        device = self.device
        x = torch.from_numpy(img).to(device, non_blocking=True)
        y = torch.from_numpy(tgt).to(device, non_blocking=True)
        m = None if msk is None else torch.from_numpy(msk).to(device, non_blocking=True)
        clip = self.config.grad_clip
        if self.disc is None:
            return segmentation_step(
                self.train_model, self.criterion, x, y, m, self.optimizer, self.scaler,
                self.amp_dtype, device, self.params, clip,
            )  # fmt: skip
        return vox2vox_step(
            self.train_model, self.train_disc, self.disc, x, y, m, self.optimizer,
            self.d_optimizer, self.scaler, self.d_scaler, self.amp_dtype, device, self.config,
            self.params, self.n_classes,
        )  # fmt: skip

    def choose_postprocess(self) -> None:
        """Post-processing chosen on the validation cases with the best weights, written
        into the best checkpoint's card (:mod:`~.postprocess_choice`)."""
        if self.config.postprocess != "auto" or not self.val_cases or not self.out.exists():
            return

        def choose(card, model):
            model.to(self.device).eval()
            choice = choose_postprocess(
                model, self.val_cases, self.patch, self.device, self.amp_dtype, card.classes
            )
            card.postprocess = choice

        _restamp(self.out, choose, with_model=True)

    def summary(self, it, seconds, last_loss, cancelled) -> TrainingSummary:
        return TrainingSummary(
            out=str(self.out),
            iterations=it,
            final_loss=self.ema,
            last_loss=last_loss,
            val_dice=self.best["val_dice"],
            best_iteration=self.best["iteration"],
            seconds=seconds,
            cancelled=cancelled,
            resume_file=str(self.rpath) if self.rpath.exists() else None,
            device=str(self.device),
            world_size=self.dist.world,
            rank=self.dist.rank,
            classes=[c.to_dict() for c in self.card.classes],
            spacing=list(self.card.spacing),
            patch_size=list(self.patch),
            selection=self.decision,
            voxels=self.voxels,
        )


def _restamp(path: Path, change, with_model: bool = False) -> None:
    """Rewrite the card of the checkpoint at ``path`` (weights, discriminator and extra
    state kept): ``change(card)``, or ``change(card, model)`` with ``with_model``."""
    from napari_vnet.models import load_checkpoint_state, load_discriminator
    from napari_vnet.weights import load_weights

    model, card = load_weights(path, map_location="cpu")
    state = load_checkpoint_state(path)
    change(card, model) if with_model else change(card)
    disc = load_discriminator(path, map_location="cpu") if state.get("discriminator") else None
    _save(model, card, path, disc, state.get("extra"))


def finetune(
    pairs: Sequence[TrainingPair],
    config: TrainConfig | None = None,
    *,
    base: Any = None,
    out: str | os.PathLike = "model.pt",
    progress: Callable[[int, int], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[TrainingStep]:
    """Train or fine-tune a network; a generator of per-iteration :class:`TrainingStep`.

    ``base``: None (from scratch with ``config.arch``), a checkpoint path, the name of
    shipped weights, or a ``(model, card)`` tuple. ``out``: the best checkpoint. The
    generator's return value (``StopIteration.value``) is a :class:`TrainingSummary`
    with ``out``, ``iterations``, ``final_loss``, ``val_dice``, ``seconds``, ``cancelled``...
    """
    config = config or TrainConfig()
    out = Path(out)
    dist = Distributed(config.device)
    try:
        if dist.is_main:
            _check_output(out)
            _remove_orphaned_temps(out, resume_path(out))
        plan, start = starting_point(pairs, config, base, resume_path(out))
        run = _Run(plan, start, out, dist)
        with bf16_conv_guard(run.model, run.disc):
            summary = yield from _loop(run, progress, should_stop)
    finally:
        dist.close()
    return summary


def _loop(run: _Run, progress, should_stop):
    config, dist = run.config, run.dist
    iterations = config.iterations
    budget = None if not config.minutes else 60.0 * float(config.minutes)
    eval_every = config.eval_every or (min(50, max(5, iterations // 10)) if iterations else 50)
    t0 = time.perf_counter() - run.elapsed0
    it = run.start_it
    last_loss = None
    cancelled = False
    last_eval = time.perf_counter()
    try:
        while True:
            seconds = time.perf_counter() - t0
            done_iters = iterations is not None and it >= iterations
            over_time = budget is not None and seconds >= budget
            user_stop = bool(should_stop()) if should_stop is not None else False
            if dist.any(done_iters or over_time or user_stop):
                cancelled = dist.any(user_stop) if dist.enabled else user_stop
                break
            frac = max(it / iterations if iterations else 0.0, seconds / budget if budget else 0.0)
            lr = run.base_lr * lr_factor(frac, config.warmup, config.schedule)
            loss, parts = run.train_step(lr)
            it += 1
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise TrainingError(
                    f"loss became {last_loss} at iteration {it}; lower the learning rate "
                    f"(now {run.base_lr:g}) or check the image normalisation"
                )
            run.ema = last_loss if run.ema is None else 0.9 * run.ema + 0.1 * last_loss
            seconds = time.perf_counter() - t0
            total = (
                iterations if iterations else max(it, int(round(it * budget / max(seconds, 1e-6))))
            )
            event = TrainingStep(it, int(total), last_loss, parts, lr, seconds)
            is_last = iterations is not None and it >= iterations
            due = it % eval_every == 0 or time.perf_counter() - last_eval >= config.eval_seconds
            if dist.any(due or is_last) if dist.enabled else (due or is_last):
                val, improved = run.evaluate(it, seconds, run.ema)
                last_eval = time.perf_counter()
                event.val_dice = val
                if improved and dist.is_main:
                    event.checkpoint = str(run.out)
            if progress is not None:
                progress(it, int(total))
            yield event
    except (GeneratorExit, KeyboardInterrupt):
        # the consumer closed the generator (a napari worker's quit()) or Ctrl-C:
        # keep what we have - the best checkpoint (the current weights if none was
        # written yet) and the resume state. No collective calls: other ranks may be gone.
        seconds = time.perf_counter() - t0
        if dist.is_main and it > run.start_it:
            try:
                run.keep_selected(it, seconds)
                run.save_resume(it, seconds)
            except Exception:  # noqa: BLE001 - closing must not raise
                log.exception("could not write checkpoints while stopping")
        raise
    # (any other exception propagates and leaves the files on disk as they were: a
    # non-finite loss must not overwrite the best checkpoint with broken weights)
    seconds = time.perf_counter() - t0
    # normal end (all iterations, time budget, or should_stop)
    if it > run.start_it and (run.last_eval_it != it or not run.best_written):
        run.evaluate(it, seconds, run.ema)  # the run ended between evaluation points
    if dist.is_main and it > run.start_it:
        run.keep_selected(it, seconds, resume_again=cancelled or config.keep_resume)
    if dist.is_main and not cancelled and it > run.start_it:
        run.choose_postprocess()
    if dist.is_main and not cancelled and not config.keep_resume and run.rpath.exists():
        run.rpath.unlink()
    # rank 0's tail work above (post-processing chosen on validation, clean-up) runs
    # while the other ranks have finished: they wait here, so no rank tears its process
    # group down (and exits) while another still holds the connection
    dist.barrier()
    return run.summary(it, seconds, last_loss, cancelled)


def run_training(
    pairs,
    config=None,
    *,
    base=None,
    out="model.pt",
    progress=None,
    should_stop=None,
    on_event: Callable[[TrainingStep], Any] | None = None,
    raise_on_cancel: bool = False,
) -> TrainingSummary:
    """Drive :func:`finetune` to its end and return its summary (for scripts and the CLI).

    An exception out of ``on_event`` (or Ctrl-C) closes the run first, which keeps the best
    checkpoint and the resume file as a cancelled run does."""
    gen = finetune(pairs, config, base=base, out=out, progress=progress, should_stop=should_stop)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                summary = stop.value
                break
            if on_event is not None:
                on_event(event)
    finally:
        gen.close()
    if raise_on_cancel and summary.cancelled:
        raise TrainingCancelled(summary)
    return summary
