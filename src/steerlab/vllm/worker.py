"""The worker side of the vLLM plugin: hooks on the model's blocks that read persistent tables.

Built once when the model is loaded (before vLLM compiles it or captures CUDA graphs):

* ``table`` ``[rows, hidden]``: every served direction (:class:`~steerlab.vllm.program.VectorTable`),
  then, when the engine takes ActAdd pairs, ``actadd_max_tokens`` rows per slot that hold the pair
  tensor of the request in that slot (written when it enters the slot, like its program);
* per hooked site, per persistent-batch slot (vLLM's ``input_batch`` row), ``max_ops`` operation
  rows: table row, ``(a, b, strength)`` and ``(start, end, per_position)``.

Before every forward pass :meth:`WorkerSteering.prepare` writes the programs of the requests that
entered a slot since the last step (the host side; a few small copies), then turns them into
per-token operations for all sites at once (``tok_row``, ``tok_weight``: a dozen tensor ops per
pass, on the device, no host reads), indexing the tables with the runner's own per-token buffers,
``req_indices`` (token -> slot) and ``positions`` (token -> absolute position in its own sequence),
so chunked prefill, decode steps and recomputation after preemption all see the same positions.
A hook then only gathers its vectors and adds them (and reads ``h . u`` for projections), with no
data-dependent Python: the same tensors and shapes every step, so it can be compiled and captured.
In eager mode (``enforce_eager``) sites that no scheduled request uses are skipped on the host side,
and so is ``h . u`` on sites where every scheduled operation is an add.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .program import (
    EXTRA_KEY,
    LANDMARK_KEY,
    NO_END,
    PAIR_KEY,
    PAIR_ROW,
    Compiler,
    ModelFacts,
    Pair,
    PluginConfig,
    Program,
    content_key,
)

log = logging.getLogger("steerlab.vllm")
# Per process: the most requests, and the most differently steered ones, seen in one forward pass
# (lets a test prove that requests with different steering really shared a batch).
STATS = {"max_requests": 0, "max_distinct_steering": 0}


def find_blocks(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The model's list of decoder blocks (the first ModuleList with one entry per layer)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and name.endswith("layers"):
            return module
    raise RuntimeError(f"steerlab: found no list of {num_layers} decoder blocks in {type(model).__name__}.")


class WorkerSteering:
    def __init__(self, runner: Any, config: PluginConfig) -> None:
        model_config = runner.model_config
        if getattr(runner, "uses_mrope", False):
            raise RuntimeError("steerlab: models with M-RoPE positions are not supported by the vLLM plugin.")
        num_layers = model_config.hf_text_config.num_hidden_layers
        facts = ModelFacts(str(model_config.model), model_config.get_hidden_size(), num_layers)
        self.compiler = Compiler.from_config(config, facts)
        self.device, dtype = runner.device, model_config.dtype
        slots, k = runner.input_batch.max_num_reqs, config.max_ops
        static = self.compiler.table.weights
        self.pair_base, self.pair_rows = static.shape[0], config.actadd_max_tokens
        pair_rows = slots * self.pair_rows if config.actadd_layers else 0
        self.table = torch.cat([static, static.new_zeros(pair_rows, static.shape[1])]).to(self.device, dtype)
        self.sites = sorted(self.compiler.table.sites | {(layer, "input") for layer in config.actadd_layers})
        self.site_index = {s: i for i, s in enumerate(self.sites)}
        shape = (len(self.sites), slots, k)
        self.cpu_rows = torch.zeros(shape, dtype=torch.long)
        self.cpu_coef = torch.zeros(*shape, 3)  # a, b, strength
        self.cpu_bounds = torch.zeros(*shape, 3, dtype=torch.long)  # start, end, per_position
        self.counts = torch.zeros(len(self.sites), slots, dtype=torch.long)
        on_cpu = self.device.type == "cpu"
        self.rows = self.cpu_rows if on_cpu else self.cpu_rows.to(self.device)
        self.coef = self.cpu_coef if on_cpu else self.cpu_coef.to(self.device)
        self.bounds = self.cpu_bounds if on_cpu else self.cpu_bounds.to(self.device)
        self.max_ops = k
        self.eager = bool(model_config.enforce_eager)
        self.active = [0] * len(self.sites)  # eager mode: ops to run per site this step
        self.projects = [True] * len(self.sites)  # eager mode: sites whose ops this step read h . u
        self.owner: list[str | None] = [None] * slots
        self.scheduled = 0  # requests in the batch at the last step
        self.programs: dict[str, Program] = {}
        self.pairs: dict[str, Pair] = {}  # requests' ActAdd pairs
        self.keys: dict[str, str] = {}
        # The runner's persistent per-token buffers (filled by vLLM before each forward pass).
        self.req_indices = runner.req_indices.gpu
        self.positions = runner.positions
        # Per pass, per site, per token and operation slot: the table row and the weight's two parts
        # (filled by prepare() before each forward pass, read by the hooks).
        tokens = self.positions.shape[0]
        self.tok_row = torch.zeros(len(self.sites), tokens, k, dtype=torch.long, device=self.device)
        self.tok_weight = torch.zeros(len(self.sites), tokens, k, 2, device=self.device)
        blocks = find_blocks(runner.get_model(), num_layers)
        self.handles = [self._hook(blocks[layer], i, site) for i, (layer, site) in enumerate(self.sites)]
        log.info("steerlab: steering %d sites with %d vectors (%d table rows)", len(self.sites),
                 len(self.compiler.vectors), self.table.shape[0])

    # ------------------------------------------------------------------ host side, every step
    def prepare(self, runner: Any, positions: torch.Tensor | None = None) -> None:
        """Before a forward pass over ``positions`` (default: the runner's whole position buffer): write the
        programs of requests new to their slots, then each token's operations for every site."""
        self._admit(runner)
        if self.eager and not any(self.active):
            return  # no scheduled request is steered: the hooks return at once
        self._per_token(self.positions.shape[0] if positions is None else positions.shape[0])

    def _per_token(self, tokens: int) -> None:
        """For every site and operation slot, each token's table row and the two parts of its weight
        (``strength * inside * a`` and ``strength * inside * b``, the latter multiplying ``h . u``), computed
        once per pass for all sites, so a hook does no per-request indexing of its own."""
        slot = self.req_indices[:tokens]
        pos = self.positions[:tokens, None]  # [tokens, 1] against [sites, tokens, ops]
        start, end, per_position = self.bounds[:, slot].unbind(-1)
        a, b, strength = self.coef[:, slot].unbind(-1)
        weight = strength * ((pos >= start) & (pos < end))
        self.tok_weight[:, :tokens, :, 0] = weight * a
        self.tok_weight[:, :tokens, :, 1] = weight * b
        # Per-position vectors read the row for their offset into the window (clamped for tokens outside it,
        # whose weight is 0 anyway).
        row = self.rows[:, slot] + per_position * (pos - start).clamp(min=0)
        self.tok_row[:, :tokens] = row.clamp(max=self.table.shape[0] - 1)

    def _admit(self, runner: Any) -> None:
        batch = runner.input_batch
        n = batch.num_reqs
        changed = False
        for i, rid in enumerate(batch.req_ids[:n]):
            if self.owner[i] == rid:
                continue
            if rid not in self.programs:
                self.programs[rid] = self._program(runner.requests[rid], rid)
                pair = self.pairs.get(rid)
                self.keys[rid] = repr(sorted(self.programs[rid].items())) + (
                    "" if pair is None else content_key(pair.rows))
            self._write(i, self.programs[rid], self.pairs.get(rid))
            self.owner[i] = rid
            changed = True
        if len(self.programs) > 4 * len(self.owner):  # forget finished requests
            self.programs = {r: p for r, p in self.programs.items() if r in runner.requests}
            self.keys = {r: self.keys[r] for r in self.programs}
            self.pairs = {r: t for r, t in self.pairs.items() if r in self.programs}
        if changed and self.device.type != "cpu":
            self.rows.copy_(self.cpu_rows, non_blocking=True)
            self.coef.copy_(self.cpu_coef, non_blocking=True)
            self.bounds.copy_(self.cpu_bounds, non_blocking=True)
        if not changed and n == self.scheduled:
            return  # the same requests in the same slots as last step: tables, counts and stats still hold
        self.scheduled = n
        if changed:  # only a request entering a slot can raise the maxima
            STATS["max_requests"] = max(STATS["max_requests"], n)
            distinct = {self.keys[r] for r in batch.req_ids[:n] if self.programs.get(r)}
            STATS["max_distinct_steering"] = max(STATS["max_distinct_steering"], len(distinct))
        if self.eager:
            self.active = self.counts[:, :n].amax(dim=1).tolist() if n else [0] * len(self.sites)
            # whether any scheduled operation on a site reads h . u (project_out, clamp); adds alone skip it
            self.projects = (self.cpu_coef[:, :n, :, 1] != 0).flatten(1).any(dim=1).tolist() if n else \
                [False] * len(self.sites)

    def _program(self, state: Any, rid: str) -> Program:
        params = state.sampling_params
        extra = getattr(params, "extra_args", None) or {}
        if EXTRA_KEY not in extra:
            return {}
        try:
            spec = self.compiler.spec_of(extra)
            landmarks = extra.get(LANDMARK_KEY) or {}
            pair = Pair.from_extra(extra[PAIR_KEY]) if PAIR_KEY in extra else None
            program = self.compiler.compile(spec, len(state.prompt_token_ids or ()), landmarks.get("assistant"),
                                            landmarks.get("user"), pair)
            if pair is not None:
                self.pairs[rid] = pair
            return program
        except (ValueError, TypeError, KeyError) as err:  # the front end refuses these; never fail the batch
            log.error("steerlab: request %s reached the worker with unusable steering (%s); running it unsteered",
                      state.req_id, err)
            return {}

    def _write(self, slot: int, program: Program, pair: Pair | None) -> None:
        self.cpu_rows[:, slot] = 0
        self.cpu_coef[:, slot] = 0
        self.cpu_bounds[:, slot] = 0
        self.cpu_bounds[:, slot, :, 1] = NO_END
        self.counts[:, slot] = 0
        for site, ops in program.items():
            s = self.site_index[site]
            for k, op in enumerate(ops):
                row = op.row
                if row == PAIR_ROW:  # the request's own rows: its ActAdd tensor goes into this slot's block
                    assert pair is not None
                    row = self.pair_base + slot * self.pair_rows
                    self.table[row: row + pair.rows.shape[0]] = pair.rows.to(self.device, self.table.dtype)
                self.cpu_rows[s, slot, k] = row
                self.cpu_coef[s, slot, k] = torch.tensor([op.a, op.b, op.strength])
                self.cpu_bounds[s, slot, k] = torch.tensor([op.start, op.end, op.per_position])
            self.counts[s, slot] = len(ops)

    # ------------------------------------------------------------------ device side, in the hooks
    def _steer(self, s: int, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """``hidden`` with this site's operations applied; the residual stream is ``hidden + residual``
        (vLLM blocks hand the two on separately and add them in the next block's norm)."""
        ops = self.active[s] if self.eager else self.max_ops
        if ops == 0:
            return hidden
        tokens = hidden.shape[0]
        rows, parts = self.tok_row[s, :tokens], self.tok_weight[s, :tokens]
        project = self.projects[s] if self.eager else True
        for k in range(ops):
            u = self.table[rows[:, k]]
            weight = parts[:, k, 0]
            if project:
                stream = hidden if residual is None else hidden + residual
                weight = weight + parts[:, k, 1] * (stream * u).sum(-1).float()
            hidden = hidden + weight.to(hidden.dtype)[:, None] * u
        return hidden

    def _hook(self, block: nn.Module, s: int, site: str):
        if site == "output":
            def hook(module, args, output):
                if isinstance(output, tuple):
                    residual = output[1] if len(output) > 1 and isinstance(output[1], torch.Tensor) else None
                    return (self._steer(s, output[0], residual), *output[1:])
                return self._steer(s, output, None)

            return block.register_forward_hook(hook)

        def pre_hook(module, args, kwargs):  # (positions, hidden_states, residual) as vLLM blocks take them
            names = ("positions", "hidden_states", "residual")
            bound = dict(zip(names, args, strict=False)) | kwargs
            hidden, residual = bound["hidden_states"], bound.get("residual")
            bound["hidden_states"] = self._steer(s, hidden, residual)
            return (), bound

        return block.register_forward_pre_hook(pre_hook, with_kwargs=True)
