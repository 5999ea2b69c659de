"""Independent work items (datasets, layer blocks, concept shards) run in-process or on a Ray cluster.

``map_tasks(fn, tasks, model=...)`` returns ``[fn(lm, task) for task in tasks]``. With ``ray=None``
it loads the model once here; with ``ray="local"`` (a fresh local Ray instance) or a cluster address,
it starts ``workers`` Ray actors that each load the model once and run tasks as they free up. A task
that raises is retried ``retries`` times (a fresh attempt, possibly on another worker) and then
reported with its index and input. With ``resume_dir`` every finished result is written there as it
arrives, and a later call with the same tasks skips those already done.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .progress import progress_bar
from .safefile import atomic_write

if TYPE_CHECKING:
    from .model import SteerModel


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: ``load_model(name, dtype=..., device=...)``."""

    name: str | None = None
    dtype: str = "auto"
    device: str = "auto"

    def load(self):
        from .model import load_model

        return load_model(self.name, dtype=self.dtype, device=self.device)


def spec_of(lm: SteerModel) -> ModelSpec:
    """A spec that reloads ``lm`` (its built-in name, hub id or path, and its dtype) on a worker."""
    return ModelSpec(lm.name, dtype=str(lm.dtype).removeprefix("torch."), device="auto")


class TaskFailed(RuntimeError):
    pass


def _key(task: Any) -> str:
    return hashlib.sha256(pickle.dumps(task)).hexdigest()[:16]


class _Worker:
    def __init__(self, spec: ModelSpec, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.lm = spec.load()

    def run(self, fn: Callable, task: Any) -> Any:
        return fn(self.lm, task)


def _result_types() -> list[Any]:
    """The classes a finished task may hold; nothing else is rebuilt from a task file."""
    from .evaluate.generalisation import GeneralisationReport
    from .evaluate.reliability import ReliabilityReport
    from .evaluate.sweep import SweepResult

    return [SweepResult, ReliabilityReport, GeneralisationReport]


def _load_result(path: Path) -> tuple[Any, bool]:
    """A finished task's result, read with torch's weights-only unpickler (tensors, plain containers
    and the report classes above): a planted or damaged file is ignored and its task runs again,
    and no code in it ever runs."""
    try:
        with torch.serialization.safe_globals(_result_types()):
            return torch.load(path, weights_only=True), True
    except Exception as err:  # noqa: BLE001 - any unreadable file means "not done"
        warnings.warn(f"Ignoring {path}: not a task result this library wrote ({type(err).__name__}); "
                      "the task runs again.", stacklevel=3)
        return None, False


def map_tasks(fn: Callable[[Any, Any], Any], tasks: Sequence[Any], *, model, ray: str | None = None,
              workers: int = 2, retries: int = 1, resume_dir: str | os.PathLike | None = None,
              desc: str = "tasks", on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """``fn(lm, task)`` for every task, in order. ``model``: a loaded SteerModel or a :class:`ModelSpec`;
    with Ray each worker loads its own copy (from the spec, or from ``spec_of(model)``). ``on_result(i,
    result)`` is called here as each task finishes (or is found done), e.g. to write its report at once."""
    tasks = list(tasks)
    results: list[Any] = [None] * len(tasks)
    done = [False] * len(tasks)
    folder = Path(resume_dir) if resume_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for i, task in enumerate(tasks):
            path = folder / f"task-{i}-{_key(task)}.pt"
            if path.exists():
                results[i], done[i] = _load_result(path)
                if done[i] and on_result is not None:
                    on_result(i, results[i])

    def finish(i: int, value: Any) -> None:
        results[i], done[i] = value, True
        if folder is not None:
            atomic_write(folder / f"task-{i}-{_key(tasks[i])}.pt", lambda tmp: torch.save(value, tmp))
        if on_result is not None:
            on_result(i, value)

    todo = [i for i in range(len(tasks)) if not done[i]]
    bar = progress_bar([], desc, total=len(tasks), initial=len(tasks) - len(todo), leave=True)
    if ray is None:
        lm = model.load() if isinstance(model, ModelSpec) else model
        for i in todo:
            for attempt in range(retries + 1):
                try:
                    finish(i, fn(lm, tasks[i]))
                    break
                except Exception as err:
                    if attempt == retries:
                        raise TaskFailed(f"task {i} failed {retries + 1} times; its input: {tasks[i]!r:.300}") from err
            bar.update()
    else:
        _run_on_ray(fn, tasks, todo, model, ray, workers, retries, finish, bar)
    bar.close()
    return results


def _run_on_ray(fn, tasks, todo, model, address, workers, retries, finish, bar) -> None:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--ray needs Ray: pip install 'steerlab[ray]'.") from err
    if not isinstance(model, ModelSpec):
        model = spec_of(model)
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    threads = max(1, int(ray.cluster_resources().get("CPU", workers)) // workers)
    Worker: Any = ray.remote(num_cpus=1)(_Worker)
    actors = [Worker.remote(model, threads) for _ in range(min(workers, max(1, len(todo))))]
    queue = [(i, 0) for i in todo]
    running: dict = {}
    idle = list(actors)
    fn_ref = ray.put(fn)
    try:
        while queue or running:
            while queue and idle:
                i, attempt = queue.pop(0)
                actor = idle.pop()
                running[actor.run.remote(fn_ref, tasks[i])] = (i, attempt, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            i, attempt, actor = running.pop(ready[0])
            try:
                finish(i, ray.get(ready[0]))
                idle.append(actor)
                bar.update()
            except ray.exceptions.RayActorError:  # the worker died: replace it and retry the task
                idle.append(Worker.remote(model, threads))
                _retry(queue, i, attempt, retries, tasks)
            except ray.exceptions.RayTaskError as err:
                idle.append(actor)
                _retry(queue, i, attempt, retries, tasks, err)
    finally:
        for actor in actors:
            ray.kill(actor)


def _retry(queue, i, attempt, retries, tasks, err=None) -> None:
    if attempt >= retries:
        raise TaskFailed(f"task {i} failed {attempt + 1} times on Ray; its input: {tasks[i]!r:.300}") from err
    queue.append((i, attempt + 1))


def layer_sweep_tasks(lm: SteerModel, train, test, layers, multipliers=(-1.0, 1.0), *, ray: str | None = None,
                      workers: int = 2, model_spec: ModelSpec | None = None,
                      resume_dir: str | os.PathLike | None = None, **options):
    """:func:`steerlab.evaluate.sweep.layer_sweep` with its layers split into blocks that run as tasks:
    in-process (resumable with ``resume_dir``) or on Ray (``ray="local"`` or a cluster address), where
    each worker loads ``model_spec`` (default: ``lm``'s name and dtype). ``options`` are layer_sweep's."""
    from .evaluate.sweep import SweepTask, _sweep_block, merge_sweeps, sweep_tasks

    task = SweepTask.of(lm, train, test, layers, multipliers, **options)
    blocks = sweep_tasks(task, 2 * workers if ray is not None else len(task.layers))
    parts = map_tasks(_sweep_block, blocks, model=model_spec or lm, ray=ray, workers=workers,
                      resume_dir=resume_dir, desc="layer blocks")
    return merge_sweeps(parts)


def model_stimuli_tasks(writer: SteerModel, concepts, *, ray: str | None = "local", workers: int = 2,
                        model_spec: ModelSpec | None = None, **options):
    """:func:`steerlab.pace.stimuli.model_stimuli` with its shards written on Ray workers (each loads
    ``model_spec``, default ``writer``'s name and dtype); each shard is kept as soon as it comes back,
    as in a local run, so an interrupted run resumes."""
    from .pace.stimuli import model_stimuli, write_shard

    def run_shards(shards, on_result):
        map_tasks(write_shard, shards, model=model_spec or writer, ray=ray, workers=workers,
                  desc="stimuli shards", on_result=on_result)

    return model_stimuli(writer, concepts, run_shards=run_shards, **options)


def build_dictionary_tasks(lm: SteerModel, concepts, layers, *, ray: str | None = "local", workers: int = 2,
                           model_spec: ModelSpec | None = None, resume_dir=None, **options):
    """:func:`steerlab.pace.build_dictionary` with its concept shards run as tasks: on Ray workers when
    ``ray`` is set (each loads ``model_spec``, default ``lm``'s name and dtype), and kept in
    ``resume_dir`` so an interrupted build resumes. ``options`` are build_dictionary's."""
    from .pace.dictionary import build_dictionary, shard_means

    def run_shards(shards):
        return map_tasks(shard_means, shards, model=model_spec or lm, ray=ray, workers=workers,
                         resume_dir=resume_dir, desc="concept shards")

    return build_dictionary(lm, concepts, layers, run_shards=run_shards, **options)
