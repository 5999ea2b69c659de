"""Removing undesirable concepts during generation (docs/methods.md, "PaCE", steps 3-5), and the two
baselines PaCE is compared with, behind one interface: each is a steering object that
:func:`steerlab.generate` / :meth:`SteerModel.generate` / :func:`steerlab.steer` accept.

* :class:`PaCE` - per token: scale ``z`` to unit norm, solve the elastic net against the whole
  dictionary, subtract the undesirable atoms' part ``sum_k c_k d_k`` (scale restored); the residual
  and the benign part stay (an oblique projection).
* :class:`OrthogonalProjection` - project ``z`` onto the orthogonal complement of the span of the
  undesirable atoms.
* :class:`VectorSubtraction` - subtract ``strength * ||z||`` times the unit mean of the undesirable atoms.

``strength`` (per row allowed) scales the edit: 0 leaves the model untouched, 1 is the method as stated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from ..intervene import HookContext, Intervention, Rows, Window, apply_fn
from ..steering import SteeringBase
from .dictionary import ConceptDictionary
from .partition import Partition
from .solver import ElasticNet, sparse_code

if TYPE_CHECKING:
    from ..spec import PaceSign


class _Removal(SteeringBase):
    name = "removal"

    def __init__(self, dictionary: ConceptDictionary, partition: Partition, layers: Sequence[int] | int | None = None,
                 *, strength: Rows = 1.0, window: Window | None = None) -> None:
        if list(partition.concepts) != list(dictionary.concepts):
            raise InputError("The partition was made for another dictionary (its concepts differ); re-run the "
                             "partitioner on this dictionary.")
        self.dictionary = dictionary
        self.partition = partition
        layers = dictionary.layers if layers is None else ([layers] if isinstance(layers, int) else list(layers))
        missing = [x for x in layers if x not in dictionary.atoms]
        if missing:
            raise InputError(f"The dictionary has atoms for layers {dictionary.layers}, not {missing}.")
        self.layers = layers
        self.strength = strength
        self.window = window or Window.all()
        self.undesirable = partition.undesirable.nonzero().flatten()
        self._cache: dict = {}

    def _tensor(self, key: str, layer: int, like: torch.Tensor, make) -> torch.Tensor:
        k = (key, layer, like.device)
        if k not in self._cache:
            self._cache[k] = make().to(like.device)
        return self._cache[k]

    def edit(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        """The amount to subtract from each row of ``z`` ([N, d], float32) at ``layer``."""
        raise NotImplementedError

    def _hook(self, layer: int):
        def fn(h: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            sel = ctx.mask
            if len(self.undesirable) == 0:
                return h
            strength = ctx.strength[:, None].expand_as(sel)
            if self._all_positions():
                # Every position, then keep the edit where the window applies: selecting rows by a mask
                # (and asking whether any is selected) would wait for a GPU at every block and step.
                z = h.reshape(-1, h.shape[-1]).float()
                edited = (z - strength.reshape(-1, 1).float() * self.edit(z, layer)).to(h.dtype)
                return torch.where(sel[..., None], edited.reshape(h.shape), h)
            if not sel.any():
                return h
            z = h[sel].float()
            out = h.clone()
            out[sel] = (z - strength[sel].float()[:, None] * self.edit(z, layer)).to(h.dtype)
            return out

        return fn

    def _all_positions(self) -> bool:
        """Edit every position and select afterwards (no host sync); with the sync-free solver only."""
        return False

    def interventions(self, strength: Rows | None = None) -> list[Intervention]:
        s = self.strength if strength is None else strength
        return [apply_fn(layer, self._hook(layer), strength=s, window=self.window) for layer in self.layers]

    def for_batch(self, batch=None) -> list[Intervention]:
        return self.interventions()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layers={self.layers}, undesirable={len(self.undesirable)} of "
                f"{len(self.dictionary)}, task={self.partition.task!r})")


class PaCE(_Removal):
    name = "pace"

    def __init__(self, dictionary: ConceptDictionary, partition: Partition, layers: Sequence[int] | int | None = None,
                 *, solver: ElasticNet = ElasticNet(), strength: Rows = 1.0, window: Window | None = None,
                 sign: PaceSign = "both") -> None:
        """``sign="both"`` (the paper's recipe) removes every undesirable component ``c_k d_k``;
        ``"positive"`` removes only those with ``c_k > 0`` (the activation leans *towards* the
        concept) and keeps negative ones, which lean away from it (e.g. away from "hate")."""
        if sign not in ("both", "positive"):
            raise InputError(f"sign must be 'both' or 'positive', not {sign!r}.")
        super().__init__(dictionary, partition, layers, strength=strength, window=window)
        self.solver = solver
        self.sign = sign
        self._totals: torch.Tensor | None = None  # tokens, non-zeros, removed norm; on the device, read lazily

    @property
    def stats(self) -> dict[str, float]:
        """Tokens decomposed, their non-zero coefficients and the summed ``||removed|| / ||z||`` so far
        (with a sync-free solver every position counts, the window being applied afterwards)."""
        tokens, nonzeros, removed = (0.0, 0.0, 0.0) if self._totals is None else self._totals.tolist()
        return {"tokens": int(tokens), "nonzeros": int(nonzeros), "removed_norm": removed}

    def _all_positions(self) -> bool:
        return bool(self.solver.sync_free)

    def decompose(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        """Elastic-net coefficients ``[N, K]`` of the rows of ``z`` (each scaled to unit norm first;
        the coefficients are returned in ``z``'s own scale). Each step is solved cold: consecutive
        tokens share only ~18% of their support on SmolLM2 (benchmarks/pace_speed.py), too little for
        the previous step's solution to save work."""
        Dt = self._tensor("Dt", layer, z, lambda: self.dictionary.atoms[layer].float().contiguous())
        norm = z.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return sparse_code(Dt.T, z / norm, self.solver) * norm

    def edit(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        C = self.decompose(z, layer)
        U = self._tensor("Ui", layer, z, lambda: self.undesirable)
        atoms = self._tensor("U", layer, z, lambda: self.dictionary.atoms[layer][self.undesirable].float())
        coef = C[:, U] if self.sign == "both" else C[:, U].clamp(min=0)
        removed = coef @ atoms
        step = torch.stack([torch.full((), z.shape[0], dtype=torch.float64, device=z.device),
                            (C != 0).sum().double(),
                            (removed.norm(dim=-1) / z.norm(dim=-1).clamp(min=1e-8)).sum().double()])
        self._totals = step if self._totals is None else self._totals + step
        return removed


class OrthogonalProjection(_Removal):
    name = "orthogonal"

    def _basis(self, layer: int) -> torch.Tensor:
        atoms = self.dictionary.atoms[layer][self.undesirable].double()  # [u, d]
        _, s, vh = torch.linalg.svd(atoms, full_matrices=False)
        rank = int((s > s[0] * 1e-6).sum()) if len(s) else 0
        return vh[:rank].float()  # [r, d] orthonormal rows

    def edit(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        Q = self._tensor("Q", layer, z, lambda: self._basis(layer))
        return (z @ Q.T) @ Q


class VectorSubtraction(_Removal):
    name = "subtraction"

    def __init__(self, dictionary: ConceptDictionary, partition: Partition, layers: Sequence[int] | int | None = None,
                 *, scale: float = 0.1, strength: Rows = 1.0, window: Window | None = None) -> None:
        super().__init__(dictionary, partition, layers, strength=strength, window=window)
        self.scale = scale

    def _direction(self, layer: int) -> torch.Tensor:
        v = self.dictionary.atoms[layer][self.undesirable].float().mean(0)
        return v / v.norm().clamp(min=1e-8)

    def edit(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        v = self._tensor("v", layer, z, lambda: self._direction(layer))
        return self.scale * z.norm(dim=-1, keepdim=True) * v


# The removal methods by name; "pace-positive" removes only the components the activation leans towards.
METHODS: dict[str, Callable[..., _Removal]] = {"pace": PaCE, "pace-positive": functools.partial(PaCE, sign="positive"),
           "orthogonal": OrthogonalProjection, "subtraction": VectorSubtraction}
