"""Splitting work into tasks: in-process, resumable, retried; and on a local Ray instance (2 workers)
with results equal to the single-process run."""

import pytest
import torch

from steerlab import datasets
from steerlab.distributed import ModelSpec, TaskFailed, map_tasks

CALLS: list = []


def _square(lm, x):
    CALLS.append(x)
    if x == "boom":
        raise ValueError("bad input")
    return x * x


def test_in_process_resume_and_failure_report(tmp_path):
    CALLS.clear()
    assert map_tasks(_square, [1, 2, 3], model=None, resume_dir=tmp_path) == [1, 4, 9]
    assert map_tasks(_square, [1, 2, 3, 4], model=None, resume_dir=tmp_path) == [1, 4, 9, 16]
    assert CALLS == [1, 2, 3, 4]  # the second run only did the new task
    with pytest.raises(TaskFailed, match="task 1 failed 2 times; its input: 'boom'"):
        map_tasks(_square, [5, "boom"], model=None, retries=1)
    assert CALLS[-2:] == ["boom", "boom"]


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch PLANTED_TASK_RAN",))


def test_a_planted_task_file_never_runs_code(tmp_path, monkeypatch):
    """--resume reads finished tasks back; a file planted under a task's name is ignored, not executed."""
    CALLS.clear()
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "tasks"
    assert map_tasks(_square, [3], model=None, resume_dir=folder) == [9]
    (path,) = folder.glob("task-0-*.pt")
    torch.save(_RunsCode(), path)
    with pytest.warns(UserWarning, match="not a task result"):
        assert map_tasks(_square, [3], model=None, resume_dir=folder) == [9]
    assert not (tmp_path / "PLANTED_TASK_RAN").exists() and CALLS == [3, 3]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_sweep_dictionary_and_stimuli_on_ray_equal_in_process(smol, ray_local, tmp_path):
    from steerlab.distributed import build_dictionary_tasks, layer_sweep_tasks
    from steerlab.evaluate.sweep import layer_sweep
    from steerlab.pace import build_dictionary, concept_words

    train, test = datasets.split(datasets.to_open_answers(datasets.builtin("sentiment")))
    train, test = train[:8], test[:6]
    local = layer_sweep(smol, train, test, [4, 8, 12], [-2, 2], progress=False)
    spec = ModelSpec("smollm2-135m", dtype="float32")
    remote = layer_sweep_tasks(smol, train, test, [4, 8, 12], [-2, 2], ray="local", workers=2, model_spec=spec)
    assert remote.layers == local.layers and remote.recommended_layer == local.recommended_layer
    assert abs(remote.baseline - local.baseline) < 1e-5
    for layer in map(str, local.layers):
        for m in local.p_matching[layer]:
            assert abs(remote.p_matching[layer][m] - local.p_matching[layer][m]) < 1e-4
        assert abs(remote.vector_norms[layer] - local.vector_norms[layer]) < 1e-4

    words = concept_words(40)
    d_local = build_dictionary(smol, words, [10], shard=10)
    d_ray = build_dictionary_tasks(smol, words, [10], shard=10, ray="local", workers=2, model_spec=spec)
    assert d_ray.concepts == d_local.concepts
    assert torch.allclose(d_ray.atoms[10], d_local.atoms[10], atol=1e-4)

    # Model-written stimuli: shards written on the workers (seeded sampling) equal a local run, and each
    # shard is on disk, so a later run (here: local, no Ray) reads them instead of writing again.
    from steerlab.distributed import model_stimuli_tasks
    from steerlab.pace import stimuli as stim

    concepts = ["river", "bread", "music", "winter"]
    options = dict(per_concept=2, max_new_tokens=16, shard=2)
    s_local = stim.model_stimuli(smol, concepts, folder=tmp_path / "local", progress=False, **options)
    s_ray = model_stimuli_tasks(smol, concepts, ray="local", workers=2, model_spec=spec, folder=tmp_path / "ray",
                                **options)
    assert s_ray == s_local and sum(map(len, s_ray.values())) >= 3  # (a short sentence may miss its word)
    assert len(list((tmp_path / "ray").glob("shard-*.json"))) == 2
    calls = []
    again = stim.model_stimuli(smol, concepts, folder=tmp_path / "ray", run_shards=lambda *a: calls.append(a),
                               **options)
    assert again == s_ray and calls == []
