"""Part I's tokenizer (facts_tokenizer), tiny Llama and its pretraining and cache (facts_llama),
the answers and their scores (answers), and saving/loading checkpoints (checkpoints)."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from noisefit_lib import answers, checkpoints, facts, facts_llama, facts_tokenizer

WORLD = facts.World(facts.WorldConfig(n_known=12, n_unknown=4, n_attributes=2, n_bios=2, seed=1))
SHAPE = facts_llama.ModelConfig(hidden=32, layers=1, heads=2, max_positions=64)
QUICK = facts_llama.PretrainConfig(steps=120, batch_size=8, lr=1e-2, warmup=5, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return facts_tokenizer.build_tokenizer(WORLD.vocabulary())


@pytest.fixture(scope="module")
def trained(tokenizer):
    model = facts_llama.build_model(SHAPE, len(tokenizer), seed=0)
    history = facts_llama.pretrain(model, tokenizer, WORLD.pretraining_corpus(), QUICK)
    return model, history


def test_importing_part_one_modules_does_not_import_transformers():
    code = (
        "import sys, noisefit_lib.facts_llama, noisefit_lib.answers, noisefit_lib.checkpoints; "
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tokenizer_ids_specials_and_round_trip(tokenizer, tmp_path):
    assert tokenizer.convert_tokens_to_ids(list(facts_tokenizer.SPECIAL_TOKENS)) == [0, 1, 2, 3]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == len(WORLD.vocabulary()) + 4
    text = WORLD.split("sft")[0].text
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == facts_tokenizer.BOS_ID and ids[-1] == facts_tokenizer.EOS_ID
    assert len(ids) == len(text.split()) + 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("Zzzunseen")["input_ids"][1] == facts_tokenizer.UNK_ID
    with pytest.raises(ValueError, match="out-of-vocabulary"):
        facts_tokenizer.encode(tokenizer, ["Zzzunseen"])
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(again, PreTrainedTokenizerFast)
    assert again(text)["input_ids"] == ids


def test_prompt_ids_strip_the_appended_eos(tokenizer):
    prompt = WORLD.split("test_known")[0].prompt
    (ids,) = answers.prompt_ids(tokenizer, [prompt])
    assert ids[0] == facts_tokenizer.BOS_ID and ids[-1] != facts_tokenizer.EOS_ID
    assert tokenizer.decode(ids[1:]) == prompt


def test_model_from_config_is_tied_and_seeded(tokenizer):
    model = facts_llama.build_model(SHAPE, len(tokenizer), seed=0)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert model.config.intermediate_size == 128
    d, v = 32, len(tokenizer)
    expected = v * d + (4 * d * d + 3 * d * 4 * d + 2 * d) + d  # embeddings, one block, norm
    assert facts_llama.n_parameters(model) == expected
    again = facts_llama.build_model(SHAPE, len(tokenizer), seed=0)
    other = facts_llama.build_model(SHAPE, len(tokenizer), seed=1)
    w = model.model.embed_tokens.weight
    assert torch.equal(w, again.model.embed_tokens.weight)
    assert not torch.equal(w, other.model.embed_tokens.weight)


def test_learning_rate_schedule():
    cfg = facts_llama.PretrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_batch_order_is_seeded_and_covers_each_epoch():
    cfg = facts_llama.PretrainConfig(steps=10, batch_size=4, seed=0)
    order = facts_llama.batch_order(8, cfg)
    assert order.shape == (10, 4)
    assert sorted(order.flatten()[:8].tolist()) == list(range(8))
    assert torch.equal(order, facts_llama.batch_order(8, cfg))
    assert not torch.equal(
        order, facts_llama.batch_order(8, facts_llama.PretrainConfig(steps=10, seed=1))
    )


def test_pretraining_lowers_the_loss_and_is_bitwise_repeatable(tokenizer, trained):
    _, history = trained
    assert len(history["loss"]) == QUICK.steps
    assert np.mean(history["loss"][-5:]) < np.mean(history["loss"][:5]) - 1.0
    model = facts_llama.build_model(SHAPE, len(tokenizer), seed=0)
    again = facts_llama.pretrain(model, tokenizer, WORLD.pretraining_corpus(), QUICK)
    assert again["loss"] == history["loss"]


def test_generate_answers_batched_equals_one_by_one(tokenizer, trained):
    model, _ = trained
    prompts = [it.prompt for it in WORLD.split("qa_pretrain")[:5] + WORLD.split("test_paraphrase")]
    texts, conf = answers.generate_answers(model, tokenizer, prompts, max_new_tokens=3)
    singles = [answers.generate_answers(model, tokenizer, [p], max_new_tokens=3) for p in prompts]
    assert texts == [t[0][0] for t in singles]
    np.testing.assert_allclose(conf, [c[0] for _, c in singles], rtol=1e-4)
    assert not any("<pad>" in t for t in texts)
    assert ((conf > 0) & (conf <= 1)).all()
    assert all(1 <= len(t.split()) <= 3 for t in texts)


def test_confidence_is_the_probability_of_the_answer_token(tokenizer, trained):
    model, _ = trained
    prompt = WORLD.split("qa_pretrain")[0].prompt
    (text,), conf = answers.generate_answers(model, tokenizer, [prompt], max_new_tokens=2)
    ids = torch.tensor(answers.prompt_ids(tokenizer, [prompt]))
    with torch.no_grad():
        probs = model(input_ids=ids).logits[0, -1].softmax(-1)
    first = tokenizer.convert_tokens_to_ids(text.split()[0])
    assert int(probs.argmax()) == first
    assert conf[0] == pytest.approx(float(probs[first]), rel=1e-5)


def test_evaluate_scores_with_the_world(tokenizer, trained):
    model, _ = trained
    items = WORLD.split("qa_pretrain") + WORLD.split("test_unknown")
    ev = answers.evaluate(model, tokenizer, WORLD, items)
    assert len(ev.outcomes) == len(items) == len(ev.confidence)
    assert sum(ev.counts().values()) == len(items)
    assert ev.outcomes == WORLD.score_all(ev.answers, items)
    assert ev.correct().sum() == ev.counts()["correct"]
    assert ev.counts()["correct"] > 0  # 120 steps memorise some of the QA it was trained on


def test_save_and_from_pretrained_round_trip(tokenizer, trained, tmp_path):
    model, _ = trained
    folder = checkpoints.save_pretrained_atomic(model, tokenizer, tmp_path / "base", extra={"a": 1})
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    loaded, tok = checkpoints.load_pretrained(str(folder))
    ids = torch.tensor(answers.prompt_ids(tokenizer, [WORLD.split("sft")[0].prompt]))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert tok(WORLD.bios[0])["input_ids"] == tokenizer(WORLD.bios[0])["input_ids"]
    assert loaded.config.tie_word_embeddings


def test_cache_pretrains_once_then_loads(tmp_path, capsys):
    first = facts_llama.load_or_pretrain(WORLD, SHAPE, QUICK, cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert not first.from_cache and f"base model {first.key[:12]}" in out
    second = facts_llama.load_or_pretrain(WORLD, SHAPE, QUICK, cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert second.from_cache and out.startswith(f"loaded cached base model {first.key[:12]}")
    assert second.key == first.key and second.path == first.path
    assert second.history["loss"] == first.history["loss"]
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == [f"base-{first.key[:16]}"]


def test_cache_key_depends_on_every_config_and_the_version(monkeypatch):
    import noisefit_lib

    key = facts_llama.cache_key(SHAPE, WORLD.config, QUICK)
    assert key == facts_llama.cache_key(SHAPE, WORLD.config, QUICK)
    assert key != facts_llama.cache_key(facts_llama.ModelConfig(hidden=64), WORLD.config, QUICK)
    other_world = facts.WorldConfig(**{**WORLD.config.to_dict(), "seed": 9})
    assert key != facts_llama.cache_key(SHAPE, other_world, QUICK)
    assert key != facts_llama.cache_key(SHAPE, WORLD.config, facts_llama.PretrainConfig(seed=1))
    monkeypatch.setattr(noisefit_lib, "__version__", "9.9.9")
    assert key != facts_llama.cache_key(SHAPE, WORLD.config, QUICK)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NOISEFIT_CACHE_DIR", str(tmp_path / "c"))
    assert checkpoints.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NOISEFIT_CACHE_DIR")
    monkeypatch.setenv("NOISEFIT_RUNS_DIR", str(tmp_path / "runs"))
    assert checkpoints.default_cache_dir() == tmp_path / "runs" / "cache"


def test_base_configs_presets_seed_and_overrides():
    world, model, train = facts_llama.base_configs("book", seed=2)
    assert world.seed == train.seed == 2
    assert world.n_known == facts_llama.BASE_PRESETS["book"]["world"]["n_known"]
    assert model.hidden == facts_llama.BASE_PRESETS["book"]["model"]["hidden"]
    _, _, short = facts_llama.base_configs("book", steps=10, n_known=None)
    assert short.steps == 10
    with pytest.raises(ValueError, match="unknown preset"):
        facts_llama.base_configs("huge")
    with pytest.raises(ValueError, match="unknown setting 'bogus'"):
        facts_llama.base_configs("book", bogus=1)
    full_world, full_model, _ = facts_llama.base_configs("full")
    assert full_world.n_known >= 5000
    assert full_model.llama_config(600).num_hidden_layers == 8


def test_full_model_has_about_35m_parameters():
    _, shape, _ = facts_llama.base_configs("full")
    with torch.device("meta"):
        model = facts_llama.build_model(shape, 700)
    assert 30e6 < facts_llama.n_parameters(model) < 40e6


def test_base_model_smoke_preset_in_a_fresh_cache(tmp_path):
    world, base = facts_llama.base_model("smoke", cache_dir=tmp_path, verbose=False)
    assert world.config == facts_llama.base_configs("smoke")[0]
    assert not base.from_cache
    ev = answers.evaluate(base.model, base.tokenizer, world, world.split("qa_pretrain"))
    assert ev.counts()["malformed"] < len(ev.items)  # it learned the answer format
