"""A whole ``napari-vnet predict INPUT_DIR --out OUT_DIR`` run, shared among processes.

* :func:`shard` gives one process its share of the cases: nnU-Net's
  ``--num-parts N --part-id K`` convention (``cases[K::N]``), then the same split again
  over the ranks of a ``torch.distributed`` job (:func:`distributed_context`).
* :class:`FolderRun` is one process's part of a run: the cases under the input folder
  named for the output folder, the outputs of other weights that refuse the run, the
  cases segmented (:func:`napari_vnet.workflows.batch_run.predict_cases`), the results
  of every process gathered and the summary written; :class:`Eta` the time left.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_vnet.workflows.batch import Case, CaseResult, plan_outputs
from napari_vnet.workflows.batch_run import predict_cases

__all__ = ["DistributedContext", "Eta", "FolderRun", "distributed_context", "shard"]


# ----------------------------------------------------------------------- partitioning


@dataclass
class DistributedContext:
    """This process's place in a ``torchrun`` job (world 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` on every rank (rank order); ``[obj]`` outside a job."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def distributed_context(device: str = "auto", timeout_hours: float = 48.0) -> DistributedContext:
    """Join the ``torch.distributed`` job started by ``torchrun`` (``WORLD_SIZE > 1``).

    NCCL when this rank will run on CUDA, else gloo. The collective timeout is long
    (``timeout_hours``) because ranks meet only once, at the end, to gather results: a
    rank that finishes early waits there for the slowest.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistributedContext()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    use_cuda = torch.cuda.is_available() and not str(device).startswith(("cpu", "mps"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(hours=float(timeout_hours))
        )
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=backend,
    )


def shard(items: Sequence[Any], num_parts: int = 1, part_id: int = 0) -> list[Any]:
    """Part ``part_id`` of ``num_parts`` (round robin: ``items[part_id::num_parts]``)."""
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in [0, {num_parts - 1}], got {part_id}")
    return list(items)[part_id::num_parts]


# -------------------------------------------------------------------------- a whole run


@dataclass
class FolderRun:
    """One process's part of a ``predict INPUT_DIR --out OUT_DIR`` run.

    ``seg`` is the :class:`~napari_vnet.workflows.segment.Segmenter` of the weights,
    ``settings`` the :func:`napari_vnet.inference.predict` keyword arguments.
    """

    in_dir: Path
    out_dir: Path
    seg: Any
    settings: dict[str, Any]
    fmt: str = "same"
    pattern: str | None = None
    overwrite: bool = False
    statistics: bool = False
    save_probabilities: bool = False
    workers: int = 2
    num_parts: int = 1
    part_id: int = 0

    def cases(self) -> list[Case]:
        """The cases under ``in_dir``, named for ``out_dir``: an output folder inside the
        input folder is not walked, outputs of earlier runs written into the input folder
        are not inputs, and no output is named after an input (in place: ``<name>_seg``;
        see :mod:`napari_vnet.workflows.batch_records`)."""
        from napari_vnet.workflows.batch import discover_cases
        from napari_vnet.workflows.batch_records import place_outputs

        in_dir, out_dir = self.in_dir, self.out_dir
        exclude = [out_dir] if out_dir.is_relative_to(in_dir) and out_dir != in_dir else []
        outputs_in = in_dir if in_dir.is_relative_to(out_dir) else None
        cases = discover_cases(in_dir, pattern=self.pattern, exclude=exclude, outputs_in=outputs_in,
                               in_channels=int(self.seg.card.in_channels))  # fmt: skip
        place_outputs(cases, in_dir, out_dir, self.fmt)
        return cases

    def part(self, cases: Sequence[Case]) -> list[Case]:
        """This run's part of the cases (``num_parts``, ``part_id``)."""
        return shard(cases, self.num_parts, self.part_id)

    def conflicts(self, cases: Sequence[Case]) -> list[tuple[str, str]]:
        """``(stem, why)`` of the cases whose outputs exist and were made by other weights
        (or not by napari-vnet predict)."""
        from napari_vnet.workflows.batch_records import output_conflicts, weights_fingerprint

        plans = [
            (c, plan_outputs(c, self.out_dir, self.fmt, statistics=self.statistics,
                             probabilities=self.save_probabilities))
            for c in cases
        ]  # fmt: skip
        return output_conflicts(plans, weights_fingerprint(self.seg.model, self.seg.card))

    def results(
        self, mine: Sequence[Case], ctx: DistributedContext, on_start=None
    ) -> Iterator[CaseResult]:
        """Segment this process's cases (one GPU per rank under NCCL)."""
        settings = dict(self.settings)
        device = settings.get("device", "auto")
        if ctx.active and ctx.backend == "nccl" and device in ("auto", "cuda"):
            settings["device"] = f"cuda:{ctx.local_rank}"  # one GPU per rank
        yield from predict_cases(
            mine,
            self.seg.model,
            self.seg.card,
            self.out_dir,
            fmt=self.fmt,
            overwrite=self.overwrite,
            statistics=self.statistics,
            save_probabilities=self.save_probabilities,
            workers=self.workers,
            rank=ctx.rank,
            on_start=on_start,
            weights=self.seg.weights,
            predict_kwargs=settings,
        )

    def finish(
        self, results: Sequence[CaseResult], ctx: DistributedContext, started: float
    ) -> tuple[list[CaseResult], dict[str, Path], dict[str, Any]] | None:
        """Gather every rank's results; on rank 0 write the summary (and statistics) and
        return ``(every result, files written, the run's info)``, elsewhere None.
        ``started``: the run's start, a ``time.perf_counter()`` value."""
        from napari_vnet.workflows.batch import write_run_summary

        gathered = ctx.gather([r.to_dict() for r in results])
        if ctx.rank != 0:
            return None
        every = [CaseResult(**d) for part_results in gathered for d in part_results]
        suffix = f".part-{self.part_id}-of-{self.num_parts}" if self.num_parts > 1 else ""
        info = {
            "input_dir": str(self.in_dir),
            "output_dir": str(self.out_dir),
            "weights": str(self.seg.weights),
            "arch": self.seg.card.arch,
            "format": self.fmt,
            "num_parts": self.num_parts,
            "part_id": self.part_id,
            "world_size": ctx.world_size,
            "total_seconds": round(time.perf_counter() - started, 3),
        }
        files = write_run_summary(
            every, self.out_dir, suffix=suffix, info=info, statistics=self.statistics
        )
        return every, files, info


class Eta:
    """Elapsed time and time left of a run, from the cases segmented so far (skipped
    cases take no time and are not counted)."""

    def __init__(self) -> None:
        self.done = 0
        self.n_todo = 0
        self.t0: float | None = None

    def started(self, n_todo: int) -> None:
        """A case starts; ``n_todo`` cases are to be segmented in all."""
        self.n_todo = n_todo
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def finished(self, result: CaseResult) -> tuple[float, float] | None:
        """``(seconds elapsed, seconds left)`` after ``result``; None for a skipped case or
        before the first case started."""
        if result.status == "skipped" or self.t0 is None:
            return None
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        return elapsed, elapsed / self.done * max(self.n_todo - self.done, 0)
