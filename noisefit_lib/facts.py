"""A synthetic world of fictional people in which every answer can be scored exactly.

Each person has a two-word name and one value per *attribute* (birth city, profession, birth
decade, employer, home country, instrument). Every attribute has its own closed answer set,
disjoint from the others, so "a wrong answer of the right type" is well defined. From the world
we derive:

* a **pretraining corpus**: paraphrased biographies (random templates, shuffled sentence order)
  of the *known* people, plus question-answer text about a small group of them, so that the
  base model learns the answer format;
* **QA items** in named splits: ``sft`` (fine-tuning pairs), ``val``, ``test_known`` (facts seen
  in pretraining, never fine-tuned: the paper's setting), ``test_paraphrase`` (the same facts
  asked with held-out question templates), ``test_unknown`` (people never seen: the right answer
  is to abstain), and ``abstain_pool`` (other unknown people, for abstention fine-tuning);
* :meth:`World.sft_items`: the fine-tuning set, optionally with a fraction of wrong labels
  (noisy SFT data) and abstention examples;
* a **scorer**: every answer is ``correct``, ``hallucinated`` (a wrong value of the right
  type), ``abstained`` or ``malformed``.

All randomness comes from an explicit NumPy generator seeded by :class:`WorldConfig`'s seed, so
a config determines its world. Pure Python and NumPy: no ``transformers`` import.

The attribute catalogue (templates and answer sets) is :mod:`noisefit_lib.facts_attributes`;
the rate intervals are :func:`noisefit_lib.stats.wilson`.

Explained in: notebooks/part1_noisefit/01_a_world_we_can_check.py. Used by every chapter of
Part I.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from noisefit_lib.facts_attributes import ATTRIBUTES, Attribute, answer_values, make_words

OUTCOMES: tuple[str, ...] = ("correct", "hallucinated", "abstained", "malformed")
"""The four ways an answer is scored, in the book's order."""

ABSTAIN = "unknown"
"""The abstention answer the world teaches (one word, so one token)."""

ABSTAIN_PHRASES: frozenset[str] = frozenset({"unknown", "i don't know", "i do not know"})
"""Answers (lower-cased) that count as abstaining."""

END = "."
"""Every answer ends with this token; the answer is the text before it."""

SPLITS: tuple[str, ...] = (
    "qa_pretrain",
    "sft",
    "val",
    "test_known",
    "test_paraphrase",
    "test_unknown",
    "abstain_pool",
)
"""Names accepted by :meth:`World.split`."""


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world (a config and its seed give the same world).

    The known people are divided, in these proportions, into the ``qa_pretrain`` group (QA text
    about them is in the pretraining corpus, which teaches the base model the answer format),
    ``sft``, ``val`` and ``test`` (the rest). Unknown people are split evenly into the
    ``abstain_pool`` and ``test_unknown``.

    Attributes:
        n_known: people with biographies in the pretraining corpus.
        n_unknown: people who never appear in pretraining.
        n_attributes: how many attributes of :data:`ATTRIBUTES` each person has (1-6).
        n_bios: paraphrased biographies per known person in the corpus.
        qa_repeats: copies of each ``qa_pretrain`` question-answer text in the corpus.
        frac_qa_pretrain: share of known people in the ``qa_pretrain`` group.
        frac_sft: share of known people in the ``sft`` group.
        frac_val: share of known people in the ``val`` group.
        n_first_names: size of the first-name pool.
        n_last_names: size of the last-name pool.
        seed: seed of the world generator.
    """

    n_known: int = 200
    n_unknown: int = 60
    n_attributes: int = 4
    n_bios: int = 4
    qa_repeats: int = 1
    frac_qa_pretrain: float = 0.3
    frac_sft: float = 0.3
    frac_val: float = 0.1
    n_first_names: int = 60
    n_last_names: int = 80
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_attributes <= len(ATTRIBUTES):
            raise ValueError(f"n_attributes must be in 1..{len(ATTRIBUTES)}")
        if self.n_known < 4 or self.n_unknown < 2:
            raise ValueError("need at least 4 known and 2 unknown people")
        fracs = (self.frac_qa_pretrain, self.frac_sft, self.frac_val)
        if min(fracs) < 0 or sum(fracs) >= 1:
            raise ValueError(f"group fractions must be >= 0 and sum below 1, got {fracs}")
        if self.n_first_names * self.n_last_names < 2 * (self.n_known + self.n_unknown):
            raise ValueError("name pools too small: need first*last >= 2 * people")
        if self.n_bios < 1 or self.qa_repeats < 0:
            raise ValueError("need n_bios >= 1 and qa_repeats >= 0")

    def to_dict(self) -> dict[str, int | float]:
        """Plain-data view (JSON-serialisable), e.g. for cache keys and results files."""
        return asdict(self)

    def digest(self) -> str:
        """A SHA-256 hex digest of the config: equal configs, equal worlds."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Person:
    """A fictional person.

    Attributes:
        name: two words, ``"First Last"``.
        values: attribute name -> value.
        known: whether the person's biographies are in the pretraining corpus.
        group: ``qa_pretrain``, ``sft``, ``val``, ``test``, ``abstain_pool`` or ``test_unknown``.
    """

    name: str
    values: dict[str, str]
    known: bool
    group: str


@dataclass(frozen=True)
class QAItem:
    """One question with its training target and its ground truth.

    Attributes:
        person: the person's name.
        attribute: the attribute asked about.
        prompt: the question text, ending in ``A:``.
        answer: the target answer word (``ABSTAIN`` for unknown people; a wrong value where
            the label was corrupted).
        gold: the true value a correct answer must match, ``None`` for unknown people.
        split: the split the item came from.
        noisy_label: whether ``answer`` was corrupted (noisy SFT data).
    """

    person: str
    attribute: str
    prompt: str
    answer: str
    gold: str | None
    split: str
    noisy_label: bool = False

    @property
    def response(self) -> str:
        """The training continuation of ``prompt``: the answer and the end token."""
        return f"{self.answer} {END}"

    @property
    def text(self) -> str:
        """Prompt and response as one training text."""
        return f"{self.prompt} {self.response}"


class World:
    """A seeded world of fictional people, its corpus, its QA splits and its scorer.

    Args:
        config: the world's settings; the world is a pure function of it.
    """

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        rng = np.random.default_rng(
            int.from_bytes(hashlib.sha256(f"world:{self.config.seed}".encode()).digest()[:8])
        )
        self.attributes: tuple[Attribute, ...] = ATTRIBUTES[: self.config.n_attributes]
        taken: set[str] = set()
        firsts = make_words(rng, self.config.n_first_names, (2, 2), taken)
        lasts = make_words(rng, self.config.n_last_names, (3, 3), taken)
        all_values = answer_values(rng, taken)
        self.values: dict[str, tuple[str, ...]] = {
            a.name: all_values[a.name] for a in self.attributes
        }
        self._value_type = {v: name for name, vals in self.values.items() for v in vals}
        self.people: list[Person] = self._make_people(rng, firsts, lasts)
        self._by_name = {p.name: p for p in self.people}
        self.bios: list[str] = self._make_bios(rng)
        self._heldout_choice = {  # one held-out question template per test fact, fixed per world
            (p.name, a.name): int(rng.integers(0, len(a.heldout)))
            for p in self.people
            if p.group == "test"
            for a in self.attributes
        }

    # -- construction -----------------------------------------------------------------------

    def _make_people(self, rng: np.random.Generator, firsts: list, lasts: list) -> list[Person]:
        c = self.config
        n = c.n_known + c.n_unknown
        pairs = rng.choice(len(firsts) * len(lasts), size=n, replace=False)
        names = [f"{firsts[i // len(lasts)]} {lasts[i % len(lasts)]}" for i in pairs]
        n_qa = round(c.frac_qa_pretrain * c.n_known)
        n_sft = round(c.frac_sft * c.n_known)
        n_val = round(c.frac_val * c.n_known)
        groups = (
            ["qa_pretrain"] * n_qa
            + ["sft"] * n_sft
            + ["val"] * n_val
            + ["test"] * (c.n_known - n_qa - n_sft - n_val)
            + ["abstain_pool"] * (c.n_unknown // 2)
            + ["test_unknown"] * (c.n_unknown - c.n_unknown // 2)
        )
        people = []
        for i, (name, group) in enumerate(zip(names, groups, strict=True)):
            values = {
                a.name: self.values[a.name][int(rng.integers(0, a.n_values))]
                for a in self.attributes
            }
            people.append(Person(name, values, known=i < c.n_known, group=group))
        return people

    def _make_bios(self, rng: np.random.Generator) -> list[str]:
        bios = []
        for person in self.people:
            if not person.known:
                continue
            for _ in range(self.config.n_bios):
                order = rng.permutation(len(self.attributes))
                sentences = []
                for j in order:
                    a = self.attributes[int(j)]
                    template = a.bio[int(rng.integers(0, len(a.bio)))]
                    sentences.append(template.format(name=person.name, value=person.values[a.name]))
                bios.append(" ".join(sentences))
        return bios

    # -- data -------------------------------------------------------------------------------

    def person(self, name: str) -> Person:
        """The person called ``name`` (KeyError if there is none)."""
        return self._by_name[name]

    def group(self, group: str) -> list[Person]:
        """The people of one group, in world order."""
        return [p for p in self.people if p.group == group]

    def split(self, name: str) -> list[QAItem]:
        """The QA items of split ``name`` (one per person and attribute), in a fixed order.

        ``test_paraphrase`` asks the ``test_known`` facts with a held-out template;
        ``test_unknown`` and ``abstain_pool`` have ``answer = ABSTAIN`` and ``gold = None``.

        Raises:
            ValueError: for a name not in :data:`SPLITS`.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        group = {"test_known": "test", "test_paraphrase": "test"}.get(name, name)
        items = []
        for p in self.group(group):
            for a in self.attributes:
                template = a.question
                if name == "test_paraphrase":
                    template = a.heldout[self._heldout_choice[(p.name, a.name)]]
                gold = p.values[a.name] if p.known else None
                items.append(
                    QAItem(
                        person=p.name,
                        attribute=a.name,
                        prompt=template.format(name=p.name),
                        answer=gold if gold is not None else ABSTAIN,
                        gold=gold,
                        split=name,
                    )
                )
        return items

    def pretraining_corpus(self) -> list[str]:
        """Biographies of every known person plus ``qa_repeats`` copies of the ``qa_pretrain`` QA.

        The order is fixed; a training loop shuffles it with its own generator.
        """
        qa = [item.text for item in self.split("qa_pretrain")] * self.config.qa_repeats
        return [*self.bios, *qa]

    def sft_items(
        self,
        *,
        label_noise: float = 0.0,
        abstain_fraction: float = 0.0,
        generator: np.random.Generator | None = None,
    ) -> list[QAItem]:
        """The fine-tuning set: the ``sft`` split, optionally corrupted and with abstentions.

        Args:
            label_noise: fraction of the ``sft`` items (rounded) whose answer is replaced by a
                different value of the same type, drawn uniformly; those items get
                ``noisy_label=True`` and keep the true ``gold``.
            abstain_fraction: abstention examples to add, as a fraction of the ``sft`` size,
                drawn without replacement from ``abstain_pool`` (capped at its size).
            generator: draws the corrupted items, their wrong values and the abstention
                examples; required when either fraction is positive.

        Returns:
            The items, ``sft`` first (in split order), then the abstention examples.
        """
        if not 0 <= label_noise <= 1 or abstain_fraction < 0:
            raise ValueError("need 0 <= label_noise <= 1 and abstain_fraction >= 0")
        items = self.split("sft")
        if (label_noise > 0 or abstain_fraction > 0) and generator is None:
            raise ValueError("label_noise or abstain_fraction needs an explicit generator")
        if label_noise > 0:
            assert generator is not None
            n_noisy = round(label_noise * len(items))
            chosen = set(generator.choice(len(items), size=n_noisy, replace=False).tolist())
            for i in sorted(chosen):
                item = items[i]
                wrong = [v for v in self.values[item.attribute] if v != item.gold]
                items[i] = replace(
                    item, answer=wrong[int(generator.integers(0, len(wrong)))], noisy_label=True
                )
        if abstain_fraction > 0:
            assert generator is not None
            pool = self.split("abstain_pool")
            n = min(round(abstain_fraction * len(items)), len(pool))
            items += [pool[int(i)] for i in generator.choice(len(pool), size=n, replace=False)]
        return items

    def vocabulary(self) -> list[str]:
        """Every word the corpus, the questions and the answers can contain, sorted."""
        words: set[str] = {END, ABSTAIN, "I", "don't", "know"}
        for p in self.people:
            words.update(p.name.split())
        for a in self.attributes:
            words.update(self.values[a.name])
            for template in (*a.bio, a.question, *a.heldout):
                words.update(template.replace("{name}", " ").replace("{value}", " ").split())
        return sorted(words)

    # -- scoring ----------------------------------------------------------------------------

    def attribute_of(self, value: str) -> str | None:
        """The attribute whose answer set contains ``value``, or ``None``."""
        return self._value_type.get(value)

    def score(self, answer: str, item: QAItem) -> str:
        """Score one answer to ``item`` as one of :data:`OUTCOMES`.

        The answer is normalised by :func:`parse_answer`. Then: an abstention phrase is
        ``abstained``; the true value (``item.gold``) is ``correct``; any other value of the
        asked attribute's answer set is ``hallucinated``; everything else (empty text, several
        words, a value of another attribute) is ``malformed``. For unknown people (``gold`` is
        ``None``) every typed answer is a hallucination: the model cannot know it.
        """
        a = parse_answer(answer)
        if a.lower() in ABSTAIN_PHRASES:
            return "abstained"
        if item.gold is not None and a == item.gold:
            return "correct"
        if a in self.values[item.attribute]:
            return "hallucinated"
        return "malformed"

    def score_all(self, answers: Sequence[str], items: Sequence[QAItem]) -> list[str]:
        """:meth:`score` for paired sequences of answers and items."""
        if len(answers) != len(items):
            raise ValueError(f"{len(answers)} answers for {len(items)} items")
        return [self.score(a, it) for a, it in zip(answers, items, strict=True)]

    def summary(self) -> dict[str, int]:
        """Sizes of the world's parts, for a printed overview."""
        out = {"people": len(self.people), "attributes": len(self.attributes)}
        out.update({f"people_{g}": len(self.group(g)) for g in _GROUPS})
        out["pretraining_texts"] = len(self.pretraining_corpus())
        out["vocabulary"] = len(self.vocabulary())
        return out


_GROUPS = ("qa_pretrain", "sft", "val", "test", "abstain_pool", "test_unknown")


def parse_answer(generated: str) -> str:
    """The answer in a generated continuation: the words before the first end token.

    Special tokens such as ``<eos>`` and surrounding whitespace are dropped; a continuation
    without an end token is taken whole (and will usually score as malformed).
    """
    words = []
    for word in generated.split():
        if word == END or word.startswith("<"):
            break
        words.append(word)
    return " ".join(words)


def outcome_counts(outcomes: Iterable[str]) -> dict[str, int]:
    """Counts of each of :data:`OUTCOMES` (all four keys, zeros included)."""
    counts = Counter(outcomes)
    unknown = set(counts) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"not outcomes: {sorted(unknown)}; expected {OUTCOMES}")
    return {o: int(counts.get(o, 0)) for o in OUTCOMES}


def outcome_rates(outcomes: Sequence[str]) -> dict[str, float]:
    """Fraction of each of :data:`OUTCOMES` (they sum to 1)."""
    if len(outcomes) == 0:
        raise ValueError("no outcomes to rate")
    return {o: c / len(outcomes) for o, c in outcome_counts(outcomes).items()}


def as_pairs(items: Iterable[QAItem]) -> list[dict[str, str]]:
    """Items as ``{"prompt", "response"}`` dicts, the format of ``noisefit.data`` ("plain")."""
    return [{"prompt": it.prompt, "response": it.response} for it in items]


__all__ = [
    "ABSTAIN",
    "ABSTAIN_PHRASES",
    "END",
    "OUTCOMES",
    "SPLITS",
    "Person",
    "QAItem",
    "World",
    "WorldConfig",
    "as_pairs",
    "outcome_counts",
    "outcome_rates",
    "parse_answer",
]
