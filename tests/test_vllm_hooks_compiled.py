"""The vLLM plugin's device-side hook code under ``torch.compile`` and CUDA graphs.

vLLM compiles the model and (on GPUs) replays captured CUDA graphs; the plugin's hooks must then
still read the steering tables the host rewrites before each step. These tests drive
:class:`steerlab.vllm.worker.WorkerSteering` on a stack of blocks with vLLM's block signature
``(positions, hidden_states, residual) -> (hidden_states, residual)`` and the runner's per-token
buffers, without vLLM itself (its engine tests are tests/test_vllm.py):

* compiled with ``fullgraph=True`` (no graph break, no data-dependent Python), the steered output
  equals eager for several steering programs written into the same tables, and differs from the
  unsteered output (so a hook that was compiled away would fail);
* on CUDA: one captured graph, replayed after the host has rewritten the tables, the token -> slot
  map and the positions, gives what eager gives for each.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from steerlab.vector import SteeringVector
from steerlab.vllm.program import PAIR_KEY, Pair, PluginConfig
from steerlab.vllm.worker import WorkerSteering

HIDDEN, LAYERS, SLOTS, TOKENS = 64, 4, 8, 24


class Block(nn.Module):
    """vLLM's decoder-layer calling convention; the arithmetic only has to mix positions in."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.lin = nn.Linear(HIDDEN, HIDDEN)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(HIDDEN, HIDDEN, generator=torch.Generator().manual_seed(seed)) * 0.1)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None):
        residual = hidden_states if residual is None else hidden_states + residual
        return torch.tanh(self.lin(residual)) + 0.01 * positions[:, None], residual


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(i) for i in range(LAYERS))

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        residual = None
        for block in self.layers:
            x, residual = block(positions, x, residual)
        return x + residual


def _runner(device: torch.device, folder, stack: Stack, eager: bool) -> SimpleNamespace:
    """The attributes of vLLM's model runner that WorkerSteering reads (and the steering it holds)."""
    config = SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=LAYERS), model="tiny",
                             get_hidden_size=lambda: HIDDEN, dtype=torch.float32, enforce_eager=eager)
    runner = SimpleNamespace(model_config=config, device=device, uses_mrope=False,
                             input_batch=SimpleNamespace(max_num_reqs=SLOTS, num_reqs=0, req_ids=[]),
                             req_indices=SimpleNamespace(gpu=torch.zeros(TOKENS, dtype=torch.long, device=device)),
                             positions=torch.zeros(TOKENS, dtype=torch.long, device=device), requests={},
                             get_model=lambda: stack)
    runner.steering = WorkerSteering(runner, PluginConfig(str(folder), actadd_layers=(2,)))  # hooks the blocks
    return runner


def _vectors(folder) -> None:
    g = torch.Generator().manual_seed(0)
    SteeringVector({1: torch.randn(HIDDEN, generator=g), 2: torch.randn(HIDDEN, generator=g)}, "tiny", HIDDEN,
                   ).save(folder / "a.safetensors")
    SteeringVector({2: torch.randn(HIDDEN, generator=g)}, "tiny", HIDDEN, site="input").save(folder / "b.safetensors")
    SteeringVector({1: torch.randn(3, HIDDEN, generator=g)}, "tiny", HIDDEN, apply="front",
                   ).save(folder / "front.safetensors")


# A request's own ActAdd pair (as the front end sends it): rows for positions 1..3 of block 2's input.
PAIR_SPEC = {"actadd": {"positive": "x", "negative": "y", "layer": 2}}
PAIR = Pair(1, torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(5)))

# Three batches; each entry is (steering or None, prompt length, positions of its tokens this step).
STEPS = [
    [({"vectors": [{"name": "a", "multiplier": 2.0, "window": "all"}]}, 10, range(0, 10)),
     (None, 6, range(0, 6)),
     ({"vectors": [{"name": "front", "multiplier": 1.0}]}, 8, range(0, 8))],
    [(PAIR_SPEC, 9, range(0, 9)),
     ({"vectors": [{"name": "b", "op": "project_out", "window": "all"},
                   {"name": "a", "multiplier": -1.5, "window": {"start": 3, "end": 20}}]}, 12, range(4, 12)),
     ({"vectors": [{"name": "a", "op": "clamp", "value": 2.0, "window": "all"}]}, 5, range(0, 5)),
     ({"vectors": [{"name": "front", "multiplier": 2.0}]}, 7, range(0, 7)),
     (None, 4, range(0, 4))],
    [(PAIR_SPEC, 5, range(0, 5)),  # a new pair request in the same slot: its rows are rewritten
     ({"vectors": [{"name": "a", "multiplier": 3.0, "window": "generated"}]}, 6, range(6, 30))],
]


def _schedule(runner: SimpleNamespace, step: int) -> None:
    """What vLLM does before a forward pass: requests into slots, the per-token buffers filled."""
    entries = STEPS[step]
    runner.input_batch.req_ids = [f"r{step}-{i}" for i in range(len(entries))]
    runner.input_batch.num_reqs = len(entries)
    slots, positions = [], []
    for i, (spec, prompt_len, span) in enumerate(entries):
        rid = runner.input_batch.req_ids[i]
        runner.requests[rid] = SimpleNamespace(
            req_id=rid, prompt_token_ids=list(range(prompt_len)),
            sampling_params=SimpleNamespace(extra_args=None if spec is None else {"steering": spec} | (
                {PAIR_KEY: PAIR.to_extra()} if "actadd" in spec else {})))
        slots += [i] * len(span)
        positions += list(span)
    slots, positions = slots[:TOKENS], positions[:TOKENS]
    runner.req_indices.gpu.zero_()
    runner.positions.zero_()
    runner.req_indices.gpu[: len(slots)] = torch.tensor(slots)
    runner.positions[: len(positions)] = torch.tensor(positions)
    runner.steering.prepare(runner)


def _setup(tmp_path, device: str, eager: bool = False):
    _vectors(tmp_path)
    stack = Stack().to(device)
    runner = _runner(torch.device(device), tmp_path, stack, eager)
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(1)).to(device)
    return stack, runner, x


def test_compiled_hooks_follow_each_steps_tables(tmp_path):
    stack, runner, x = _setup(tmp_path, "cpu")
    compiled = torch.compile(stack, fullgraph=True, backend="aot_eager", dynamic=False)
    with torch.no_grad():
        for step in range(len(STEPS)):
            _schedule(runner, step)
            eager = stack(runner.positions, x)
            got = compiled(runner.positions, x)
            torch.testing.assert_close(got, eager)
            plain = _unhooked(stack, runner.positions, x)
            assert (eager - plain).abs().max() > 1e-3  # the steering really acts


def _unhooked(stack: Stack, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    saved = [(b._forward_hooks.copy(), b._forward_pre_hooks.copy()) for b in stack.layers]
    for b in stack.layers:
        b._forward_hooks.clear()
        b._forward_pre_hooks.clear()
    try:
        return stack(positions, x)
    finally:
        for b, (post, pre) in zip(stack.layers, saved, strict=True):
            b._forward_hooks.update(post)
            b._forward_pre_hooks.update(pre)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_read_rewritten_tables(tmp_path):
    stack, runner, x = _setup(tmp_path, "cuda")
    _schedule(runner, 0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside capture, as vLLM does
            stack(runner.positions, x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = stack(runner.positions, x)
    with torch.no_grad():
        for step in range(len(STEPS)):
            _schedule(runner, step)
            graph.replay()
            torch.cuda.synchronize()
            eager = stack(runner.positions, x)
            torch.testing.assert_close(out, eager)
            assert (eager - _unhooked(stack, runner.positions, x)).abs().max() > 1e-3
    # And through inductor (the compiler vLLM uses on GPUs), against eager.
    compiled = torch.compile(stack, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for step in range(len(STEPS)):
            _schedule(runner, step)
            torch.testing.assert_close(compiled(runner.positions, x), stack(runner.positions, x))
