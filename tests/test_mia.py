"""Membership-inference attacks (attacks/mia/) on fakes and on a tiny byte-level GPT-2.

Oracles: a model that saw neither candidate set gives AUC ~ 0.5 (the interval contains 0.5); a model
that memorised the members gives AUC ~ 1; calibrated attacks (LiRA, reference) beat the plain loss
attack when per-example difficulty varies; exposure is high for a memorised canary.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from bench.api.config import bind
from bench.api.errors import IncompatibleError, UserError
from bench.api.method import Method
from bench.api.registry import ATTACKS
from bench.api.transcript import GroundTruth, ProviderRecord, RoundRecord, ThreatView
from bench.scoring import mia as metrics
from bench.scoring.score import score
from bench.world.tiers import OpenModel

BOS, PAD = 256, 257


def attack(name: str, **params):
    cls = ATTACKS.get(name)
    return cls(bind(cls.Config, params, file=None, key=name))


def make_view(candidates, final_model=None, **kwargs) -> ThreatView:
    """``final_model=None``: a stand-in model with no task (the attack must not query it)."""
    defaults = dict(vantage="external", rounds=[], layout=None, base_model=None, tokenizer=None, federation=None)
    final_model = SimpleNamespace(task=None) if final_model is None else final_model
    return ThreatView(candidates=candidates, final_model=final_model, **{**defaults, **kwargs})


def auc_of(prediction, flags) -> float:
    return metrics.auc(prediction.scores, flags)


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- a tiny byte-level GPT-2 behind the handle API -------------------------------------------------
class ByteLM:
    """``OpenModel``-like handle: bytes are tokens, BOS-prefixed, mean token NLL as the loss."""

    task = None  # a stand-in with no task: the examples' fields say what they are
    def __init__(self, model: nn.Module):
        self.model = model

    @staticmethod
    def collate(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[BOS] + list(t.encode()) for t in texts]
        ids = torch.full((len(rows), max(map(len, rows))), PAD)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != PAD

    def _logits(self, texts):
        ids, mask = self.collate(texts)
        logits = self.model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
        return logits, ids[:, 1:].masked_fill(~mask[:, 1:], -100)

    def token_nll(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        logits, targets = self._logits(texts)
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none"), targets != -100

    @torch.no_grad()
    def example_losses(self, examples):
        nll, keep = self.token_nll([e["text"] for e in examples])
        return (nll.sum(1) / keep.sum(1)).float()

    @torch.no_grad()
    def token_logits(self, examples):
        logits, targets = self._logits([e["text"] for e in examples])
        return [(logits[i][targets[i] != -100], targets[i][targets[i] != -100]) for i in range(len(examples))]

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens=16):
        out = []
        for prompt in prompts:
            ids = self.collate([prompt])[0]
            for _ in range(max_new_tokens):
                ids = torch.cat([ids, self.model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
            new = [i for i in ids[0, 1 + len(prompt.encode()) :].tolist() if i < 256]
            out.append(bytes(new).decode(errors="ignore"))
        return out


def tiny_gpt2(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # weight init only; the tests own this process's global generator
    config = transformers.GPT2Config(
        vocab_size=258,
        n_embd=64,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=BOS,
        eos_token_id=BOS,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def random_texts(count: int, generator: torch.Generator) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [
        "".join(
            letters[i]
            for i in torch.randint(26, (int(torch.randint(3, 7, (1,), generator=generator)),), generator=generator)
        )
        for _ in range(60)
    ]
    return [" ".join(words[i] for i in torch.randint(60, (5,), generator=generator)) for _ in range(count)]


CANARY = SimpleNamespace(prefix="my pin is ", secret="4821")


@pytest.fixture(scope="module")
def memorised():
    """A tiny GPT-2 overfit on 24 member texts (and one canary); 24 unseen non-members; 200 more unseen."""
    generator = rng(0)
    texts = random_texts(248, generator)
    members, nonmembers = texts[:24], texts[24:48]
    space = sorted({f"{int(i):04d}" for i in torch.randint(10_000, (80,), generator=generator)} - {CANARY.secret})[:63]
    canary = SimpleNamespace(prefix=CANARY.prefix, secret=CANARY.secret, secret_space=sorted(space + [CANARY.secret]))
    base = tiny_gpt2(1)
    model = tiny_gpt2(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    handle = ByteLM(model)
    for _ in range(120):
        nll, keep = handle.token_nll(members + [canary.prefix + canary.secret])
        optimizer.zero_grad()
        (nll.sum() / keep.sum()).backward()
        optimizer.step()
    model.eval()
    candidates = [{"text": t} for t in members + nonmembers]
    flags = torch.tensor([1] * 24 + [0] * 24)
    unseen = [{"text": t} for t in texts[48:248]]
    return SimpleNamespace(
        handle=handle, base=ByteLM(base), candidates=candidates, flags=flags, unseen=unseen, canary=canary
    )


LANGUAGE_ATTACKS = ["mia-loss", "mia-zlib", "mia-mink", "mia-minkpp"]


@pytest.mark.parametrize("name", LANGUAGE_ATTACKS + ["mia-reference"])
def test_language_attacks_separate_memorised_members(memorised, name):
    view = make_view(memorised.candidates, memorised.handle, base_model=memorised.base)
    prediction = attack(name).run(view, rng())
    assert prediction.scores.shape == (48,)
    assert auc_of(prediction, memorised.flags) > 0.95


@pytest.mark.parametrize("name", LANGUAGE_ATTACKS + ["mia-reference"])
def test_language_attacks_are_at_chance_on_sets_the_model_never_saw(memorised, name):
    # Both "members" and "non-members" are unseen texts from the training distribution.
    # 100 vs 100: the AUC's standard error is ~0.04, so 0.15 is a ~4-sigma band.
    flags = torch.tensor([1, 0] * 100)
    view = make_view(memorised.unseen, memorised.handle, base_model=memorised.base)
    prediction = attack(name).run(view, rng())
    assert abs(auc_of(prediction, flags) - 0.5) < 0.15


def test_loss_attack_reports_canary_losses_and_the_scorer_finds_high_exposure(memorised):
    view = make_view(
        memorised.candidates,
        memorised.handle,
        canaries=[SimpleNamespace(prefix=memorised.canary.prefix, secret_space=memorised.canary.secret_space)],
    )
    prediction = attack("mia-loss").run(view, rng())
    assert [len(losses) for losses in prediction.canary_losses] == [64]
    exposure = {
        m.name: m.value
        for m in score(prediction, GroundTruth(member_flags=memorised.flags, canaries=[memorised.canary]))
    }
    assert exposure["mia.exposure"] > 4.0  # log2(64) = 6 when the secret ranks first; ~1 for a random rank
    untrained = attack("mia-loss").run(make_view(memorised.candidates, memorised.base, canaries=view.canaries), rng())
    assert metrics.exposure(untrained.canary_losses[0], 40) < exposure["mia.exposure"]


def test_token_attacks_refuse_classification():
    with pytest.raises(IncompatibleError):
        attack("mia-mink").run(make_view([{"text": "a b", "label": 1}], None), rng())


# --- pure fakes ------------------------------------------------------------------------------------
class TableModel:
    """Losses read from a table keyed by text; class logits that put exp(-loss) on the true label."""

    task = None  # a stand-in with no task: the examples' fields say what they are
    def __init__(self, losses: dict[str, float]):
        self.losses = losses

    def example_losses(self, examples):
        return torch.tensor([self.losses[e["text"]] for e in examples])

    def class_logits(self, examples):
        # p_y = exp(-loss) over two classes: logit gap log p_y - log(1 - p_y).
        p = torch.exp(-self.example_losses(examples)).clamp(1e-6, 1 - 1e-6)
        gap = torch.log(p) - torch.log1p(-p)
        logits = torch.zeros(len(examples), 2)
        labels = torch.tensor([e["label"] for e in examples])
        return logits.scatter(1, labels[:, None], gap[:, None])


def records(n: int, prefix: str, classification: bool = False) -> list[dict]:
    return [{"text": f"{prefix} {i}", **({"label": i % 2} if classification else {})} for i in range(n)]


@pytest.mark.parametrize("classification", [False, True])
def test_loss_attack_on_a_fake_that_memorised_members(classification):
    candidates = records(200, "record", classification)
    flags = torch.arange(200) % 2 == 0
    losses = {
        e["text"]: (0.05 if member else 2.0) + 0.01 * (i % 7)
        for i, (e, member) in enumerate(zip(candidates, flags, strict=True))
    }
    prediction = attack("mia-loss").run(make_view(candidates, TableModel(losses)), rng())
    assert auc_of(prediction, flags) == 1.0


class ShadowWorld:
    """Per-record difficulty varies a lot; training on a record lowers its loss by ``gain``.

    The plain loss attack is weak here (difficulty hides the gain); per-example calibration is not.
    """

    def __init__(self, records_: list[dict], gain: float = 1.0, noise: float = 0.3):
        self.texts = [r["text"] for r in records_]
        self.difficulty = 3.0 + 2.0 * torch.randn(len(self.texts), generator=rng(11))
        self.gain, self.noise, self.trained, self.how = gain, noise, [], []

    def model(self, trained_on: list[dict], generator: torch.Generator) -> TableModel:
        inside = {r["text"] for r in trained_on}
        jitter = self.noise * torch.randn(len(self.texts), generator=generator)
        losses = (
            self.difficulty + jitter - self.gain * torch.tensor([t in inside for t in self.texts], dtype=torch.float)
        )
        return TableModel(dict(zip(self.texts, losses.tolist(), strict=True)))

    def train_shadow(self, examples: list[dict], generator: torch.Generator, **how) -> TableModel:
        self.trained.append(examples)
        self.how.append(how)
        return self.model(examples, generator)


@pytest.fixture
def shadow_world():
    candidates, auxiliary = records(300, "cand"), records(300, "aux")
    flags = torch.arange(300) % 3 == 0
    world = ShadowWorld(candidates + auxiliary)
    target = world.model([c for c, f in zip(candidates, flags, strict=True) if f], rng(99))
    view = make_view(candidates, target, auxiliary=auxiliary, train_shadow=world.train_shadow, base_model=target)
    return SimpleNamespace(world=world, view=view, flags=flags, candidates=candidates)


@pytest.mark.parametrize(
    "params",
    [{"online": True}, {"online": False}, {"online": True, "variance": "per-example", "shadows": 16},
     {"online": True, "center": "median"}],
)
def test_lira_beats_the_loss_attack_when_difficulty_varies(shadow_world, params):
    lira = attack("mia-lira", **params).run(shadow_world.view, rng(5))
    loss = attack("mia-loss").run(shadow_world.view, rng(5))
    lira_points = metrics.point_metrics(lira.scores, shadow_world.flags)
    loss_points = metrics.point_metrics(loss.scores, shadow_world.flags)
    assert loss_points["mia.auc"] < 0.75
    assert lira_points["mia.auc"] > 0.95
    assert lira_points["mia.tpr@0.01"] > loss_points["mia.tpr@0.01"] + 0.3


def test_masked_gaussian_centres_and_variances():
    from attacks.mia.lira import masked_gaussian

    observations = torch.tensor([[1.0, 0.0], [2.0, 5.0], [10.0, 7.0], [3.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    mean, variance = masked_gaussian(observations, mask, pooled=False)
    assert mean.tolist() == pytest.approx([4.0, 14 / 3]) and variance[1].item() == pytest.approx(366 / 18)
    median, _ = masked_gaussian(observations, mask, pooled=False, center="median")
    assert median.tolist() == [2.5, 5.0]  # even count: midpoint of the middle two; masked-out values ignored
    _, pooled = masked_gaussian(observations, mask, pooled=True)
    assert pooled.tolist() == pytest.approx([(50 + 366 / 9) / 5] * 2)  # residuals around each record's own mean


def test_offline_scores_of_an_online_fit_read_only_the_out_shadows():
    from attacks.mia.lira import ShadowFit, offline_scores, online_scores

    candidate_in = torch.tensor([[True, False], [False, True], [True, False], [False, True]])
    observations = torch.tensor([[8.0, 1.0], [1.0, 8.0], [10.0, 3.0], [3.0, 10.0]], dtype=torch.float64)
    fit = ShadowFit(torch.tensor([2.0, 2.0], dtype=torch.float64), observations, candidate_in)
    wild = ShadowFit(fit.target, observations.masked_fill(candidate_in, 1e6), candidate_in)
    assert torch.equal(offline_scores(fit, pooled=False), offline_scores(wild, pooled=False))
    assert offline_scores(fit, pooled=False).tolist() == pytest.approx([0.0, 0.0])  # target at the OUT mean
    assert (online_scores(fit, pooled=True) < 0).all()  # 2 is far likelier under OUT (mean 2) than IN (mean 9)


def test_lira_shadow_datasets(shadow_world):
    attack("mia-lira", online=True, shadows=6).run(shadow_world.view, rng(1))
    texts = [{e["text"] for e in shadow} for shadow in shadow_world.world.trained]
    assert len(texts) == 6
    for candidate in shadow_world.candidates:  # each candidate IN for exactly half the shadows
        assert sum(candidate["text"] in t for t in texts) == 3
    shadow_world.world.trained.clear()
    attack("mia-lira", online=False, shadows=4).run(shadow_world.view, rng(1))
    assert all(not e["text"].startswith("cand") for shadow in shadow_world.world.trained for e in shadow)


def test_sized_membership_gives_every_shadow_its_size_and_every_record_an_equal_share():
    from attacks.mia.lira import sized_membership

    membership = sized_membership(shadows=10, records=37, size=8, rng=rng(4))
    assert membership.sum(1).tolist() == [8] * 10  # each shadow trains on exactly `size` records
    per_record = membership.sum(0)
    assert int(per_record.max()) - int(per_record.min()) <= 1 and int(per_record.sum()) == 80  # 80 / 37: 2 or 3
    assert torch.equal(membership, sized_membership(10, 37, 8, rng(4)))
    assert not torch.equal(membership, sized_membership(10, 37, 8, rng(5)))


def test_lira_with_target_sized_shadows_draws_from_the_candidates_and_still_calibrates(shadow_world):
    # the target here trained on the 100 members among the 300 candidates: shadows of 100 records, 12 of them,
    # each candidate IN for 4 (the paper's shadows match the target's training set; the pool is the candidates)
    lira = attack("mia-lira", shadows=12, shadow_records=100, variance="global").run(shadow_world.view, rng(5))
    shadows = shadow_world.world.trained
    assert [len(s) for s in shadows] == [100] * 12
    assert all(e["text"].startswith("cand") for s in shadows for e in s)  # no auxiliary record
    assert {sum(c["text"] in {e["text"] for e in s} for s in shadows) for c in shadow_world.candidates} == {4}
    assert shadow_world.world.how == [{}] * 12  # central shadows unless asked: a trainer may not offer more
    assert metrics.point_metrics(lira.scores, shadow_world.flags)["mia.auc"] > 0.95


def test_lira_normalise_ignores_a_shift_the_whole_target_model_shares(shadow_world):
    # every shadow ends more or less confident on all its records at once (a federation that trained a little
    # more or less overall) and the target less than most: online LiRA's ratio reads those common shifts as
    # membership evidence; normalised, each model's shift is gone before the Gaussians are fitted
    offsets = iter((2.0 * torch.randn(8, generator=rng(7))).tolist())

    def shifted_shadow(examples, generator):
        shadow, offset = shadow_world.world.train_shadow(examples, generator), next(offsets)
        return TableModel({t: loss + offset for t, loss in shadow.losses.items()})

    losses = shadow_world.view.final_model.losses
    shifted = make_view(shadow_world.candidates, TableModel({t: loss + 1.5 for t, loss in losses.items()}),
                        auxiliary=shadow_world.view.auxiliary, train_shadow=shifted_shadow)
    raw = attack("mia-lira", shadows=8).run(shifted, rng(5))
    offsets = iter((2.0 * torch.randn(8, generator=rng(7))).tolist())  # the same shadows again
    normalised = attack("mia-lira", shadows=8, normalise=True).run(shifted, rng(5))
    assert metrics.point_metrics(raw.scores, shadow_world.flags)["mia.auc"] < 0.8
    assert metrics.point_metrics(normalised.scores, shadow_world.flags)["mia.auc"] > 0.95


def test_per_model_normalised_standardises_each_model_over_its_candidates():
    from attacks.mia.lira import per_model_normalised

    signals = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [12.0, 14.0, 16.0, 18.0, 20.0]], dtype=torch.float64)
    assert torch.equal(per_model_normalised(signals)[0], per_model_normalised(signals)[1])  # shift and scale gone
    assert per_model_normalised(signals)[0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]  # median 3, IQR 2
    assert per_model_normalised(signals[0]).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]  # one model alone


def test_lira_asks_the_harness_for_federated_shadows():
    world = ShadowWorld(records(40, "cand") + records(40, "aux"))
    view = make_view(records(40, "cand"), world.model([], rng(1)), auxiliary=records(40, "aux"),
                     train_shadow=world.train_shadow)
    attack("mia-lira", shadows=4, online=False, federated_shadows=True).run(view, rng(2))
    assert world.how == [{"federated": True}] * 4


def test_lira_refuses_target_sized_shadows_it_cannot_fit(shadow_world):
    with pytest.raises(UserError, match="shadows >= 6"):  # 300 candidates, 100 each: 4 shadows leave some IN once
        attack("mia-lira", shadows=4, shadow_records=100).run(shadow_world.view, rng(5))
    with pytest.raises(UserError, match="fewer than the 300"):
        attack("mia-lira", shadows=4, shadow_records=300, online=False).run(shadow_world.view, rng(5))
    with pytest.raises(UserError, match="shadow_records"):
        attack("mia-lira", shadow_records=-1)


def test_lira_is_deterministic_in_its_generator(shadow_world):
    first = attack("mia-lira", shadows=4).run(shadow_world.view, rng(3)).scores
    assert torch.equal(first, attack("mia-lira", shadows=4).run(shadow_world.view, rng(3)).scores)


def test_lira_config_and_access_errors(shadow_world):
    with pytest.raises(UserError, match="even"):
        attack("mia-lira", shadows=3)
    with pytest.raises(UserError, match="at least 4"):
        attack("mia-lira", shadows=2, online=True)
    no_shadows = make_view(shadow_world.candidates, shadow_world.view.final_model)
    with pytest.raises(PermissionError):
        attack("mia-lira").run(no_shadows, rng())


def test_reference_attack_calibrates_difficulty(shadow_world):
    base = shadow_world.world.model([], rng(42))
    view = make_view(shadow_world.candidates, shadow_world.view.final_model, base_model=base)
    reference = auc_of(attack("mia-reference").run(view, rng()), shadow_world.flags)
    assert reference > 0.9 > auc_of(attack("mia-loss").run(view, rng()), shadow_world.flags)


class Completer:
    """Greedy completions: members' true continuation (with a leading space, as a tokenizer would give),
    a near miss for the first half of the non-members, nothing related for the rest."""

    task = None  # a stand-in with no task: the examples' fields say what they are
    def __init__(self, texts: dict[str, bool]):
        self.texts, self.prompts = texts, []

    def generate(self, prompts, max_new_tokens=16):
        self.prompts += prompts
        out = []
        for prompt in prompts:
            full, member = next((t, m) for t, m in self.texts.items() if t.startswith(prompt))
            rest = full[len(prompt) :]
            near_miss = " ".join(rest.split()[:2]) + " zz qq"
            out.append(
                rest + " and more words" if member else near_miss if full.endswith("even") else " unrelated text"
            )
        return out


def test_generation_attack_scores_completion_overlap():
    texts = {f"w{i} alpha beta gamma delta epsilon {'even' if i % 2 == 0 else 'odd'}": i < 10 for i in range(30)}
    model = Completer(texts)
    prediction = attack("mia-generation", prefix_fraction=0.5).run(
        make_view([{"text": t} for t in texts], model), rng()
    )
    assert model.prompts[0] == "w0 alpha beta"  # first half of the words, no trailing space
    assert prediction.scores[:10].eq(1.0).all()  # exact reproduction (extra generated words are cut)
    near_miss, unrelated = prediction.scores[10::2], prediction.scores[11::2]
    assert (near_miss > unrelated).all() and (near_miss < 1).all()
    assert auc_of(prediction, torch.tensor([1] * 10 + [0] * 20)) == 1.0


class LabelOracle:
    """Always right on members (any perturbation); on non-members right only for the untouched text."""

    task = None  # a stand-in with no task: the examples' fields say what they are
    def __init__(self, originals: set[str]):
        self.originals = originals

    def predict_labels(self, examples):
        right = [e["member"] or e["text"] in self.originals for e in examples]
        return torch.tensor([e["label"] if ok else 1 - e["label"] for e, ok in zip(examples, right, strict=True)])


def test_label_only_attack_for_classification():
    candidates = [{"text": f"w{i} a b c d e f g", "label": i % 2, "member": i < 20} for i in range(40)]
    oracle = LabelOracle({e["text"] for e in candidates})
    prediction = attack("mia-generation", drop_probability=0.3).run(make_view(candidates, oracle), rng())
    flags = torch.tensor([1] * 20 + [0] * 20)
    assert auc_of(prediction, flags) == 1.0
    assert prediction.scores[:20].eq(1.0).all() and prediction.scores[20:].lt(1.0).all()


def test_provider_lookup_ignores_the_evaluations_own_queries():
    candidates = records(40, "row")
    flags = torch.arange(40) < 10
    log = [ProviderRecord(client=i % 3, purpose="tuning-upload", text=c["text"]) for i, c in enumerate(candidates[:10])]
    # Other attacks' probes, unattributed:
    log += [ProviderRecord(client=None, purpose="inference", text=c["text"]) for c in candidates]
    log += [ProviderRecord(client=1, purpose="inference", text="Q: " + candidates[10]["text"] + " A:")]
    prediction = attack("mia-provider").run(make_view(candidates, None, vantage="provider", provider_log=log), rng())
    assert prediction.scores[:10].tolist() == [1.5] * 10  # exact upload match (which also contains itself)
    assert prediction.scores[10] == 0.5 and prediction.scores[11:].eq(0).all()  # embedded in a prompt; absent
    assert metrics.tpr_at_fpr(prediction.scores, flags, 0.0) == 1.0


# --- server and participant vantages: a linear classifier trained by simulated FedSGD ---------------
class FeatureTask:
    kind = "classification"

    @staticmethod
    def collate(examples, tokenizer, device):
        return {
            "x": torch.stack([e["x"] for e in examples]).to(device),
            "labels": torch.tensor([e["label"] for e in examples], device=device),
        }

    @staticmethod
    def example_losses(model, batch):
        return F.cross_entropy(model(batch["x"]), batch["labels"], reduction="none")


class WholeModel(Method):
    def build(self, model, task, rng):
        return model


def federated_view(vantage: str, transmitted_as=lambda update: update) -> tuple[ThreatView, torch.Tensor, WholeModel]:
    """4 clients x 4 members, 16 non-members; one client per round for 4 rounds, then 4 more rounds of all."""
    generator = rng(7)

    def record(i: int) -> dict:
        return {"x": torch.randn(128, generator=generator), "label": i % 3}

    members, nonmembers = [record(i) for i in range(16)], [record(i) for i in range(16)]
    torch.manual_seed(0)
    method = WholeModel(None)
    method.prepare(nn.Linear(128, 3), FeatureTask, generator)
    method.task_loss = FeatureTask.example_losses
    rounds = []
    schedule = [[0], [1], [2], [3]] + [[0, 1, 2, 3]] * 4
    for index, sampled in enumerate(schedule):
        before = method.get_flat().clone()
        updates = {}
        for client in sampled:
            method.set_flat(before)
            batch = FeatureTask.collate(members[4 * client : 4 * client + 4], None, "cpu")
            grads = torch.autograd.grad(
                FeatureTask.example_losses(method.model, batch).mean(), [p for _, p in method.named_trainable]
            )
            updates[client] = -0.05 * torch.cat([g.reshape(-1) for g in grads])
        aggregate = torch.stack(list(updates.values())).mean(0)
        method.set_flat(before + aggregate)
        rounds.append(
            RoundRecord(index, sampled, before, {c: transmitted_as(u) for c, u in updates.items()}, aggregate)
        )
    handle = OpenModel(method.model, method.layout(), FeatureTask, None)
    view = make_view(members + nonmembers, handle, vantage=vantage, rounds=rounds, layout=method.layout())
    return view, torch.tensor([1] * 16 + [0] * 16), method


def test_gradient_alignment_finds_members_in_client_updates():
    view, flags, method = federated_view("server")
    final = method.get_flat().clone()
    prediction = attack("mia-gradient").run(view, rng())
    assert auc_of(prediction, flags) == 1.0
    assert torch.equal(method.get_flat(), final)  # the attack leaves the shared model as it found it


def masked(update: torch.Tensor) -> torch.Tensor:
    """What a secure-aggregation server holds instead of a float update: fixed-point integers."""
    return (update * 2**16).long()


def test_gradient_alignment_without_usable_updates_is_chance():
    view, flags, _ = federated_view("server", masked)
    prediction = attack("mia-gradient", use_aggregate=False).run(view, rng())
    assert prediction.scores.eq(0).all()
    with_aggregate = attack("mia-gradient").run(view, rng())
    assert auc_of(with_aggregate, flags) > 0.8  # the aggregate alone still leaks


def test_participant_sees_loss_drops_between_global_models():
    view, flags, method = federated_view("participant")
    final = method.get_flat().clone()
    for reduce in ("max", "sum"):
        prediction = attack("mia-participant", reduce=reduce).run(view, rng())
        assert auc_of(prediction, flags) > 0.95, reduce
    assert torch.equal(method.get_flat(), final)


# --- through the real tier handles (bench.world.tiers) -----------------------------------------------------
class ByteTokenizer:
    pad_token_id = PAD

    def __call__(self, text, return_tensors=None):
        return SimpleNamespace(input_ids=torch.tensor([[BOS] + list(text.encode())]))

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids.tolist() if i < 256).decode(errors="ignore")


class ByteTask:
    kind = "language"

    @staticmethod
    def collate(examples, tokenizer, device):
        ids, mask = ByteLM.collate([e["text"] for e in examples])
        return {"input_ids": ids, "attention_mask": mask.long(), "labels": ids.masked_fill(~mask, -100)}

    @staticmethod
    def example_losses(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return nll.sum(1) / (targets != -100).sum(1)

    @staticmethod
    def text_of(example):
        return example["text"]


@pytest.mark.parametrize("tier", ["open-weight", "gray-box", "black-box"])
def test_attacks_through_tier_handles(memorised, tier):
    from bench.api.registry import TIERS

    log: list[ProviderRecord] = []
    handle = TIERS.get(tier)().handle(memorised.handle.model, None, ByteTask, ByteTokenizer(), log)
    view = make_view(memorised.candidates, handle, base_model=handle)
    generated = attack("mia-generation", max_new_tokens=4).run(view, rng())
    assert generated.scores.shape == (48,)
    if tier == "black-box":
        with pytest.raises(PermissionError):
            attack("mia-loss").run(view, rng())
        return
    for name in ("mia-loss", "mia-minkpp"):
        assert auc_of(attack(name).run(view, rng()), memorised.flags) > 0.95
    # The evaluation's own queries land in a hosted provider's log, unattributed; the lookup ignores them.
    provider = attack("mia-provider").run(
        make_view(memorised.candidates, None, vantage="provider", provider_log=log), rng()
    )
    assert provider.scores.eq(0).all() and (tier == "open-weight") == (not log)
