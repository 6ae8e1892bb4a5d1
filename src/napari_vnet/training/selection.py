"""Which weights a run keeps: the final ones, or an earlier checkpoint that a smoothed
validation score shows to be better by more than its noise (no Qt).

A validation Dice measured on a few held-out slices jumps from one evaluation point to
the next (one slice of the real CT: 0.45-0.51 for 200 iterations, and the maximum, at
iteration 20 of 200, was kept). So:

* the score is smoothed (an exponential moving average, as nnU-Net keeps for its
  ``checkpoint_best``; a faster one, since a run here has ~10 evaluation points, not
  nnU-Net's 1000 epochs);
* a validation set too small to decide (fewer than ``min_voxels`` held-out voxels of a
  class the run learns, or no validation at all) keeps the final weights, known from
  the start of the run;
* an earlier checkpoint is kept only when its smoothed score beats the final smoothed
  score by more than twice the noise of the smoothed score (estimated from the
  point-to-point changes of the raw scores), and by at least ``min_gain``.

:meth:`Selection.decide` returns what was kept and why, in words for the card, the
summary and the Fine-tune dock.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["SMOOTHING", "Selection", "make_selection", "validation_voxels"]

#: weight of the previous smoothed value in the moving average (nnU-Net: 0.9 per epoch)
SMOOTHING = 0.7
#: smallest gain of the smoothed score for which an earlier checkpoint is kept
MIN_GAIN = 0.01
#: fewer evaluation points than this cannot show a trend: the final weights are kept
#: (and the smoothed score of the first MIN_POINTS - 1 points is no candidate)
MIN_POINTS = 3


def validation_voxels(cases, n_classes: int) -> dict[int, int]:
    """Held-out reference voxels per foreground channel of the validation ``cases``
    (annotated voxels only)."""
    counts = np.zeros(max(int(n_classes), 1), np.int64)
    for c in cases:
        ref = c.target if c.mask is None else c.target[c.mask]
        counts += np.bincount(ref.ravel(), minlength=len(counts))[: len(counts)]
    return {ch: int(counts[ch]) for ch in range(1, len(counts))}


def learnt_channels(cases) -> set[int]:
    """Foreground channels present in the annotated voxels of ``cases``."""
    out: set[int] = set()
    for c in cases:
        ref = c.target if c.mask is None else c.target[c.mask]
        out |= {int(v) for v in np.flatnonzero(np.bincount(ref.ravel())) if v}
    return out


def too_small(
    voxels: dict[int, int], learnt: set[int], names: dict[int, str], min_voxels: int
) -> str | None:
    """Why the validation cannot decide (None when it can): a learnt class with fewer
    than ``min_voxels`` held-out voxels."""
    short = [(voxels.get(ch, 0), ch) for ch in sorted(learnt) if voxels.get(ch, 0) < min_voxels]
    if not short:
        return None
    n, ch = min(short)
    return (
        f"validation held only {n} voxels of {names.get(ch, f'class {ch}')} "
        f"(fewer than {min_voxels})"
    )


@dataclass
class Selection:
    """The validation scores of a run and the choice of the weights it keeps.

    ``blocked``: why the final weights are kept whatever the scores (no or too small
    validation), else None. ``points``: ``[iteration, raw score, smoothed score]``.
    """

    blocked: str | None = None
    mode: str = "auto"  # "auto" | "final" | "best-raw" (TrainConfig.keep)
    smoothing: float = SMOOTHING
    min_voxels: int = 0
    voxels: dict[int, int] = field(default_factory=dict)
    points: list[list[Any]] = field(default_factory=list)
    best_iteration: int = 0
    best_smoothed: float = -math.inf
    best_val: float | None = None

    @property
    def smoothed(self) -> float | None:
        return self.points[-1][2] if self.points else None

    @property
    def keeps_best(self) -> bool:
        """Whether an earlier checkpoint may still be kept (then it is written as found)."""
        return self.blocked is None

    def add(self, iteration: int, val: float | None) -> bool:
        """Record a validation score; True when it makes the smoothed score a new best
        (the caller then writes this iteration's weights as the candidate)."""
        if val is None or not math.isfinite(val):
            return False
        prev = self.smoothed
        ema = val if prev is None else self.smoothing * prev + (1.0 - self.smoothing) * val
        self.points.append([int(iteration), float(val), float(ema)])
        # the first smoothed values are one or two raw scores: no candidates yet
        warm = self.mode == "best-raw" or len(self.points) >= MIN_POINTS
        if warm and ema > self.best_smoothed:
            self.best_smoothed, self.best_iteration, self.best_val = ema, int(iteration), val
            return self.keeps_best
        return False

    def rebase(self, iteration: int) -> float | None:
        """The weights of ``iteration`` were written as the kept ones: they are the
        candidate from now on (a resumed run compares with them). Returns their raw
        score (the last one measured)."""
        last = self.points[-1] if self.points else None
        self.best_iteration = int(iteration)
        self.best_smoothed = -math.inf if last is None else float(last[2])
        self.best_val = None if last is None else float(last[1])
        return self.best_val

    def noise(self) -> float:
        """Standard deviation of the smoothed score from measurement noise alone."""
        raw = np.array([p[1] for p in self.points], float)
        if len(raw) < 3:
            return 0.0
        sd = float(np.std(np.diff(raw), ddof=1)) / math.sqrt(2.0)
        a = 1.0 - self.smoothing
        return sd * math.sqrt(a / (2.0 - a))

    def decide(self, final_iteration: int) -> dict[str, Any]:
        """What the run keeps: ``{"kept": "final"|"best", "iteration", "reason", ...}``
        with ``message``, one line for the user."""
        out: dict[str, Any] = {
            "final_iteration": int(final_iteration),
            "validation_points": len(self.points),
            "validation_voxels": {str(k): v for k, v in self.voxels.items()},
            "min_validation_voxels": self.min_voxels,
            "smoothing": self.smoothing,
            "mode": self.mode,
        }
        final_s = self.smoothed
        if final_s is not None:
            out["final_val_dice_smoothed"] = round(final_s, 4)
            out["final_val_dice"] = round(float(self.points[-1][1]), 4)
        raw_rule = self.mode == "best-raw"  # earlier runs' rule: the highest raw score
        margin = 0.0 if raw_rule else max(MIN_GAIN, 2.0 * math.sqrt(2.0) * self.noise())
        out["noise_margin"] = round(margin, 4)
        reason = self._why_final(final_iteration, margin, raw_rule)
        if reason is not None:
            out.update(kept="final", iteration=int(final_iteration), reason=reason)
            out["message"] = f"kept the final weights: {reason}"
            return out
        word = "validation Dice" if raw_rule else "smoothed validation Dice"
        out.update(
            kept="best", iteration=self.best_iteration,
            best_val_dice_smoothed=round(self.best_smoothed, 4),
            reason=(
                f"{word} {self.best_smoothed:.3f} at iteration {self.best_iteration} "
                f"beats the final {final_s:.3f} by more than the noise (±{margin:.3f})"
            ),
        )  # fmt: skip
        out["message"] = (
            f"kept iteration {self.best_iteration}: {word} {self.best_smoothed:.3f} "
            f"(final {final_s:.3f})"
        )
        return out

    def _why_final(self, final_iteration: int, margin: float, raw_rule: bool) -> str | None:
        """Why the final weights are kept, or None when the earlier best is."""
        if self.blocked is not None:
            return self.blocked
        final_s = self.smoothed
        if final_s is None:
            return "no validation score was measured"
        if not raw_rule and len(self.points) < MIN_POINTS:
            return f"only {len(self.points)} validation point(s), too few to show a trend"
        if self.best_iteration == final_iteration or self.best_smoothed <= final_s:
            return f"the final smoothed validation Dice {final_s:.3f} is the best"
        if not raw_rule and self.best_smoothed - final_s <= margin:
            return (
                f"the final smoothed validation Dice {final_s:.3f} is within noise "
                f"(±{margin:.3f}) of the best, {self.best_smoothed:.3f} at iteration "
                f"{self.best_iteration}"
            )
        return None

    def state(self) -> dict[str, Any]:
        """Plain data for the resume file."""
        d = asdict(self)
        d["voxels"] = {str(k): v for k, v in self.voxels.items()}
        return d

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, **defaults) -> Selection:
        if not state:
            return cls(**defaults)
        state = dict(state)
        state["voxels"] = {int(k): int(v) for k, v in (state.get("voxels") or {}).items()}
        return cls(**state)


def make_selection(
    cases, val_cases, classes, min_voxels: int, state=None, mode: str = "auto"
) -> Selection:
    """The selection of a run (from the resume ``state`` when resuming): blocked from
    the start when there is no validation, or too little to decide."""
    if state:
        return Selection.from_state(state)
    if mode not in ("auto", "final", "best-raw"):
        from napari_vnet.training.config import TrainingError

        raise TrainingError(f"keep must be auto, final or best-raw, not {mode!r}")
    n_classes = len(classes)
    voxels = validation_voxels(val_cases, n_classes) if val_cases else {}
    if not val_cases:
        blocked = "no validation held out"
    elif mode == "final":
        blocked = "the final weights were asked for"
    elif mode == "best-raw":
        blocked = None
    else:
        names = {ch: c.name for ch, c in enumerate(classes)}
        blocked = too_small(voxels, learnt_channels(cases), names, int(min_voxels))
    return Selection(
        blocked=blocked, mode=mode, smoothing=0.0 if mode == "best-raw" else SMOOTHING,
        min_voxels=int(min_voxels), voxels=voxels,
    )  # fmt: skip
