"""A steered steerlab model inside EleutherAI's lm-evaluation-harness (``pip install lm-eval``).

Importing this module registers the model type ``steerlab`` with lm-eval's registry::

    import steerlab.evaluate.harness, lm_eval
    lm_eval.simple_evaluate(model="steerlab",
                            model_args="model=smollm2-135m,vector=v.safetensors,multiplier=4,window=all",
                            tasks=["steerlab_quiz"], task_manager=steerlab.evaluate.harness.task_manager())

(``steerlab eval`` does the same from the command line.) It scores log-likelihood requests with
:func:`steerlab.logprobs.prompt_logprobs` on exactly the tokens lm-eval's ``local-completions``
sends to ``steerlab serve`` (context then continuation, tokenized with the model's tokenizer, no
special tokens added), so the in-process route and the server route give the same numbers.

Where steering applies: a vector's window is read against the scored sequence as one prompt. A
chat-formatted prompt (lm-eval's ``--apply_chat_template``) has an assistant header, and windows
that start at the assistant turn (CAA's own window, ``assistant``) start there; a raw-text prompt
has none, so such a window covers only its last token and leaves the scored continuation
unsteered. For raw-text tasks use ``window=all`` (every position) or a ``{start, end}`` span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lm_eval.models  # noqa: F401  - lm-eval's own models first: it loads them only into an empty registry
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from ..errors import InputError
from ..generation import generate_ids
from ..logprobs import prompt_logprobs
from ..spec import SteeringFactory, SteeringSpec, VectorEntry
from ..tokens import TokenPrompt

if TYPE_CHECKING:
    from ..model import SteerModel

__all__ = ["SteerlabLM", "spec_from_args"]


def spec_from_args(steering: Any = None, vector: str | None = None, multiplier: float = 1.0,
                   layer: int | str | None = None, window: str = "own") -> SteeringSpec:
    """The steering that lm-eval ``model_args`` ask for: ``steering`` as a spec (dict, JSON form) or
    as ``VECTOR*MULT@WINDOW+...`` (the server's model-name form), or one ``vector`` file with
    ``multiplier``, ``layer`` (one, or several joined by ``;``) and ``window``."""
    if steering is not None and vector is not None:
        raise InputError("Give steering or vector, not both.")
    if isinstance(steering, SteeringSpec):
        return steering
    if isinstance(steering, dict):
        return SteeringSpec.from_dict(steering)
    if isinstance(steering, str) and steering:
        return SteeringSpec.from_model_name("steerlab+" + steering) or SteeringSpec()
    if vector is None:
        return SteeringSpec()
    layers = None
    if layer is not None and str(layer) != "":
        layers = tuple(int(x) for x in str(layer).split(";"))
    entry = VectorEntry(str(vector), float(multiplier), layers, window=window)  # type: ignore[arg-type]
    return SteeringSpec.from_dict(SteeringSpec((entry,)).to_dict())  # checked like any spec


@register_model("steerlab")
class SteerlabLM(TemplateLM):
    """lm-eval's model interface over a :class:`~steerlab.model.SteerModel` and one steering spec.

    ``model``: a built-in name or path (as :func:`steerlab.load_model` takes), or pass ``lm``; the
    steering as :func:`spec_from_args` takes it; ``vectors``: named vectors (else names are paths)."""

    def __init__(self, model: str = "smollm2-135m", *, lm: SteerModel | None = None, steering: Any = None,
                 vector: str | None = None, multiplier: float = 1.0, layer: int | str | None = None,
                 window: str = "own", vectors: dict | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, dtype: str | None = None, **unused: Any) -> None:
        super().__init__()
        if lm is None:
            from ..model import load_model

            lm = load_model(model, **({"dtype": dtype} if dtype else {}))
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.spec = spec_from_args(steering, vector, multiplier, layer, window)
        self.factory = SteeringFactory(lm, vectors)
        self.factory.check(self.spec)
        self.steering = self.factory.build(self.spec)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        # A row is max_length tokens of input plus the token they predict: keep it within the positions
        # the model has.
        context = getattr(lm.model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length or context - 1)

    # ------------------------------------------------------------------ lm-eval's interface
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.lm.name)).replace("/", "__")

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # What lm-eval's API models put before an empty context: BOS if the model has one, else EOS.
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """lm-eval's ``--apply_chat_template``: the model's own chat template, as text."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"])

    def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        rows = []
        for _, context, continuation in requests:
            # Left-truncated as lm-eval's own models do: at most max_length tokens of input before each
            # scored token (the row's last token is only predicted). A token with nothing before it
            # cannot be scored, so at least the first token of a row counts as context.
            ids = (context + continuation)[-(self.max_length + 1):]
            rows.append((ids, max(1, len(ids) - len(continuation))))
        scores = self.score([row[0] for row in rows], disable_tqdm=disable_tqdm)
        out = []
        for (_, ctxlen), lp in zip(rows, scores, strict=True):
            part = lp[ctxlen:]
            out.append((float(sum(e.logprob for e in part)),
                        all(e.top[0][0] == e.token for e in part)))
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood (perplexity tasks). A document longer than ``max_length`` is
        cut into lm-eval's rolling windows: every token is scored exactly once, each window seeing up
        to ``max_length`` tokens, the first token conditioned on the prefix token (BOS, else EOS)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="rolling log-likelihood"):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scores = self._loglikelihood_tokens([(None, context, target) for context, target in windows],
                                                disable_tqdm=True)
            out.append(float(sum(s for s, _ in scores)))
        return out

    @torch.no_grad()
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        out: list[str] = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm, desc="generate"):
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_tokens", 256)))
            temperature = float(kwargs.pop("temperature", 0.0))
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            batch = self.lm.prepare([TokenPrompt.of(self.tokenizer, ids)], padding_side="left")
            batch = self.steering.transform_batch(self.lm, batch)
            new = generate_ids(self.lm, batch, self.steering.for_batch(batch), max_new_tokens=max_new,
                               do_sample=temperature > 0, temperature=temperature or 1.0)[0].tolist()
            eos = self.tokenizer.eos_token_id
            new = new[: new.index(eos)] if eos in new else new
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            cut = min((text.find(s) for s in until if s and s in text), default=-1)
            out.append(text[:cut] if cut >= 0 else text)
        return out

    # ------------------------------------------------------------------ scoring
    def score(self, rows: list[list[int]], disable_tqdm: bool = True) -> list[list]:
        """Per row, its tokens' log-probabilities under this model's steering (the first is None)."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # similar lengths share a batch
        result: list[list] = [[] for _ in rows]
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, disable=disable_tqdm, desc="log-likelihood"):
            chunk = order[start: start + self.batch_size]
            batch = self.lm.prepare([TokenPrompt.of(self.tokenizer, rows[i]) for i in chunk], padding_side="right")
            batch = self.steering.transform_batch(self.lm, batch)
            scored = prompt_logprobs(self.lm, batch, self.steering.for_batch(batch), top_k=1)
            for i, lp in zip(chunk, scored, strict=True):
                result[i] = lp
        return result


def task_manager(folder: Any = None, **kwargs: Any) -> Any:
    """lm-eval's TaskManager with steerlab's offline tasks (written to ``folder``; see
    :mod:`steerlab.evaluate.tasks`) next to lm-eval's own."""
    from lm_eval.tasks import TaskManager

    from .tasks import write_tasks

    return TaskManager(include_path=str(write_tasks(folder, **kwargs)))
