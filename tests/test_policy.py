"""Policy loading, the processor adapter, batched generation, the agent, and bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from saca import SacaError  # noqa: E402
from saca.action_text import format_actions  # noqa: E402
from saca.episodes import Episode  # noqa: E402
from saca.evaluate.agent_api import EpisodeContext  # noqa: E402
from saca.policy import agent as agent_mod  # noqa: E402
from saca.policy.agent import PolicyAgent, PolicyAgentConfig, load_policy_agent, write_agent_spec  # noqa: E402
from saca.policy.data import PolicyData  # noqa: E402
from saca.policy.generate import Generation, PolicyInput, SamplingConfig, generate_batch  # noqa: E402
from saca.policy.model import load_policy  # noqa: E402
from saca.policy.processor import IGNORE_INDEX  # noqa: E402
from saca.policy.synthetic import make_vln_ego  # noqa: E402
from saca.policy.tiny import TinyConfig, build_tiny_policy  # noqa: E402
from saca.prompt import build_prompt  # noqa: E402
from saca.sim.base import Observation  # noqa: E402
from saca.vln_ego.samplers import MemoryConfig  # noqa: E402

ANSWER = "A. Move forward 25 cm, B. Turn left 15 degrees, C. Turn right 15 degrees, D. Stop, D. Stop, D. Stop"


def frames(n, seed=0, size=128):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "qwen2_vl", TinyConfig(seed=0))


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir)


# --- building and loading ----------------------------------------------------------------------

def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_tiny_build_is_deterministic(tmp_path, tiny_dir):
    again = build_tiny_policy(tmp_path / "again", TinyConfig(seed=0))
    assert _digest(again) == _digest(tiny_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(_digest(again))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava_onevision"])
def test_every_family_builds_loads_encodes_and_generates(tmp_path, family):
    d = build_tiny_policy(tmp_path / family, TinyConfig(family=family))
    pol = load_policy(d)
    assert pol.family == family
    inputs = [PolicyInput(build_prompt("Walk to the sofa.", n, 15), frames(n + 1, seed=n)) for n in (0, 3)]
    enc = [pol.processor.encode(x.prompt, x.images, answer=ANSWER) for x in inputs]
    batch = pol.processor.collate(enc)
    with torch.no_grad():
        logits = pol.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    gen = generate_batch(pol, inputs, SamplingConfig(max_new_tokens=5), return_tokens=True)
    assert len(gen.texts) == 2 and all(1 <= len(t) <= 5 for t in gen.token_ids)


def test_save_load_round_trip_gives_identical_logits(tmp_path, policy):
    x = PolicyInput(build_prompt("Go past the duck and stop.", 2, 30), frames(3, seed=4))
    batch = policy.processor.collate([policy.processor.encode(x.prompt, x.images, answer=ANSWER)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = policy.model(**inputs).logits
    policy.save_pretrained(tmp_path / "saved")
    again = load_policy(tmp_path / "saved")
    with torch.no_grad():
        after = again.model(**inputs).logits
    assert torch.equal(before, after)
    for a, b in zip(policy.model.state_dict().items(), again.model.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])


# --- the processor adapter: exact label masks and image tokens -------------------------------------

def test_labels_cover_exactly_the_answer_and_end_of_turn(policy):
    proc = policy.processor
    prompt = build_prompt("Turn left at the table.", 4, 15)
    enc = proc.encode(prompt, frames(5), answer=ANSWER)
    prompt_only = proc.encode(prompt, frames(5))
    answer_ids = proc.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_only.input_ids)
    assert enc.prompt_length == n_prompt
    assert enc.input_ids[:n_prompt] == prompt_only.input_ids  # the prompt is tokenized exactly as at generation time
    assert enc.input_ids[n_prompt:] == answer_ids + [proc.im_end_id]
    assert enc.labels == [IGNORE_INDEX] * n_prompt + answer_ids + [proc.im_end_id]
    assert proc.decode([t for t in enc.labels if t != IGNORE_INDEX]) == ANSWER
    # image tokens: 56x56 frames -> 4x4 patches -> 2x2 merged = 4 tokens each, 5 images
    assert sum(t == proc.image_token_id for t in enc.input_ids) == 5 * 4
    assert all(label == IGNORE_INDEX for t, label in zip(enc.input_ids, enc.labels) if t == proc.image_token_id)


def test_collate_pads_labels_with_ignore_and_keeps_rows_aligned(policy):
    proc = policy.processor
    a = proc.encode(build_prompt("x", 0, 15), frames(1), answer="D. Stop")
    b = proc.encode(build_prompt("a longer instruction here", 5, 15), frames(6), answer=ANSWER)
    for side in ("right", "left"):
        batch = proc.collate([a, b], padding_side=side)
        L = batch["input_ids"].shape[1]
        for row, e in enumerate((a, b)):
            n = len(e.input_ids)
            sl = slice(L - n, L) if side == "left" else slice(0, n)
            assert batch["input_ids"][row, sl].tolist() == e.input_ids
            assert batch["labels"][row, sl].tolist() == e.labels
            assert int(batch["attention_mask"][row].sum()) == n
            pad = torch.ones(L, dtype=torch.bool)
            pad[sl] = False
            assert (batch["labels"][row][pad] == IGNORE_INDEX).all()
        assert batch["pixel_values"].shape[0] == (1 + 6) * 16  # 16 patches per 56x56 frame
        assert batch["mm_token_type_ids"].sum() == (1 + 6) * 4


def test_placeholder_count_must_match_images(policy):
    with pytest.raises(SacaError, match="placeholders"):
        policy.processor.encode(build_prompt("x", 2, 15), frames(2))


def test_llava_onevision_token_counts_follow_transformers(tmp_path):
    pol = load_policy(build_tiny_policy(tmp_path / "llava", TinyConfig(family="llava_onevision")))
    proc = pol.processor
    _, single = proc.process_images(frames(1))
    _, multi = proc.process_images(frames(3))
    assert multi == [17, 17, 17]  # 4x4 base patch + image_newline, per image (multi-image mode)
    assert single[0] > 17  # anyres for a single image: base + grid features + newlines
    enc = proc.encode(build_prompt("x", 2, 15), frames(3))
    assert sum(t == proc.image_token_id for t in enc.input_ids) == 51


# --- batched generation ----------------------------------------------------------------------

def test_batched_greedy_generation_equals_one_by_one(policy):
    inputs = [PolicyInput(build_prompt(f"Instruction number {i}", n, 15), frames(n + 1, seed=i)) for i, n in enumerate([0, 5, 2, 7])]
    cfg = SamplingConfig(max_new_tokens=8)
    together = generate_batch(policy, inputs, cfg, return_tokens=True)
    alone = [generate_batch(policy, [x], cfg, return_tokens=True) for x in inputs]
    assert together.token_ids == [g.token_ids[0] for g in alone]
    assert together.texts == [g.texts[0] for g in alone]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_static_decoder_equals_generate_token_for_token(tmp_path, monkeypatch, family):
    """saca.policy.generate's own decode loop (static KV cache, rope indices once per prompt) gives the tokens of
    model.generate, greedy and sampled with the same seed, rows stopping at different steps."""
    import copy

    pol = load_policy(build_tiny_policy(tmp_path / family, TinyConfig(family=family)))
    inputs = [PolicyInput(build_prompt(f"Instruction number {i}", n, 15), frames(n + 1, seed=i))
              for i, n in enumerate([0, 5, 2, 7, 3])]
    configs = [SamplingConfig(max_new_tokens=10), SamplingConfig(do_sample=True, max_new_tokens=10, seed=3),
               SamplingConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=10, seed=4)]
    first = generate_batch(pol, inputs, configs[1], return_tokens=True, decoder="hf")
    # an end-of-turn id the random model emits early in some rows but not others: rows stop at different steps
    counts = {}
    for row in first.token_ids:
        for t in set(row[1:5]):
            counts[t] = counts.get(t, 0) + 1
    stop = min(counts, key=lambda t: (abs(counts[t] - 2), t))
    proc = copy.copy(pol.processor)
    proc.eos_token_ids = sorted(set(pol.processor.eos_token_ids) | {stop})
    monkeypatch.setattr(pol, "processor", proc)
    from saca.policy import generate as gen_mod

    encoded = [pol.processor.encode(x.prompt, x.images) for x in inputs]
    lengths = set()
    for cfg in configs:
        for max_batch in (None, 2):
            ref = generate_batch(pol, inputs, cfg, return_logprobs=True, max_batch=max_batch, decoder="hf")
            lengths.add(tuple(len(ids) for ids in ref.token_ids))
            new = generate_batch(pol, inputs, cfg, return_logprobs=True, max_batch=max_batch, decoder="static")
            # on CPU the loop keeps generate's dynamic cache: bitwise the same log-probs, so the same weights
            assert new.token_ids == ref.token_ids and new.texts == ref.texts and new.logprobs == ref.logprobs
        # the static cache (CUDA's default, here forced): the same tokens, log-probs to float rounding
        ref = gen_mod._generate_chunk(pol, encoded, cfg, cfg.seed, True)
        new = gen_mod._decode_static(pol, encoded, cfg, cfg.seed, True, static_cache=True)
        assert new.token_ids == ref.token_ids
        assert all(len(lp) == len(ids) for lp, ids in zip(new.logprobs, new.token_ids))
        assert max(abs(a - b) for la, lb in zip(new.logprobs, ref.logprobs) for a, b in zip(la, lb)) < 1e-5
    assert any(len(set(run)) > 1 for run in lengths)  # the stop token ended rows at different steps


def test_static_decoder_falls_back_where_the_checkpoint_adds_processors(policy, monkeypatch):
    from saca.policy import generate as gen_mod

    assert gen_mod.static_decoding_supported(policy.model)
    monkeypatch.setattr(policy.model.generation_config, "repetition_penalty", 1.1)
    assert not gen_mod.static_decoding_supported(policy.model)
    with pytest.raises(SacaError, match="decoder 'fast'"):
        generate_batch(policy, [PolicyInput(build_prompt("Go.", 0, 15), frames(1))], SamplingConfig(), decoder="fast")


def test_sampling_is_seeded_and_logprobs_are_returned(policy):
    inputs = [PolicyInput(build_prompt("Walk ahead.", 1, 30), frames(2, seed=9))] * 3
    cfg = SamplingConfig(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=5)
    a = generate_batch(policy, inputs, cfg, return_logprobs=True)
    b = generate_batch(policy, inputs, cfg, return_logprobs=True)
    assert a.token_ids == b.token_ids and a.logprobs == b.logprobs
    assert all(len(lp) == len(ids) for lp, ids in zip(a.logprobs, a.token_ids))
    assert all(v <= 0.0 for lp in a.logprobs for v in lp)
    # log-probabilities are those of the raw policy: recompute one by teacher forcing
    proc = policy.processor
    enc = proc.encode(inputs[0].prompt, inputs[0].images)
    ids = a.token_ids[0]
    full = enc.input_ids + ids
    batch = proc.collate([type(enc)(full, None, enc.vision, enc.n_images, enc.prompt_length)])
    with torch.no_grad():
        logits = policy.model(**batch).logits[0]
    # the distribution sampled from: image placeholder tokens suppressed (they never appear in an answer)
    logits = logits.float()
    logits[:, proc.suppressed_ids] = float("-inf")
    ref = torch.log_softmax(logits[len(enc.input_ids) - 1 : len(full) - 1], -1)
    ref = ref[torch.arange(len(ids)), torch.tensor(ids)]
    assert torch.allclose(ref, torch.tensor(a.logprobs[0]), atol=1e-4)


def test_row_seeded_sampling_does_not_depend_on_the_other_rows(policy):
    """Issue 25: with row seeds a row's tokens (and log-probs) are a function of its input and seed alone:
    the same alone, in a batch, at another position, beside other rows, split by max_batch."""
    inputs = [PolicyInput(build_prompt(f"Instruction number {i}", n, 15), frames(n + 1, seed=i)) for i, n in enumerate([0, 5, 2, 7])]
    cfg = SamplingConfig(do_sample=True, temperature=1.5, max_new_tokens=12, seed=0)
    seeds = [11, 12, 13, 14]
    together = generate_batch(policy, inputs, cfg, return_logprobs=True, row_seeds=seeds)
    alone = [generate_batch(policy, [x], cfg, return_logprobs=True, row_seeds=[s]) for x, s in zip(inputs, seeds)]
    assert together.token_ids == [g.token_ids[0] for g in alone]
    assert np.allclose(sum(together.logprobs, []), sum((g.logprobs[0] for g in alone), []), atol=1e-5)
    rev = generate_batch(policy, inputs[::-1], cfg, return_tokens=True, row_seeds=seeds[::-1], seed=99)
    assert rev.token_ids[::-1] == together.token_ids
    split = generate_batch(policy, inputs, cfg, return_tokens=True, row_seeds=seeds, max_batch=3)
    assert split.token_ids == together.token_ids
    other = generate_batch(policy, inputs, cfg, return_tokens=True, row_seeds=[11, 12, 13, 15])
    assert other.token_ids[:3] == together.token_ids[:3]
    assert len({tuple(t) for t in together.token_ids}) > 1  # the rows did sample
    with pytest.raises(SacaError, match="3 row seeds for 4 rows"):
        generate_batch(policy, inputs, cfg, row_seeds=seeds[:3])


def test_row_sampler_draws_from_the_warped_softmax():
    """The Gumbel-max draw of RowSampler follows softmax(logits / T), restricted to top-k / top-p as generate's."""
    from saca.policy.generate import RowSampler

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    n = 20000
    for sampling, expect in [
        (SamplingConfig(do_sample=True, temperature=0.7), torch.softmax(logits[0] / 0.7, -1)),
        (SamplingConfig(do_sample=True, temperature=1.0, top_k=2), torch.softmax(logits[0, :2], -1)),
        # p = softmax(logits) = [0.563, 0.207, ...]: the top token alone holds less than 0.6, the top two more
        (SamplingConfig(do_sample=True, temperature=1.0, top_p=0.6), torch.softmax(logits[0, :2], -1)),
    ]:
        picks = torch.cat([RowSampler(sampling, range(k, k + 1000))(None, logits.expand(1000, -1)).argmax(-1)
                           for k in range(0, n, 1000)])
        freq = torch.bincount(picks, minlength=5).double() / n
        assert torch.allclose(freq[: len(expect)], expect.double(), atol=0.015), (sampling, freq)
        assert freq[len(expect):].sum() == 0


# --- the agent ---------------------------------------------------------------------------------

class FakeSim:
    turn_angle = 15.0

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def observe(self):
        self.calls += 1
        return Observation(rgb=self.rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))


def make_contexts(n):
    eps = [
        Episode(episode_id=f"e{i}", trajectory_id=i, scene_id="s", start_position=[0, 0, 0], start_rotation=[0, 0, 0, 1],
                goals=[{"position": [1, 0, 1]}], reference_path=[[0, 0, 0]], instruction_text=f"Walk to goal {i}.")
        for i in range(n)
    ]
    return [EpisodeContext(episode=e, sim=FakeSim(i)) for i, e in enumerate(eps)]


def scripted(outputs):
    """A generate_batch stand-in that returns scripted texts and records each call."""
    calls = []

    def fake(policy, inputs, sampling, seed=None, **kw):
        calls.append([x for x in inputs])
        return Generation([outputs[(len(calls) - 1 + i) % len(outputs)] for i in range(len(inputs))])

    return fake, calls


def step_all(agent, contexts, n_steps):
    taken = [[] for _ in contexts]
    for _ in range(n_steps):
        acts = agent.act(contexts)
        for c, a, t in zip(contexts, acts, taken):
            c.actions.append(a)
            c.step += 1
            t.append(a)
    return taken


def test_agent_batches_decisions_and_executes_chunks(monkeypatch, policy):
    fake, calls = scripted([format_actions([1, 2, 1, 3, 1, 1], 15)])
    monkeypatch.setattr(agent_mod, "generate_batch", fake)
    agent = PolicyAgent(policy, PolicyAgentConfig(memory=MemoryConfig(max_frames=4)))
    ctxs = make_contexts(3)
    agent.reset(ctxs)
    taken = step_all(agent, ctxs, 8)
    assert taken == [[1, 2, 1, 3, 1, 1, 1, 2]] * 3
    assert len(calls) == 2 and [len(c) for c in calls] == [3, 3]  # one batched call per decision round
    # second decision at step 6: history from the sampler (max_frames=4 -> 3 history frames) + current frame
    x = calls[1][0]
    assert len(x.images) == 4 and x.prompt.count("<image>") == 4
    assert "Walk to goal 0." in x.prompt and "Turn left 15 degrees" in x.prompt
    assert all(len(c.memory["policy"]["frames"]) == 8 for c in ctxs)
    assert agent.stats["n_valid"] == 6 and agent.stats["n_invalid"] == 0


def test_agent_replans_every_step_with_execute_actions_1(monkeypatch, policy):
    fake, calls = scripted([format_actions([1, 2, 3, 1, 1, 1], 15)])
    monkeypatch.setattr(agent_mod, "generate_batch", fake)
    agent = PolicyAgent(policy, PolicyAgentConfig(execute_actions=1))
    ctxs = make_contexts(2)
    agent.reset(ctxs)
    assert step_all(agent, ctxs, 3) == [[1, 1, 1]] * 2
    assert len(calls) == 3


@pytest.mark.parametrize("fallback, action", [("stop", 0), ("forward", 1)])
def test_invalid_output_is_counted_and_falls_back(monkeypatch, policy, fallback, action):
    fake, _ = scripted(["I cannot see anything useful here"])
    monkeypatch.setattr(agent_mod, "generate_batch", fake)
    agent = PolicyAgent(policy, PolicyAgentConfig(invalid_action=fallback))
    ctxs = make_contexts(2)
    agent.reset(ctxs)
    assert agent.act(ctxs) == [action, action]
    assert agent.stats == {"n_valid": 0, "n_partial": 0, "n_invalid": 2, "n_decisions": 2, "invalid_rate": 1.0}
    assert all(c.memory["policy"]["n_invalid"] == 1 for c in ctxs)
    assert ctxs[0].memory["policy"]["decisions"][0]["status"] == "invalid"


def test_partial_output_executes_what_was_recovered(monkeypatch, policy):
    fake, _ = scripted(["A, A, C. Turn ri"])
    monkeypatch.setattr(agent_mod, "generate_batch", fake)
    agent = PolicyAgent(policy, PolicyAgentConfig())
    ctxs = make_contexts(1)
    agent.reset(ctxs)
    assert step_all(agent, ctxs, 3) == [[1, 1, 3]]
    assert agent.stats["n_partial"] == 1


def test_agent_with_the_real_model_runs_and_counts(policy):
    agent = PolicyAgent(policy, PolicyAgentConfig(generation=SamplingConfig(max_new_tokens=12)))
    ctxs = make_contexts(2)
    agent.reset(ctxs)
    acts = agent.act(ctxs)
    assert all(a in (0, 1, 2, 3) for a in acts)
    assert agent.stats["n_decisions"] == 2


def test_agent_spec_round_trip_and_unknown_keys(tmp_path, tiny_dir):
    write_agent_spec(tmp_path / "agent", tiny_dir, PolicyAgentConfig(execute_actions=2, memory=MemoryConfig(max_frames=6)))
    spec = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert not Path(spec["checkpoint"]).is_absolute()
    ag = load_policy_agent(tmp_path / "agent", seed=3)
    assert ag.cfg.execute_actions == 2 and ag.cfg.memory.max_frames == 6 and ag.cfg.seed == 3
    with pytest.raises(SacaError, match="did you mean 'execute_actions'"):
        load_policy_agent(tiny_dir, execute_action=1)


# --- bad input ---------------------------------------------------------------------------------

def test_missing_checkpoint_directory_names_the_path(tmp_path):
    with pytest.raises(SacaError, match=str(tmp_path / "nope")):
        load_policy(tmp_path / "nope")


def test_checkpoint_without_config_or_weights(tmp_path, tiny_dir):
    d = tmp_path / "noconfig"
    shutil.copytree(tiny_dir, d)
    (d / "config.json").unlink()
    with pytest.raises(SacaError, match=rf"{d}.*no config.json"):
        load_policy(d)
    d = tmp_path / "noweights"
    shutil.copytree(tiny_dir, d)
    (d / "model.safetensors").unlink()
    with pytest.raises(SacaError, match=rf"{d}.*no model weights"):
        load_policy(d)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors_names_the_file(tmp_path, tiny_dir, damage):
    d = tmp_path / damage
    shutil.copytree(tiny_dir, d)
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......" + data[40:])
    with pytest.raises(SacaError, match=str(w)):
        load_policy(d)


def test_tokenizer_without_image_tokens_names_the_path(tmp_path, tiny_dir):
    d = tmp_path / "badtok"
    shutil.copytree(tiny_dir, d)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|image_pad|>"]
    (d / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(SacaError, match=rf"{d}.*<\|image_pad\|>"):
        load_policy(d)


def test_unsupported_model_type_is_refused(tmp_path, tiny_dir):
    d = tmp_path / "other"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SacaError, match="not a supported policy family"):
        load_policy(d)


def test_missing_frame_shard_names_the_sample(tmp_path, policy):
    split = make_vln_ego(tmp_path / "ego", episodes=3, steps=5, per_shard=1)
    (split / "frames" / "shard-00001.parquet").unlink()
    data = PolicyData([split])
    assert len(data) == 15  # opening works: the samples are all there
    for i in range(5):
        data.encode(policy.processor, i)  # episode 0 lives in shard 0
    with pytest.raises(SacaError, match=r"VLN-Ego sample ep1:0: frame shard .*shard-00001.parquet does not exist"):
        data.encode(policy.processor, 5)


def test_malformed_answer_names_the_sample(tmp_path):
    import pyarrow.parquet as pq

    split = make_vln_ego(tmp_path / "ego", episodes=1, steps=4)
    t = pq.read_table(split / "samples.parquet").to_pylist()
    t[2]["answer"] = "A. Move forward 25 cm"
    from saca.vln_ego.store import write_samples

    write_samples(split, t)
    with pytest.raises(SacaError, match="VLN-Ego sample ep0:2"):
        PolicyData([split])


def test_majority_baseline_exact():
    truths = [[1, 1, 2], [1, 3, 2], [2, 3, 3], [1, 3, 0]]
    base = agent_mod.majority_baseline(truths)
    assert base["actions"] == [1, 3, 2]
    assert base["per_position_accuracy"] == [0.75, 0.75, 0.5]
    assert base["first_action_accuracy"] == 0.75
    assert base["exact_match"] == 0.25  # only [1, 3, 2]
    assert agent_mod.majority_baseline([[2], [1]])["actions"] == [1]  # tie: lowest id


def test_predict_reports_accuracy_beside_the_majority_baseline(monkeypatch, tmp_path, tiny_dir):
    split = make_vln_ego(tmp_path / "ego", episodes=3, steps=6, seed=4)
    data = PolicyData([split])
    truths = [[int(a) for a in data.sample(i)["actions"]] for i in range(len(data))]
    always = [1, 1, 1, 1, 1, 1]  # the policy answers "move forward" six times, every time

    def fake_generate(policy, inputs, sampling, seed=0, **_):
        return Generation([format_actions(always, 15.0) for _ in inputs])

    monkeypatch.setattr(agent_mod, "generate_batch", fake_generate)
    report = agent_mod.predict_vln_ego(tiny_dir, split, samples=len(data), batch_size=4)
    n = len(truths)
    assert report["samples"] == n and report["n_valid"] == n
    assert report["first_action_accuracy"] == sum(t[0] == 1 for t in truths) / n
    assert report["per_position_accuracy"] == [sum(t[k] == 1 for t in truths) / n for k in range(6)]
    assert report["exact_match"] == sum(t == always for t in truths) / n
    assert report["majority_baseline"] == agent_mod.majority_baseline(truths)
