"""Post-training methods: each round changes only the method's trainable state; method oracles."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch

from bench.api.errors import IncompatibleError
from bench.api.registry import METHODS
from bench.api.seeding import derive_seed
from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from bench.methods import textual_prompt
from bench.methods._common import sequence_logprobs
from tests.helpers import make_scenario

TASKS = {
    "classification": {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 40}},
    "instruction": {"name": "synthetic-instructions", "params": {"max_length": 48}},
    "preference": {"name": "synthetic-preferences", "params": {"max_length": 48}},
}
TIER_OF = {"provider-tuning": "gray-box", "textual-prompt": "black-box"}
SMALL = {"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 2, "batch_size": 4,
         "examples_per_client": 8, "eval_examples": 8}


def kind_for(method: str) -> str:
    kinds = METHODS.get(method).task_kinds
    return next(k for k in ("classification", "instruction", "preference") if k in kinds)


def prepared(tmp_path, method: str, kind: str | None = None, params: dict | None = None, model: str | None = None,
             **federation):
    scenario = make_scenario(tmp_path, tier=TIER_OF.get(method, "open-weight"), **({"model": model} if model else {}),
                             method={"name": method, "params": params or {}},
                             task=TASKS[kind or kind_for(method)], federation={**SMALL, **federation})
    return prepare(scenario, 0, plan(scenario))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    return state | {f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("method", METHODS.names())
def test_a_round_changes_only_the_methods_trainable_state(tmp_path, method):
    # textual-prompt on classification: accuracy rewards vary between prompts, so its logits move (on
    # the triage instructions the untrained base scores ROUGE-L 0 whatever the prompt: no gradient).
    p = prepared(tmp_path, method, kind="classification" if method == "textual-prompt" else None)
    model = p.built.method.model
    before = snapshot(model)
    fl.run(p.fed, p.transcript, p.truth)
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    trainable = {f"param:{n}" for n, _ in p.built.method.named_trainable}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]


# --- Houlsby adapters -----------------------------------------------------------------------------
def test_adapters_start_as_the_identity_and_sit_after_attention_and_mlp(tmp_path):
    p = prepared(tmp_path, "adapter")
    model = p.built.method.model
    base, _ = p.built.model_source.load("classification", 3, torch.device("cpu"), derive_seed("run", 0, "init"))
    batch = p.fed.collate(p.clients[0].members[:3])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, base(**inputs).logits, atol=1e-6)
    adapters = [n for n, _ in model.named_modules() if n.endswith(("adapter_attention", "adapter_mlp"))]
    assert len(adapters) == 2 * model.config.num_hidden_layers
    names = [n for n, _ in p.built.method.named_trainable]
    assert all(".adapter_" in n or ".ln_" in n or n.startswith(("score", "transformer.ln_f")) for n in names)


# --- QLoRA ----------------------------------------------------------------------------------------
def test_qlora_quantises_the_blocks_to_4_bits_and_stays_close_to_the_base(tmp_path):
    import bitsandbytes as bnb

    p = prepared(tmp_path, "qlora", kind="instruction")
    model = p.built.method.model
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == p.built.method.quantized_layers == 4 * model.config.num_hidden_layers
    assert all(m.weight.dtype == torch.uint8 and m.weight.quant_type == "nf4" for m in quantised)
    base, _ = p.built.model_source.load("instruction", 0, torch.device("cpu"), 0)
    batch = p.fed.collate(p.clients[0].members[:3])
    with torch.no_grad():
        q, full = (m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits for m in (model, base))
    assert torch.nn.functional.cosine_similarity(q.flatten(), full.flatten(), dim=0) > 0.95
    assert not torch.equal(q, full)


def test_qlora_without_bitsandbytes_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(RuntimeError, match="qlora needs bitsandbytes"):
        prepared(tmp_path, "qlora")


# --- prompt and prefix tuning ---------------------------------------------------------------------
@pytest.mark.parametrize(("method", "params"), [("prompt-tuning", {}), ("prompt-tuning", {"pooling": "mean"}),
                                              ("prefix-tuning", {})])
def test_prompt_classifiers_ignore_padding(tmp_path, method, params):
    p = prepared(tmp_path, method, params=params)
    model = p.built.method.model.eval()
    short, longer = {"text": "Patient seen.", "label": 0}, p.clients[0].members[0]
    alone, padded = p.fed.collate([short]), p.fed.collate([short, longer])
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # the short one is padded
    with torch.no_grad():
        first = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits[0]
        second = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[0]
    assert torch.allclose(first, second, atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_soft_prompt_classifier_reads_the_pooled_real_tokens_after_the_prompt(tmp_path, pooling):
    """The head reads, from the frozen body run on [prompt; input], the last real token's final hidden
    state ('last') or the mean over the real tokens ('mean'): never a virtual or padding position."""
    p = prepared(tmp_path, "prompt-tuning", params={"pooling": pooling})
    wrapper = p.built.method.model.eval()
    batch = p.fed.collate([{"text": "Patient seen.", "label": 0}, p.clients[0].members[0]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask[0].sum() < mask.shape[1]  # the first row is padded
    hf = wrapper.inner.base_model
    with torch.no_grad():
        prompts = wrapper._prompts(2)
        virtual = prompts.shape[1]
        full_mask = torch.cat([torch.ones(2, virtual, dtype=mask.dtype), mask], dim=1)
        states = hf.base_model(inputs_embeds=torch.cat([prompts, hf.get_input_embeddings()(ids)], dim=1),
                               attention_mask=full_mask).last_hidden_state[:, virtual:]
        rows = [states[i, : int(mask[i].sum())] for i in range(2)]
        pooled = torch.stack([r[-1] if pooling == "last" else r.mean(dim=0) for r in rows])
        expected = hf.score(pooled)
        got = wrapper(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-5)
    other = "mean" if pooling == "last" else "last"
    assert not torch.allclose(got, hf.score(torch.stack([r[-1] if other == "last" else r.mean(dim=0) for r in rows])),
                              atol=1e-3)  # the two readouts differ, so the check above tells them apart
    with pytest.raises(ValueError, match="pooling must be one of"):
        METHODS.get("prompt-tuning").Config(pooling="first")


def test_soft_prompt_logits_match_peft_and_line_up_with_the_input(tmp_path):
    p = prepared(tmp_path, "prompt-tuning", kind="instruction")
    wrapper = p.built.method.model.eval()
    batch = p.fed.collate(p.clients[0].members[:1])  # one example: no padding
    with torch.no_grad():
        ours = wrapper(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        peft = wrapper.inner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert ours.shape[1] == batch["input_ids"].shape[1]
    assert torch.allclose(ours, peft[:, -ours.shape[1]:], atol=1e-5)
    assert wrapper._prompts(3).shape[0] == 3  # one prompt row per example (per-example gradients)


def test_vocab_initialised_soft_prompt_starts_at_real_token_embeddings(tmp_path):
    """init: vocab (the default) starts every virtual token at some vocabulary token's embedding (peft's
    SAMPLE_VOCAB), at the scale the frozen model reads, where init: random starts at N(0, 1) rows."""
    vocab = prepared(tmp_path, "prompt-tuning").built.method.model
    table = vocab.inner.base_model.get_input_embeddings().weight.detach()
    prompts = vocab._prompts(1)[0].detach()
    assert all((table - row).abs().amax(dim=1).min() < 1e-6 for row in prompts)
    random = prepared(tmp_path, "prompt-tuning", params={"init": "random"}).built.method.model._prompts(1)[0].detach()
    assert not any((table - row).abs().amax(dim=1).min() < 1e-6 for row in random)
    with pytest.raises(ValueError, match="init must be one of"):
        METHODS.get("prompt-tuning").Config(init="text")


# --- instruction tuning ---------------------------------------------------------------------------
def test_instruction_tuning_is_lora_or_full_and_refuses_other_tasks(tmp_path):
    lora = prepared(tmp_path, "instruction-tuning").built.method
    assert all("lora_" in n for n, _ in lora.named_trainable)
    full = prepared(tmp_path, "instruction-tuning", params={"mode": "full"}).built.method
    assert full.num_trainable == sum(p.numel() for p in full.model.parameters())
    scenario = make_scenario(tmp_path, method="instruction-tuning", task=TASKS["classification"])
    with pytest.raises(IncompatibleError, match="cannot train a classification task"):
        plan(scenario)


# --- RLHF -----------------------------------------------------------------------------------------
def test_dpo_starts_at_log_two_because_the_policy_is_the_reference(tmp_path):
    p = prepared(tmp_path, "rlhf")
    method = p.built.method
    method.phase = "policy"
    losses = method.dpo_losses(method.model, p.fed.collate(p.clients[0].members[:4]))
    assert torch.allclose(losses, torch.full_like(losses, math.log(2.0)), atol=1e-5)


def test_mean_pooled_reward_is_the_head_on_the_masked_mean_and_ignores_padding(tmp_path):
    p = prepared(tmp_path, "rlhf", params={"reward_pooling": "mean"})
    model = p.built.method.model.eval()
    records = p.clients[0].members[:2]
    batch, alone = p.fed.collate(records), p.fed.collate(records[:1])
    with torch.no_grad():
        hidden = model.inner(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"],
                             output_hidden_states=True).hidden_states[-1]  # the policy adapter: reward's is zero at start
        expected = model.reward_head(hidden[0].mean(dim=0))
        rewards = model.reward(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert batch["attention_mask"].sum(dim=1).min() < batch["attention_mask"].shape[1]  # one row is padded
    assert torch.allclose(model.reward(alone["input_ids"], alone["attention_mask"], alone["labels"]), expected, atol=1e-5)
    short = int(batch["attention_mask"].sum(dim=1).argmin())
    solo = p.fed.collate([records[short]])
    with torch.no_grad():
        assert torch.allclose(rewards[short], model.reward(solo["input_ids"], solo["attention_mask"], solo["labels"])[0], atol=1e-5)


def test_likelihood_reward_is_the_reward_adapters_response_log_likelihood_and_learns_from_pairs(tmp_path):
    # The scalar head on a pooled state cannot compare an answer's tokens with the prompt in the zoo's
    # small model (scenarios/studies/rlhf-reward-model.yaml); the likelihood reward scores the response
    # with the language model's own output layer. At start the reward adapter is zero, so it is the base
    # model's log-likelihood of the response tokens only, scaled by reward_beta; the unused head is not
    # part of the trainable state; and Bradley-Terry steps on a batch raise its margin on that batch.
    p = prepared(tmp_path, "rlhf", params={"reward_model": "likelihood", "reward_beta": 0.5})
    method, model = p.built.method, p.built.method.model
    batch = p.fed.collate(p.clients[0].members[:4])
    with torch.no_grad(), model.inner.disable_adapter():
        logits = model.inner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets = batch["labels"][:, 1:]
    picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = 0.5 * (picked * (targets != -100)).sum(dim=1)
    with torch.no_grad():
        assert torch.allclose(model.reward(batch["input_ids"], batch["attention_mask"], batch["labels"]), expected, atol=1e-4)
    assert not any(n.startswith("reward_head") for n, _ in method._named)
    method.on_round_start(0, 2)
    assert method.last_token_is_label  # every token is predicted from the ones before, as in the policy
    before = float(method.reward_margins(model, batch).mean().detach())
    optimizer = torch.optim.Adam([q for _, q in method.named_trainable], lr=0.01)
    for _ in range(5):
        optimizer.zero_grad()
        method.example_losses(model, batch).mean().backward()
        optimizer.step()
    assert float(method.reward_margins(model, batch).mean().detach()) > before + 0.1


def test_rlhf_trains_the_reward_model_then_the_policy_through_the_round_loop(tmp_path):
    p = prepared(tmp_path, "rlhf", params={"reward_rounds": 1}, rounds=2)
    p.fed.keep = frozenset({"aggregates"})
    fl.run(p.fed, p.transcript, p.truth)
    method = p.built.method
    reward = torch.cat([torch.full((t.numel(),), n in method._reward_names) for n, t in method._named])
    first, second = (r.aggregate for r in p.transcript.rounds)
    assert first[reward].abs().sum() > 0 and (first[~reward] == 0).all()
    assert second[~reward].abs().sum() > 0 and (second[reward] == 0).all()


def test_reward_driven_policy_step_samples_responses_and_masks_prompts(tmp_path):
    p = prepared(tmp_path, "rlhf", params={"policy_step": "reward", "max_new_tokens": 4})
    method = p.built.method
    batch = p.fed.collate(p.clients[0].members[:2])
    prompt = batch["input_ids"][:1, :5]
    ids, labels = method._sample(method.model, prompt)
    assert ids.shape == (method.config.samples, 9) and (labels[:, :5] == -100).all()
    method.phase = "policy"
    losses = method.example_losses(method.model, batch)
    assert losses.shape == (2,) and torch.isfinite(losses).all() and losses.requires_grad


# --- textual prompt (black-box) -------------------------------------------------------------------
def test_policy_gradient_oracle():
    grad = textual_prompt.policy_gradient(torch.zeros(2), [0, 1], [1.0, 0.0])
    assert torch.allclose(grad, torch.tensor([0.5, -0.5]))  # 0.5 * (e0 - p) - 0.5 * (e1 - p)
    assert torch.equal(textual_prompt.policy_gradient(torch.zeros(3), [0, 2], [0.3, 0.3]), torch.zeros(3))


def test_textual_prompt_moves_towards_the_prompt_that_scores_best(tmp_path, monkeypatch):
    p = prepared(tmp_path, "textual-prompt", rounds=3, local_steps=3)
    best = 3
    candidates = p.built.method.config.candidates
    monkeypatch.setitem(textual_prompt.REWARDS, "classification",
                        lambda api, candidate, examples, settings: (float(candidate == candidates[best]), []))
    fl.run(p.fed, p.transcript, p.truth)
    assert int(p.built.method.model.logits.argmax()) == best


def test_textual_prompt_queries_leave_the_client_only_at_hosted_tiers(tmp_path):
    hosted = prepared(tmp_path, "textual-prompt")
    fl.run(hosted.fed, hosted.transcript, hosted.truth)
    log, transcript = hosted.transcript.provider_log, hosted.transcript
    candidates = hosted.built.method.config.candidates
    raw = [next(r.text[len(c):] for c in sorted(candidates, key=len, reverse=True) if r.text.startswith(c)) for r in log]
    members = {e["text"] for c in hosted.clients for e in c.members}
    assert log and {r.purpose for r in log} == {"inference"} and {r.client for r in log} == {0, 1}
    assert set(raw) <= members
    assert transcript.egress_records == len(log) and transcript.egress_bytes == sum(len(t.encode()) for t in raw)

    local = make_scenario(tmp_path, tier="open-weight", method="textual-prompt", task=TASKS["classification"],
                          federation=SMALL)
    run = prepare(local, 0, plan(local))
    fl.run(run.fed, run.transcript, run.truth)
    assert run.transcript.provider_log == [] and run.transcript.egress_records == run.transcript.egress_bytes == 0


@pytest.mark.parametrize("method", ["textual-prompt", "provider-tuning"])
def test_methods_that_do_not_train_locally_refuse_client_dp_sgd_before_training(tmp_path, method):
    scenario = make_scenario(tmp_path, tier=TIER_OF[method], method=method, task=TASKS["classification"],
                             defenses=[{"name": "dp-local", "params": {"noise_multiplier": 1.0}}])
    with pytest.raises(IncompatibleError, match="dp-local"):
        plan(scenario)


# --- provider tuning (gray-box) -------------------------------------------------------------------
def test_provider_tuning_uploads_every_training_example_each_round(tmp_path):
    p = prepared(tmp_path, "provider-tuning", rounds=2)
    fl.run(p.fed, p.transcript, p.truth)
    task, log = p.built.task, p.transcript.provider_log
    expected = [(c, task.text_of(e)) for _ in range(2) for c in range(2) for e in p.clients[c].members]
    assert [(r.client, r.text) for r in log] == expected and {r.purpose for r in log} == {"tuning-upload"}
    assert p.transcript.egress_records == len(expected)
    assert p.transcript.egress_bytes == sum(len(text.encode()) for _, text in expected)


@pytest.mark.parametrize(("method", "params"), [("rlhf", {"policy_step": "reward", "reward_rounds": 1, "max_new_tokens": 3}),
                                                ("textual-prompt", {})])
def test_methods_with_their_own_sampling_are_deterministic(tmp_path, method, params):
    def final_state():
        p = prepared(tmp_path, method, params=params, rounds=2, local_steps=1)
        fl.run(p.fed, p.transcript, p.truth)
        return p.built.method.get_flat()

    assert torch.equal(final_state(), final_state())


def test_an_rlhf_shadow_walks_the_rounds_and_trains_the_policy_as_well_as_the_reward_model(tmp_path):
    """A shadow (mia-calibrated's reference, LiRA's shadow) stands in for the federation's training. Trained
    in one go, an RLHF shadow trained only the reward adapter, so its policy stayed the base model and
    mia-calibrated scored exactly what mia-reference scores (the chosen answer's likelihood under the policy)."""
    from bench.api.seeding import generator
    from bench.engine.views import ViewBuilder

    p = prepared(tmp_path, "rlhf", params={"reward_rounds": 1}, rounds=2)
    views = ViewBuilder(p.scenario, 0, p.built, p.transcript, p.tokenizer, p.clients, p.task_data, p.truth)
    shadow = views.train_shadow(list(p.task_data.auxiliary)[:8], generator("test", "shadow"))
    base = views.base_loader()
    candidates = list(p.task_data.test)[:6]
    assert not torch.allclose(shadow.example_losses(candidates), base.example_losses(candidates))
    method = p.built.method
    policy_b = [q for n, q in shadow.model.named_parameters() if n in method._policy_names and "lora_B" in n]
    assert policy_b and any(q.abs().sum() > 0 for q in policy_b), "the policy's LoRA B never left zero"


def test_a_phased_shadow_spreads_its_steps_over_the_rounds_and_a_plain_one_trains_them_at_once():
    from bench.engine.views import _phase_schedule

    assert _phase_schedule(False, 10, 25) == [(0, 25)]
    spread = _phase_schedule(True, 10, 25)
    assert [r for r, _ in spread] == list(range(10)) and sum(n for _, n in spread) == 25
    assert _phase_schedule(True, 4, 2) == [(0, 1), (1, 1), (2, 1), (3, 1)]  # every phase trains at least a step


def test_rlhf_adapter_switches_agree_with_peft_and_leave_the_phase_flags_alone(tmp_path):
    # RlhfModel switches adapters on peft's layers itself (peft's set_adapter/disable_adapter also flip
    # requires_grad, which batched training under vmap may not do): the oracle is peft's own switches.
    p = prepared(tmp_path, "rlhf", params={"reward_model": "likelihood"})
    method, model = p.built.method, p.built.method.model
    with torch.no_grad():  # both adapters away from zero, so each switch changes the answer
        for name, q in model.named_parameters():
            if "lora_B" in name:
                q.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    method.on_round_start(0, 2)
    flags = {n: q.requires_grad for n, q in model.named_parameters()}
    batch = p.fed.collate(p.clients[0].members[:4])
    args = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        ours = [sequence_logprobs(model.inner, *args)]
        with model.adapter("reward"):
            ours.append(sequence_logprobs(model.inner, *args))
        with model.base_only():
            ours.append(sequence_logprobs(model.inner, *args))
    assert {n: q.requires_grad for n, q in model.named_parameters()} == flags
    with torch.no_grad():
        peft = [sequence_logprobs(model.inner, *args)]
        model.inner.set_adapter("reward")
        peft.append(sequence_logprobs(model.inner, *args))
        model.inner.set_adapter("default")
        with model.inner.disable_adapter():
            peft.append(sequence_logprobs(model.inner, *args))
    for mine, theirs in zip(ours, peft):
        torch.testing.assert_close(mine, theirs)
    assert not torch.allclose(ours[0], ours[1]) and not torch.allclose(ours[0], ours[2])


def test_rlhf_evaluation_reuses_a_scoring_only_while_the_weights_it_reads_are_unchanged(tmp_path, monkeypatch):
    # extra_utility keeps each scoring (reward model, policy, reference) with a digest of the weights it
    # reads, so a learning curve does not rescore the half a phase leaves alone. Oracle: the metrics
    # computed from scratch (reward_margins / implicit_margins on the same batches) after each change;
    # and the scorings actually redone are only those whose weights moved.
    from types import SimpleNamespace

    p = prepared(tmp_path, "rlhf", params={"reward_model": "likelihood"})
    method, model = p.built.method, p.built.method.model
    test = p.clients[0].members[:6]
    handle = SimpleNamespace(tokenizer=p.tokenizer, device=p.device)
    calls: list[str] = []
    reward, logprobs = model.reward, model.logprobs
    monkeypatch.setattr(model, "reward", lambda *a: calls.append("reward") or reward(*a))
    monkeypatch.setattr(model, "logprobs", lambda *a, reference=False: calls.append(
        "reference" if reference else "policy") or logprobs(*a, reference=reference))

    def from_scratch() -> dict[str, float]:
        batch = p.fed.collate(test)
        with torch.no_grad():
            margins = method.implicit_margins(model, batch).float()
            correct = (method.reward_margins(model, batch) > 0).float()
        return {"utility.reward_accuracy": float(correct.mean()), "utility.implicit_reward_margin": float(margins.mean()),
                "utility.implicit_reward_accuracy": float((margins > 0).float().mean())}

    def memoised() -> tuple[dict[str, float], list[str]]:
        calls.clear()
        values = {m.name: m.value for m in method.extra_utility(handle, p.built.task, test)}
        redone = sorted(set(calls))
        assert values == from_scratch()
        return values, redone

    def move(part: set[str], seed: int) -> None:
        with torch.no_grad():
            for name, q in model.named_parameters():
                if name in part and "lora_B" in name:
                    q.add_(torch.randn(q.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)

    first, redone = memoised()
    assert redone == ["policy", "reference", "reward"]
    assert memoised()[1] == []  # nothing moved: nothing rescored
    move(method._reward_names, 1)
    after_reward, redone = memoised()
    assert redone == ["reward"] and after_reward["utility.implicit_reward_margin"] == first["utility.implicit_reward_margin"]
    move(method._policy_names, 2)
    after_policy, redone = memoised()
    assert redone == ["policy"] and after_policy["utility.implicit_reward_margin"] != first["utility.implicit_reward_margin"]


@pytest.mark.parametrize(("method", "model"), [("fft", None), ("lora", None), ("lora", "tiny-llama"), ("prefix-tuning", None),
                                               ("prompt-tuning", None), ("textual-prompt", None)])
def test_batched_generation_gives_the_tokens_of_a_prompt_at_a_time(tmp_path, method, model):
    # OpenModel.generate left-pads GENERATION_BATCH prompts into one greedy generate call (a prompt at a
    # time was most of an instruction run's evaluation); the oracle is the unpadded one-by-one path.
    # peft's prompt tuning ignores position ids, so SoftPromptModel declares generates_batched = False.
    from bench.api.vocabulary import PROMPT_TEMPLATE
    from bench.world.tiers import GENERATION_BATCH, OpenModel

    p = prepared(tmp_path, method, kind="instruction", model=model, rounds=2, local_steps=5, examples_per_client=16)
    fl.run(p.fed, p.transcript, p.truth)
    handle = OpenModel(p.built.method.model, None, p.built.task, p.tokenizer)
    prompts = [PROMPT_TEMPLATE.format(instruction=e["instruction"]) for e in p.task_data.test[:GENERATION_BATCH]]
    prompts += ["Patient", "Patient Omar Fischer, MRN"]  # a second, shorter batch of two lengths
    assert len({len(p.tokenizer(q).input_ids) for q in prompts}) > 2
    assert handle.generate(prompts, 24) == handle.generate_one_by_one(prompts, 24)


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
def test_losses_widen_half_precision_and_keep_float64(dtype, expected):
    # A float64 model's losses rounded to float32 (the old `.float()`) differed by an ulp between the
    # batched and sequential paths, and Adam made that a visible difference in RLHF's update.
    from bench.world.tasks import token_losses

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 5, 4, 3, 2]])
    labels = ids.masked_fill(torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool), -100)
    def model(input_ids, attention_mask=None):  # a model that returns given logits: the losses' arithmetic alone
        return SimpleNamespace(logits=logits.to(dtype))

    summed = sequence_logprobs(model, ids, torch.ones_like(ids), labels)
    mean = token_losses(logits.to(dtype), labels)
    assert summed.dtype == expected and mean.dtype == expected
    exact = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * (labels[:, 1:] != -100)
    if dtype == torch.float64:  # no rounding to float32 anywhere on the way
        torch.testing.assert_close(summed, exact.sum(1), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(mean, -exact.sum(1) / (labels[:, 1:] != -100).sum(1), rtol=1e-13, atol=1e-13)
