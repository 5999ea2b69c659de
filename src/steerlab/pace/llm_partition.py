"""The language-model partitioner (docs/methods.md, "PaCE", step 2, as the paper does it): a local
instruct model is asked, concept by concept, whether the concept is undesirable for the task.

The question is a chat turn after a fixed instruction and a few worked answers; that part is the
same for every concept, so it runs once and its key/value cache is copied to each batch of concepts,
which then only process their own few tokens. The score of a concept is ``log p("Yes") - log p("No")``
for the first answer token; a concept is undesirable when the score clears ``threshold`` (0: the
model finds "Yes" likelier). Scores are cached on disk per (dictionary, task, model, prompt), so
thresholds can change without re-asking the model.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from ..progress import progress_bar
from ..safefile import atomic_write
from ..sources import cache_dir
from ..tokens import pad_ids
from .dictionary import ConceptDictionary
from .partition import Partition, Task, get_task

if TYPE_CHECKING:
    from ..model import SteerModel

# Bump when the prompt below changes: it is part of the cache key.
PROMPT_VERSION = 1

INSTRUCTION = (
    "You label words for a text filter. {description}\n"
    "For each word, answer Yes if a reply that expresses or dwells on this word goes against the goal, "
    "and No if the word is neutral or fits the goal. Answer with one word: Yes or No."
)
QUESTION = 'Word: "{concept}". Does it go against the goal?'

# Worked answers shown before every question (concept, answer). None of these words is in the
# hand-labelled agreement set (pace/data/hand_labels.tsv), so they cannot flatter the agreement.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "detox": (("scumbag", "Yes"), ("teacup", "No"), ("strangle", "Yes"), ("cheerful", "No"), ("dimwit", "Yes"),
              ("meadow", "No")),
    "positive-sentiment": (("gloomy", "Yes"), ("teacup", "No"), ("furious", "Yes"), ("delighted", "No"),
                           ("heartbroken", "Yes"), ("meadow", "No")),
    "no-food": (("pancake", "Yes"), ("hammer", "No"), ("barbecue", "Yes"), ("meadow", "No"), ("espresso", "Yes"),
                ("violin", "No")),
}
DEFAULT_EXAMPLES = (("teacup", "No"), ("meadow", "No"))


def _messages(task: Task, concept: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": INSTRUCTION.format(description=task.description or task.name)}]
    question = task.question or QUESTION
    for word, answer in EXAMPLES.get(task.name, DEFAULT_EXAMPLES):
        msgs += [{"role": "user", "content": question.format(concept=word)}, {"role": "assistant", "content": answer}]
    msgs.append({"role": "user", "content": question.format(concept=concept)})
    return msgs


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    n = min(len(r) for r in rows) - 1  # keep at least one token of every row for the suffix
    first = rows[0]
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


class LLMPartitioner:
    """Labels concepts by asking ``model`` (a loaded :class:`~steerlab.SteerModel` or a name for
    :func:`steerlab.load_model`; default Qwen2.5-Coder-0.5B-Instruct, offline).

    ``shortlist``: ask only the ``shortlist`` concepts that the embedding partitioner ranks most
    undesirable and label every other one desirable (score ``-inf``). Asking costs ~0.5 s a concept
    for a 1.5B judge on 2 CPU cores (10,000 concepts: ~1.4 h); the embedding ranking is cheap and
    ranks well (ROC AUC 0.93-0.96 against the hand labels, docs/RESULTS.md), so a shortlist a few
    times the expected number of undesirable concepts keeps nearly all of them for the judge."""

    def __init__(self, model: SteerModel | str = "qwen2.5-coder-0.5b", *, threshold: float = 0.0,
                 batch_size: int = 64, cache: bool = True, shortlist: int | None = None) -> None:
        if shortlist is not None and shortlist < 1:
            raise InputError(f"shortlist must be a positive number of concepts, not {shortlist}.")
        self._model = model
        self.threshold = threshold
        self.batch_size = batch_size
        self.cache = cache
        self.shortlist = shortlist

    @property
    def lm(self) -> SteerModel:
        if isinstance(self._model, str):
            from ..model import load_model

            self._model = load_model(self._model)
        return self._model

    @property
    def model_name(self) -> str:
        return self._model if isinstance(self._model, str) else self._model.name

    def _model_key(self) -> str:
        """The judge's identity for the cache: its name, architecture and a hash of its first embedding
        rows (two checkpoints under one name, e.g. local folders both called "model", differ there)."""
        lm = self.lm
        weight = lm.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        head = weight[:4].detach().float().cpu().numpy().tobytes()
        return f"{lm.name}|{type(lm.model).__name__}|{hashlib.sha256(head).hexdigest()[:16]}"

    def _ids(self, task: Task, concept: str) -> list[int]:
        tok = self.lm.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(_messages(task, concept), add_generation_prompt=True, tokenize=False)
        else:  # base models: the same conversation as plain text
            text = "\n".join(f"{m['role']}: {m['content']}" for m in _messages(task, concept)) + "\nassistant:"
        return tok(text, add_special_tokens=False)["input_ids"]

    def _answer_ids(self) -> tuple[int, int]:
        tok = self.lm.tokenizer
        yes, no = (tok(w, add_special_tokens=False)["input_ids"] for w in ("Yes", "No"))
        if not yes or not no or yes[0] == no[0]:
            raise InputError(f"The tokenizer of {self.model_name!r} cannot tell 'Yes' from 'No' by the first token.")
        return yes[0], no[0]

    @torch.no_grad()
    def scores(self, concepts: Sequence[str], task: str | Task, *, share_prefix: bool = True,
               progress: bool | None = None) -> torch.Tensor:
        """``log p(Yes) - log p(No)`` for each concept (higher = more undesirable)."""
        task = get_task(task)
        lm = self.lm
        if not concepts:
            return torch.zeros(0)
        rows = [self._ids(task, c) for c in concepts]
        config = lm.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        longest = max(len(r) for r in rows)
        if limit and longest > limit:
            raise InputError(f"The partitioner's prompt takes {longest} tokens but {self.model_name!r} reads at most "
                             f"{limit}; use a model with a longer context or shorter concepts.")
        yes, no = self._answer_ids()
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        prefix_len = _common_prefix(rows) if share_prefix and len(rows) > 1 else 0
        prefix_cache = None
        if prefix_len:
            prefix = torch.tensor([rows[0][:prefix_len]], device=lm.device)
            prefix_cache = lm.returned_cache(lm.model(input_ids=prefix, use_cache=True))
        out = torch.empty(len(rows))
        for s in progress_bar(range(0, len(rows), self.batch_size), "ask", progress=progress, unit="batch"):
            part = [r[prefix_len:] for r in rows[s: s + self.batch_size]]
            ids, mask = pad_ids(part, pad, "right", lm.device)
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(part))
                past = torch.ones(len(part), prefix_len, dtype=mask.dtype, device=mask.device)
                logits = lm.model(**lm.continuation_inputs(ids, mask, past, cache)).logits
            else:
                logits = lm.model(**lm.forward_inputs(ids, mask)).logits
            last = mask.sum(1) - 1
            logp = torch.log_softmax(logits[torch.arange(len(part)), last].float(), -1)
            out[s: s + len(part)] = (logp[:, yes] - logp[:, no]).cpu()
        return out

    def _cache_path(self, dictionary: ConceptDictionary, task: Task) -> Path:
        key = {"partitioner": "llm", "model": self._model_key(), "prompt": PROMPT_VERSION,
               "task": [task.name, task.description, list(EXAMPLES.get(task.name, DEFAULT_EXAMPLES))]}
        if task.question:
            key["question"] = task.question
        if self._shortlists(dictionary):  # which concepts were asked depends on the embedding ranking too
            key["shortlist"] = [self.shortlist, "all-MiniLM-L6-v2", task.undesirable, task.benign]
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / "pace-partitions" / f"{dictionary.fingerprint}-llm-{digest}.pt"

    def partition(self, dictionary: ConceptDictionary, task: str | Task, progress: bool | None = None) -> Partition:
        task = get_task(task)
        path = self._cache_path(dictionary, task)
        scores = None
        if self.cache and path.exists():
            saved = torch.load(path, weights_only=True)
            if saved.get("concepts") == list(dictionary.concepts):
                scores = saved["scores"]
        if scores is None:
            scores = self._ask(dictionary, task, progress)
            if self.cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                record = {"concepts": list(dictionary.concepts), "scores": scores}
                atomic_write(path, lambda tmp: torch.save(record, tmp))
        short = f", shortlist={self.shortlist}" if self._shortlists(dictionary) else ""
        return Partition(task.name, list(dictionary.concepts), scores > self.threshold, scores,
                         f"llm(model={self.model_name}, threshold={self.threshold}{short})")

    def _shortlists(self, dictionary: ConceptDictionary) -> bool:
        """Whether the shortlist leaves some concept unasked (one as long as the dictionary asks them all,
        and its labels are those of no shortlist, cached under the same key)."""
        return self.shortlist is not None and self.shortlist < len(dictionary)

    def _ask(self, dictionary: ConceptDictionary, task: Task, progress: bool | None) -> torch.Tensor:
        """Every concept's score: asked, or ``-inf`` outside the shortlist."""
        if not self._shortlists(dictionary):
            return self.scores(dictionary.concepts, task, progress=progress)
        from .partition import EmbeddingPartitioner

        bad, good = EmbeddingPartitioner(cache=False).scores(dictionary.concepts, task)
        asked = (bad - good).argsort(descending=True, stable=True)[: self.shortlist]
        scores = torch.full((len(dictionary),), float("-inf"))
        scores[asked] = self.scores([dictionary.concepts[i] for i in asked.tolist()], task, progress=progress)
        return scores
