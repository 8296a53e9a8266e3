"""The synthetic fact world: determinism, disjoint splits, noisy labels, the scorer."""

import sys

import numpy as np
import pytest

from noisefit_lib import facts

SMALL = facts.WorldConfig(n_known=40, n_unknown=10, n_attributes=4, n_bios=2, seed=3)


@pytest.fixture(scope="module")
def world():
    return facts.World(SMALL)


def test_importing_facts_does_not_import_transformers():
    assert "noisefit_lib.facts" in sys.modules
    import subprocess

    code = "import sys, noisefit_lib.facts; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_same_config_same_world_and_seed_changes_it(world):
    again = facts.World(SMALL)
    assert [p.name for p in again.people] == [p.name for p in world.people]
    assert again.bios == world.bios
    assert [it.text for it in again.split("test_paraphrase")] == [
        it.text for it in world.split("test_paraphrase")
    ]
    other = facts.World(facts.WorldConfig(**{**SMALL.to_dict(), "seed": 4}))
    assert [p.name for p in other.people] != [p.name for p in world.people]
    assert SMALL.digest() == facts.WorldConfig(**SMALL.to_dict()).digest()


def test_answer_sets_are_disjoint_and_each_value_has_one_type(world):
    seen: set[str] = set()
    for name, values in world.values.items():
        assert len(set(values)) == len(values)
        assert not seen & set(values), f"{name} shares values with another attribute"
        seen |= set(values)
        assert all(world.attribute_of(v) == name for v in values)
    names = {w for p in world.people for w in p.name.split()}
    assert not names & seen, "a name word is also an answer"


def test_groups_sizes_and_known_flags(world):
    sizes = world.summary()
    assert sizes["people"] == 50
    assert sum(sizes[f"people_{g}"] for g in facts._GROUPS) == 50
    assert all(p.known for g in ("qa_pretrain", "sft", "val", "test") for p in world.group(g))
    assert not any(p.known for g in ("abstain_pool", "test_unknown") for p in world.group(g))
    assert len({p.name for p in world.people}) == 50


def test_corpus_holds_known_people_only_and_qa_only_for_its_group(world):
    corpus = " ".join(world.pretraining_corpus())
    for p in world.people:
        assert (p.name in corpus) == p.known, p
    assert len(world.bios) == SMALL.n_known * SMALL.n_bios
    qa_people = {it.person for it in world.split("qa_pretrain")}
    qa_texts = [t for t in world.pretraining_corpus() if t.startswith("Q:")]
    assert {p.name for p in world.people if any(p.name in t for t in qa_texts)} == qa_people
    for bio in world.bios[: SMALL.n_bios]:  # each bio states every attribute of its person once
        person = world.people[0]
        assert all(
            bio.count(f" {v} ") + bio.endswith(f" {v} .") >= 1 for v in person.values.values()
        )


def test_splits_are_disjoint_and_well_formed(world):
    people = {s: {it.person for it in world.split(s)} for s in facts.SPLITS}
    groups = ["qa_pretrain", "sft", "val", "test_known", "test_unknown", "abstain_pool"]
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            assert not people[a] & people[b], (a, b)
    assert people["test_paraphrase"] == people["test_known"]
    for item in world.split("test_known"):
        assert item.gold == world.person(item.person).values[item.attribute] == item.answer
        assert item.prompt.startswith("Q: ") and item.prompt.endswith(" ? A:")
    for item in world.split("test_unknown"):
        assert item.gold is None and item.answer == facts.ABSTAIN
    known = {(it.person, it.attribute): it for it in world.split("test_known")}
    for item in world.split("test_paraphrase"):
        twin = known[(item.person, item.attribute)]
        assert item.gold == twin.gold and item.prompt != twin.prompt
        attribute = next(a for a in world.attributes if a.name == item.attribute)
        assert item.prompt in [t.format(name=item.person) for t in attribute.heldout]
    with pytest.raises(ValueError, match="unknown split 'bogus'"):
        world.split("bogus")


def test_held_out_question_templates_are_never_trained_on(world):
    def templates(split):
        return {it.prompt.replace(it.person, "{name}") for it in world.split(split)}

    trained = templates("qa_pretrain") | templates("sft") | templates("test_known")
    assert len(trained) == SMALL.n_attributes  # one training template per attribute
    assert not trained & templates("test_paraphrase")


def test_vocabulary_covers_every_text(world):
    vocab = set(world.vocabulary())
    texts = world.pretraining_corpus() + [it.text for s in facts.SPLITS for it in world.split(s)]
    assert {w for t in texts for w in t.split()} <= vocab
    assert facts.ABSTAIN in vocab and facts.END in vocab


def test_sft_items_label_noise_and_abstentions(world):
    clean = world.sft_items()
    assert [it.text for it in clean] == [it.text for it in world.split("sft")]
    rng = np.random.default_rng(0)
    noisy = world.sft_items(label_noise=0.25, abstain_fraction=0.5, generator=rng)
    n_sft = len(clean)
    flipped = [it for it in noisy[:n_sft] if it.noisy_label]
    assert len(flipped) == round(0.25 * n_sft)
    for it in flipped:
        assert it.answer != it.gold and world.attribute_of(it.answer) == it.attribute
        assert world.score(it.answer, it) == "hallucinated"
    assert all(it.answer == it.gold for it in noisy[:n_sft] if not it.noisy_label)
    extra = noisy[n_sft:]
    assert len(extra) == min(round(0.5 * n_sft), len(world.split("abstain_pool")))
    assert all(it.answer == facts.ABSTAIN and it.split == "abstain_pool" for it in extra)
    again = world.sft_items(
        label_noise=0.25, abstain_fraction=0.5, generator=np.random.default_rng(0)
    )
    assert [it.text for it in again] == [it.text for it in noisy]
    with pytest.raises(ValueError, match="explicit generator"):
        world.sft_items(label_noise=0.1)
    with pytest.raises(ValueError):
        world.sft_items(label_noise=1.5, generator=rng)


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("{gold} . <eos>", "correct"),
        ("{gold} .", "correct"),
        ("  {gold}   . <eos> <pad>", "correct"),
        ("{gold} <eos>", "correct"),
        ("{wrong} . <eos>", "hallucinated"),
        ("unknown . <eos>", "abstained"),
        ("I don't know .", "abstained"),
        ("{other_type} . <eos>", "malformed"),
        ("{gold} {gold} . <eos>", "malformed"),
        (". <eos>", "malformed"),
        ("", "malformed"),
        ("banana .", "malformed"),
    ],
)
def test_scorer(world, generated, expected):
    item = world.split("test_known")[0]
    wrong = next(v for v in world.values[item.attribute] if v != item.gold)
    other = next(a for a in world.values if a != item.attribute)
    text = generated.format(gold=item.gold, wrong=wrong, other_type=world.values[other][0])
    assert world.score(text, item) == expected


def test_scorer_on_unknown_people(world):
    item = world.split("test_unknown")[0]
    assert world.score("unknown .", item) == "abstained"
    assert world.score(f"{world.values[item.attribute][0]} .", item) == "hallucinated"
    assert world.score("zzz", item) == "malformed"


def test_parse_answer():
    assert facts.parse_answer("Foo . <eos>") == "Foo"
    assert facts.parse_answer("<eos> Foo .") == ""
    assert facts.parse_answer("I don't know . x") == "I don't know"


def test_rates_and_counts():
    outcomes = ["correct"] * 3 + ["hallucinated"] + ["abstained"] * 0 + ["malformed"] * 4
    assert facts.outcome_counts(outcomes) == {
        "correct": 3,
        "hallucinated": 1,
        "abstained": 0,
        "malformed": 4,
    }
    rates = facts.outcome_rates(outcomes)
    assert list(rates) == list(facts.OUTCOMES) and sum(rates.values()) == pytest.approx(1)
    with pytest.raises(ValueError, match="not outcomes"):
        facts.outcome_counts(["right"])
    with pytest.raises(ValueError):
        facts.outcome_rates([])


def test_as_pairs_matches_noisefit_plain_template(world):
    items = world.split("sft")[:3]
    pairs = facts.as_pairs(items)
    assert [f"{p['prompt']} {p['response']}" for p in pairs] == [it.text for it in items]


def test_bad_configs_fail():
    with pytest.raises(ValueError, match="n_attributes"):
        facts.WorldConfig(n_attributes=7)
    with pytest.raises(ValueError, match="fractions"):
        facts.WorldConfig(frac_qa_pretrain=0.5, frac_sft=0.5)
    with pytest.raises(ValueError, match="name pools"):
        facts.WorldConfig(n_known=5000, n_first_names=10, n_last_names=10)


def test_full_scale_world_builds():
    big = facts.World(
        facts.WorldConfig(
            n_known=5000, n_unknown=1000, n_attributes=6, n_first_names=120, n_last_names=120
        )
    )
    assert len(big.people) == 6000 and len(big.split("test_known")) > 1000
