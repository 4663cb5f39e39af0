"""Checkpoints of training jobs, for every trainable kind: a training loop saves its state (model,
optimizer, schedule, random generators, epoch/step, history) after an epoch; a job that starts again
(its worker died, another took it over) loads it and goes on from there.

`host` gives `workdir`, `save_checkpoint(dir)` and `load_checkpoint(dir) -> bool`: in the worker it
is the job's JobContext (stored in the database, replacing the last one); tests and benchmarks pass
hosts of their own.

A kind saves `{"model": model.state_dict(), "optimizer": ..., "schedule": ..., "rng": rng_state(gen),
...its counters}` and, at the start, `state = checkpoints.resume({"model": model, "optimizer": opt,
"schedule": schedule}, rng=(gen,))`: None on a fresh start, else the checkpoint with those parts
already loaded, for the kind to read its own counters from (`restore` when the parts exist at
different times).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _to_cpu(obj: Any) -> Any:
    """A copy of a (nested) state on the CPU: training goes on changing the live tensors."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Checkpoints:
    """The job's checkpoint: read at the start; written after an epoch on a background thread while
    the next epoch trains. After every epoch, unless writing them would take more than `share` of
    the training time (tiny epochs on a CPU, where storing ~140 MB in the database costs about as
    much as an epoch): then the next one waits until last write's duration / `share` has passed."""

    def __init__(self, host, share: float | None = 0.05) -> None:
        self.host = host
        self.share = share
        self.dir = Path(host.workdir) / "checkpoint"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="pgsight-checkpoint")
        self.pending: Future[None] | None = None
        self.started = 0.0    # when the last write began
        self.cost = 0.0       # how long it took
        self.written = 0
        self.waited = 0.0     # seconds the training loop spent on checkpoints (copy + waiting)

    def load(self) -> dict[str, Any] | None:
        import torch

        if not self.host.load_checkpoint(self.dir):
            return None
        return torch.load(self.dir / "checkpoint.pt", map_location="cpu", weights_only=True)

    def resume(self, parts: Mapping[str, Any], rng: Sequence[Any] | None = None) -> dict[str, Any] | None:
        """The job's checkpoint with `parts` and `rng` loaded back (see `restore`), or None when there
        is none (a fresh start: nothing is touched)."""
        state = self.load()
        if state is not None:
            restore(state, parts, rng)
        return state

    def due(self) -> bool:
        if self.share is None:  # every epoch, whatever it costs
            return True
        if self.pending is not None and not self.pending.done():
            return False
        return not self.written or time.perf_counter() - self.started >= self.cost / self.share

    def save(self, state: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        self.wait()
        self.started = time.perf_counter()
        self.pending = self.pool.submit(self._write, _to_cpu(state))
        self.written += 1
        self.waited += time.perf_counter() - t0

    def _write(self, state: dict[str, Any]) -> None:
        import torch

        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.dir / "checkpoint.pt")
        self.host.save_checkpoint(self.dir)
        self.cost = time.perf_counter() - t0

    def wait(self) -> None:
        """Until the write in flight is stored; raises its error."""
        t0 = time.perf_counter()
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()
        self.waited += time.perf_counter() - t0

    def close(self) -> None:
        self.pool.shutdown(wait=True)  # never leave a write running past the job


def restore(state: Mapping[str, Any], parts: Mapping[str, Any], rng: Sequence[Any] | None = None) -> None:
    """Load a checkpoint back into the objects that saved it: `parts[key].load_state_dict(state[key])`
    for each key (a model, an optimizer, a schedule: anything with load_state_dict), then, when `rng`
    is given, the random state (`state["rng"]`, saved by `rng_state(*rng)`: the same generators in the
    same order; `()` for torch's global generator only)."""
    for key, part in parts.items():
        part.load_state_dict(state[key])
    if rng is not None:
        set_rng_state(state["rng"], *rng)


def rng_state(*generators: Any) -> dict[str, Any]:
    """The random state a resumed run needs to continue the same way: torch's global generator (and
    CUDA's, when there is one), plus the given torch.Generator / numpy Generator objects in order."""
    import numpy as np
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generators": []}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for g in generators:
        state["generators"].append(g.get_state() if isinstance(g, torch.Generator) else
                                   g.bit_generator.state if isinstance(g, np.random.Generator) else None)
    return state


def set_rng_state(state: dict[str, Any], *generators: Any) -> None:
    """Restore what rng_state saved (the same generators, in the same order)."""
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for g, saved in zip(generators, state["generators"]):
        if isinstance(g, torch.Generator):
            g.set_state(saved)
        elif saved is not None:
            g.bit_generator.state = saved
