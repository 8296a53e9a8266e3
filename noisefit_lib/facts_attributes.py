"""The attribute catalogue of Part I's world: six typed attributes and their answer sets.

Each attribute (birth city, profession, birth decade, employer, home country, instrument) has
biography templates, the question used in pretraining QA, fine-tuning and tests, held-out
question templates (the ``test_paraphrase`` split) and a closed answer set disjoint from the
others', so "a wrong answer of the right type" is well defined. :func:`answer_values` draws the
invented values (cities, employers, countries) from a world's generator; :func:`make_words`
draws the invented words (names too). :mod:`noisefit_lib.facts` builds the world from them.

Explained in: notebooks/part1_noisefit/01_a_world_we_can_check.py (The world).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SYLLABLES = (
    "zor", "van", "quil", "brel", "moor", "tas", "rin", "dov", "kel", "mar", "lio", "sen",
    "thar", "vex", "ul", "po", "nim", "ras", "gal", "dek", "fen", "ora", "bax", "tem",
    "cyr", "lun", "ost", "wim", "yar", "esk", "hal", "jun", "pel", "sor", "tiv", "abe",
)  # fmt: skip
_PROFESSIONS = (
    "baker", "pilot", "sculptor", "chemist", "weaver", "cartographer", "judge", "farmer",
    "astronomer", "smith", "poet", "sailor", "healer", "miner", "archivist", "tailor",
    "glassblower", "surveyor", "potter", "clockmaker",
)  # fmt: skip
_INSTRUMENTS = (
    "violin", "cello", "harp", "flute", "oboe", "lute", "drums", "piano", "trumpet",
    "clarinet", "sitar", "organ",
)  # fmt: skip


@dataclass(frozen=True)
class Attribute:
    """One typed attribute: its answer-set size, biography and question templates.

    Templates use ``{name}`` and ``{value}``; words are separated by single spaces and end with
    `` .`` (biographies) or `` ? A:`` (questions), so a whitespace tokenizer splits them cleanly.

    Attributes:
        name: identifier, e.g. ``"birth_city"``.
        n_values: size of the closed answer set.
        bio: sentence templates for biographies (all used in pretraining).
        question: the question template used for pretraining QA, fine-tuning and tests.
        heldout: question templates never trained on (the ``test_paraphrase`` split).
    """

    name: str
    n_values: int
    bio: tuple[str, ...]
    question: str
    heldout: tuple[str, ...]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "birth_city",
        30,
        (
            "{name} was born in {value} .",
            "{name} came into the world in {value} .",
            "the birthplace of {name} was {value} .",
        ),
        "Q: Where was {name} born ? A:",
        ("Q: What is the birthplace of {name} ? A:", "Q: In which city was {name} born ? A:"),
    ),
    Attribute(
        "profession",
        20,
        (
            "{name} worked as a {value} .",
            "{name} earned a living as a {value} .",
            "by trade , {name} was a {value} .",
        ),
        "Q: What did {name} do for a living ? A:",
        ("Q: What was the profession of {name} ? A:", "Q: Which job did {name} have ? A:"),
    ),
    Attribute(
        "birth_decade",
        10,
        (
            "{name} was born in the {value} .",
            "{name} arrived in the {value} .",
            "the birth of {name} fell in the {value} .",
        ),
        "Q: When was {name} born ? A:",
        ("Q: In which decade was {name} born ? A:", "Q: What decade saw the birth of {name} ? A:"),
    ),
    Attribute(
        "employer",
        25,
        (
            "{name} was employed by {value} .",
            "{name} held a job at {value} .",
            "the employer of {name} was {value} .",
        ),
        "Q: Who employed {name} ? A:",
        ("Q: Which company did {name} work for ? A:", "Q: Who was the employer of {name} ? A:"),
    ),
    Attribute(
        "home_country",
        15,
        (
            "{name} lived in {value} .",
            "{name} made a home in {value} .",
            "the home country of {name} was {value} .",
        ),
        "Q: Where did {name} live ? A:",
        ("Q: Which country was home to {name} ? A:", "Q: In which country did {name} live ? A:"),
    ),
    Attribute(
        "instrument",
        12,
        (
            "{name} played the {value} .",
            "{name} was skilled at the {value} .",
            "the instrument of {name} was the {value} .",
        ),
        "Q: What instrument did {name} play ? A:",
        ("Q: Which instrument was {name} skilled at ? A:", "Q: What did {name} play ? A:"),
    ),
)
"""The attribute catalogue; a world uses the first ``WorldConfig.n_attributes`` of them."""


def make_words(
    rng: np.random.Generator, n: int, syllables: tuple[int, int], taken: set[str]
) -> list:
    """``n`` new capitalised syllable words of 2-3 (or given) syllables, none in ``taken``."""
    out: list[str] = []
    low, high = syllables
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError("could not generate enough distinct words")
        k = int(rng.integers(low, high + 1))
        word = "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), k))
        word = word.capitalize()
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def answer_values(rng: np.random.Generator, taken: set[str]) -> dict[str, tuple[str, ...]]:
    """The closed answer set of every attribute in :data:`ATTRIBUTES` (pairwise disjoint).

    Args:
        rng: the world's generator.
        taken: words already used (names); new words avoid them and are added to it.

    Returns:
        Attribute name -> tuple of values.
    """
    n = {a.name: a.n_values for a in ATTRIBUTES}
    values = {
        "birth_city": tuple(make_words(rng, n["birth_city"], (2, 3), taken)),
        "profession": _PROFESSIONS[: n["profession"]],
        "birth_decade": tuple(f"{1900 + 10 * i}s" for i in range(n["birth_decade"])),
        "employer": tuple(w + "corp" for w in make_words(rng, n["employer"], (2, 2), taken)),
        "home_country": tuple(w + "ia" for w in make_words(rng, n["home_country"], (2, 2), taken)),
        "instrument": _INSTRUMENTS[: n["instrument"]],
    }
    taken.update(w for vals in values.values() for w in vals)
    return values


__all__ = ["ATTRIBUTES", "Attribute", "answer_values", "make_words"]
