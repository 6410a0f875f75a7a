"""The accountant contract (``bench.api.privacy.Accountant``, Opacus' ``IAccountant``) and the typed privacy
report (``PrivacyAccounting``): the shipped accountants agree with Google's ``dp-accounting`` (an independent
implementation) and with the ledger that produced the stored epsilons; the typed report stores the same
rows, in the same order, with the same directions, as the keyed dict it replaces."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from bench.api.privacy import Accountant, PrivacyAccounting
from defenses.dp.accountants import ACCOUNTANT_TYPES, create_accountant
from defenses.dp.accounting import ACCOUNTANTS, Ledger

Relation = dp_accounting.NeighboringRelation
STEPS = [(1.0, 0.05, 40), (1.0, 0.05, 10), (2.0, 0.1, 5)]  # the first two merge, as in Opacus


def composed(mechanism: str) -> Accountant:
    accountant = create_accountant(mechanism)
    for z, q, n in STEPS:
        accountant.step(noise_multiplier=z, sample_rate=q, steps=n)
    return accountant


def test_every_accountant_word_has_an_accountant_and_none_is_abstract():
    assert set(ACCOUNTANT_TYPES) == set(ACCOUNTANTS)
    for word, cls in ACCOUNTANT_TYPES.items():
        assert cls.mechanism() == word and isinstance(cls(), Accountant)

    class Incomplete(Accountant):
        @classmethod
        def mechanism(cls) -> str:
            return "none"

    with pytest.raises(TypeError):
        Incomplete()


@pytest.mark.parametrize("mechanism", sorted(ACCOUNTANTS))
def test_an_accountant_composes_like_the_ledger_and_gives_its_epsilon_bit_for_bit(mechanism):
    accountant, ledger = composed(mechanism), Ledger()
    for z, q, n in STEPS:
        ledger.record(0, z, q, n)
    assert accountant.history == ledger.histories[0] == [(1.0, 0.05, 50), (2.0, 0.1, 5)]
    assert len(accountant) == 55
    assert accountant.get_epsilon(1e-5) == ledger.epsilons(1e-5, mechanism)[0]


def test_the_poisson_accountants_agree_with_dp_accounting():
    events = [dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), n)
              for z, q, n in [(1.0, 0.05, 50), (2.0, 0.1, 5)]]
    rdp, pld = RdpAccountant(neighboring_relation=Relation.ADD_OR_REMOVE_ONE), PLDAccountant(Relation.ADD_OR_REMOVE_ONE)
    for event in events:
        rdp.compose(event)
        pld.compose(event)
    ours_rdp, ours_prv = composed("rdp").get_epsilon(1e-5), composed("prv").get_epsilon(1e-5)
    assert ours_rdp == pytest.approx(rdp.get_epsilon(1e-5), rel=0.01)
    assert pld.get_epsilon(1e-5) * 0.97 <= ours_prv <= ours_rdp  # PRV: near-exact like PLD, tighter than RDP


def test_the_without_replacement_accountant_agrees_with_dp_accounting():
    accountant = create_accountant("rdp-wor")
    accountant.step(noise_multiplier=1.5, sample_rate=0.25, steps=8)
    theirs = RdpAccountant(neighboring_relation=Relation.REPLACE_ONE)
    sampled = dp_event.SampledWithoutReplacementDpEvent(1000, 250, dp_event.GaussianDpEvent(1.5))
    theirs.compose(dp_event.SelfComposedDpEvent(sampled, 8))
    assert accountant.get_epsilon(1e-5) == pytest.approx(theirs.get_epsilon(1e-5), rel=0.01)


def test_no_steps_is_zero_and_a_noiseless_step_is_unbounded():
    assert create_accountant("rdp").get_epsilon(1e-5) == 0.0
    noiseless = create_accountant("rdp")
    noiseless.step(noise_multiplier=0.0, sample_rate=0.5)
    assert noiseless.get_epsilon(1e-5) == math.inf


DP_LOCAL_REPORT = {
    "dp.epsilon": 7.9, "dp.delta": 1e-5, "dp.accountant": "rdp", "dp.level": "record", "dp.noise_multiplier": 1.1,
    "dp.clip_norm": 1.0, "dp.sampling_rate": 0.25, "dp.steps": 40, "dp.grad_sample_mode": "hooks",
    "dp.sampling": "poisson", "dp.neighbouring": "add-remove", "dp.epsilon_lower": float("nan"),
    "dp.audit_epsilon": 6.0, "dp.audit_canaries": 50, "dp.audit_included": 23,
}
DP_CENTRAL_REPORT = {
    "dp.epsilon": math.inf, "dp.delta": 1e-5, "dp.accountant": "rdp-wor", "dp.level": "user", "dp.noise_multiplier": 0.0,
    "dp.clip_norm": math.inf, "dp.sampling_rate": 0.5, "dp.steps": 2, "dp.noise_at": "server",
    "dp.sampling": "fixed-size without replacement", "dp.neighbouring": "replace-one",
}
SCRUB_REPORT = {"privacy.scrubbed_items": 12, "privacy.residual_pii_fraction": 0.3}


@pytest.mark.parametrize("report", [DP_LOCAL_REPORT, DP_CENTRAL_REPORT, SCRUB_REPORT, "safety"])
def test_the_typed_report_is_the_keyed_one_in_the_same_order(report):
    report = SAFETY_REPORT if report == "safety" else report
    typed = PrivacyAccounting.of(report)
    assert list(typed) == list(report) and dict(typed.items()) == report  # the same objects (a nan is itself)
    for key in report:  # the direction each metric row was always stored with (the old prefix rule)
        assert PrivacyAccounting.higher_is_better(key) == (not key.startswith(("dp.epsilon", "privacy.")))


SAFETY_REPORT = {"safety.revised_records": 10, "safety.revision_refusal_rate": 0.5,
                 "safety.revision_compliance_rate": 0.25, "safety.revision_dropped": 2}


def test_the_safety_reports_are_declared_too():
    typed = PrivacyAccounting.of(SAFETY_REPORT)
    assert not typed.undeclared and list(typed) == list(SAFETY_REPORT) and typed.revised_records == 10


def test_a_key_no_field_declares_is_kept_in_order_with_the_old_direction():
    typed = PrivacyAccounting.of({"dp.epsilon": 2.0, "privacy.plugin_leak": 0.1, "plugin.score": 3})
    assert list(typed) == ["dp.epsilon", "privacy.plugin_leak", "plugin.score"] and typed["plugin.score"] == 3
    assert not PrivacyAccounting.higher_is_better("privacy.plugin_leak")
    assert PrivacyAccounting.higher_is_better("plugin.score")


def test_the_runner_stores_the_same_rows_for_the_typed_and_the_keyed_report():
    from bench.api.defense import Defense
    from bench.api.transcript import Transcript
    from bench.api.vocabulary import DefenseFamily
    from bench.engine.runner import _privacy_metrics

    class Keyed(Defense):
        name, family = "keyed", DefenseFamily.DP

        def privacy(self):
            return DP_CENTRAL_REPORT

    class Typed(Keyed):
        def privacy(self):
            return PrivacyAccounting(epsilon=math.inf, delta=1e-5, accountant="rdp-wor", level="user",
                                     noise_multiplier=0.0, clip_norm=math.inf, sampling_rate=0.5, steps=2,
                                     noise_at="server", sampling="fixed-size without replacement",
                                     neighbouring="replace-one")

    keyed_extra, typed_extra = {}, {}
    keyed = _privacy_metrics([Keyed(None)], Transcript(), keyed_extra)
    typed = _privacy_metrics([Typed(None)], Transcript(), typed_extra)
    assert keyed == typed and list(keyed_extra.items()) == list(typed_extra.items())
    assert [m.name for m in keyed][2:] == ["dp.epsilon", "dp.delta", "dp.noise_multiplier", "dp.clip_norm",
                                           "dp.sampling_rate", "dp.steps"]
