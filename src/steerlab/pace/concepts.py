"""Concepts and their stimulus sentences, all available offline.

Concepts: the most frequent English words from ``wordfreq`` (which ships its frequency data),
keeping alphabetic words of 3+ letters and dropping function words, or any list a user gives.
Stimuli: project-written templates that use the word in different syntactic roles; the atom is read
at the word's own tokens, so the template's shared context largely cancels when atoms are centred.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InputError

# Sentence frames; "{w}" is the concept. Varied roles (object, subject, topic, quoted, modifier).
TEMPLATES: tuple[str, ...] = (
    "I kept thinking about {w} all day.",
    "The word {w} came up again in the meeting.",
    "Everyone at dinner had an opinion about {w}.",
    "She wrote a short essay on {w} for school.",
    "When people mention {w}, I listen closely.",
    "There is a lot to say about {w}.",
)

# Function words and fillers that carry no concept (wordfreq ranks them highest).
FUNCTION_WORDS = frozenset("""
the and for that this with you are was have not but they his her she him from what all were when
there can been has had would will their more which one about out some them then into could only
other than its also our your who did may any these those how very just over such where most even
well here should must might shall upon yes yet nor both each few many much own same too why whom
whose while because though although unless until since after before again once off onto under
above below between through during without within along among around against toward towards
across behind beyond into via per than does doing done having being get got gets let lets say
says said made make makes like just now still ever never always often also back away down
i'm it's don't can't won't that's there's i've you're he's she's we're they're isn't aren't
wasn't weren't didn't doesn't hasn't haven't hadn't couldn't wouldn't shouldn't
mr mrs ms etc yeah okay gonna wanna lol http https www com org
""".split())


def concept_words(n: int = 10000, *, lang: str = "en", min_length: int = 3, skip: Iterable[str] = ()) -> list[str]:
    """The ``n`` most frequent content words of ``lang`` according to ``wordfreq`` (offline)."""
    try:
        from wordfreq import top_n_list
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("concept_words() needs wordfreq: pip install 'steerlab[pace]'.") from err
    drop = FUNCTION_WORDS | {s.lower() for s in skip}
    out: list[str] = []
    pool = top_n_list(lang, n * 2 + 2000)
    for word in pool:
        if word.isalpha() and len(word) >= min_length and word not in drop:
            out.append(word)
            if len(out) == n:
                return out
    raise InputError(f"wordfreq offers only {len(out)} usable {lang!r} words; ask for fewer than {n}.")


def stimuli(concept: str, templates: Iterable[str] = TEMPLATES) -> list[tuple[str, int, int]]:
    """``(sentence, start, end)`` per template: the sentence and the concept's character span."""
    out = []
    for template in templates:
        if template.count("{w}") != 1:
            raise InputError(f"Template {template!r} must contain '{{w}}' exactly once.")
        start = template.index("{w}")
        text = template.replace("{w}", concept)
        out.append((text, start, start + len(concept)))
    return out
