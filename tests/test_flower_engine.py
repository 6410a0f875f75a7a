"""federation.engine: flower (bench.engine.flower): the same rounds through Flower as in-process.

The fast tests drive ``TierBenchStrategy`` and the ClientApp through an in-process Grid (no Ray, no
SuperLink): the messages, the client's own build of the run and the server side. The engine tests run
whole scenarios through Flower's simulation engine (Ray actors) and its deployment engine (a SuperLink
and SuperNodes as separate processes) and compare every non-cost metric with the in-process engine: the
smoke scenario and the ``IN_CI`` family in the default suite (what CI runs), the other families, the
dp-local audit and the command-line deployment marked ``slow``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("flwr")

from bench.api.errors import UserError  # noqa: E402
from bench.engine import federation as fl  # noqa: E402
from bench.engine import runner  # noqa: E402
from bench.engine.flower import GRIDS, DeployedGrid, client, import_flwr, state  # noqa: E402
from bench.engine.flower.strategy import TierBenchStrategy, connected_nodes  # noqa: E402
from bench.spec.scenario import Scenario, load  # noqa: E402
from bench.testing.flower import InProcessGrid  # noqa: E402
from bench.world.models import torch_threads  # noqa: E402
from tests.helpers import make_scenario  # noqa: E402

FAMILIES = {
    "dp-local": [{"name": "dp-local", "params": {"target_epsilon": 4.0}}],
    "dp-central": [{"name": "dp-central", "params": {"target_epsilon": 4.0}}],
    "secagg": ["secagg"],
    "robust-krum": ["robust-krum"],
}
IN_CI = "secagg"
"""The family whose whole-engine tests (simulation and deployment) run in the default suite, as CI does;
the other families' are ``slow`` (2-3.5 min for all of them on 2 cores). SecAgg: its precision-loss metric
reads the updates to the last bit, so it is the one that shows a change in the arithmetic."""


def families_in_ci_first():
    return [pytest.param(f, marks=() if f == IN_CI else pytest.mark.slow) for f in sorted(FAMILIES)]


SIMULATION_THREADS = 1
"""Torch threads in a simulated ClientApp: Flower's Ray actors hold one CPU each (``simulation.backend_config``)
and Ray sets ``OMP_NUM_THREADS=1`` in them. The in-process reference runs at the same count: at torch's
default (2 here) a matmul reduces in another order, and the secagg family's precision loss differed in the
third digit (1.0229e-09 against 1.0168e-09) while every other metric was equal."""
ATTACKS = ["mia-loss", "mia-gradient", "inversion-tokens"]
"""A membership attack on the final model, one on the server's updates, and an inversion of the server's updates."""


def engine(scenario: Scenario, name: str) -> Scenario:
    """The scenario with its clients trained one after another (as the Flower ClientApps do) on ``name``."""
    return dataclasses.replace(scenario, federation=dataclasses.replace(scenario.federation, client_batch=1, engine=name))


def family_scenario(tmp_path, family: str) -> Scenario:
    return make_scenario(tmp_path, method="fft", attacks=ATTACKS, defenses=FAMILIES[family],
                         federation={"clients": 5, "clients_per_round": 5, "rounds": 2})  # Krum needs 2f + 3


def through_grid(scenario: Scenario, nodes: int):
    """A prepared run whose rounds went through the strategy and ClientApp over an in-process Grid."""
    p = runner.prepare(scenario, 0, runner.plan(scenario))
    strategy = TierBenchStrategy(p)
    strategy.start(grid=InProcessGrid(client.app, nodes), initial_arrays=strategy.initial_arrays(),
                   num_rounds=scenario.federation.rounds)
    return p, strategy.finish()


def in_process(scenario: Scenario):
    p = runner.prepare(scenario, 0, runner.plan(scenario))
    return p, fl.run(p.fed, p.transcript, p.truth)


def test_engine_is_an_execution_setting_outside_the_hash():
    scenario = load("scenarios/smoke.yaml")[0]
    assert engine(scenario, "flower").hash == engine(scenario, "inprocess").hash == scenario.hash
    assert engine(scenario, "flower-deployment").hash == scenario.hash


def test_a_missing_flower_is_a_user_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr raises ImportError
    with pytest.raises(UserError, match=r"tierbench\[fl\]"):
        import_flwr()


def test_the_first_round_waits_for_the_supernodes_flower_registers_meanwhile():
    class Registering:
        def __init__(self):
            self.calls = 0

        def get_node_ids(self):
            self.calls += 1
            return [7, 3] if self.calls > 2 else []

    assert connected_nodes(Registering(), 2, wait_s=5) == [3, 7]
    with pytest.raises(RuntimeError, match="0 of 2 Flower SuperNodes"):
        connected_nodes(type("Empty", (), {"get_node_ids": lambda self: []})(), 2, wait_s=0.3)


def test_a_ledger_entry_grown_by_a_job_is_carried_as_the_steps_it_added():
    class Ledger:
        def __init__(self):
            self.histories = {0: [(1.0, 0.5, 3)]}

        def record(self, unit, z, q, steps):
            history = self.histories.setdefault(unit, [])
            if history and history[-1][:2] == (z, q):
                history[-1] = (z, q, history[-1][2] + steps)
            else:
                history.append((z, q, steps))

    class Defense:
        audit = None  # declared on bench.api.defense.Defense

        def __init__(self):
            self.ledger, self.mode = Ledger(), None

    client_side, server_side = Defense(), Defense()
    before = state.snapshot(client_side)
    client_side.ledger.record(0, 1.0, 0.5, 4)  # merged into the last entry
    client_side.ledger.record(0, 2.0, 0.5, 1)
    client_side.mode = "vmap"
    state.apply(server_side, state.changes(client_side, before))
    assert server_side.ledger.histories == client_side.ledger.histories == {0: [(1.0, 0.5, 7), (2.0, 0.5, 1)]}
    assert server_side.mode == "vmap"


def test_strategy_and_client_app_reproduce_the_in_process_rounds_bit_for_bit(tmp_path):
    """LoRA, two SuperNodes serving three clients: global state, transcript and losses agree exactly."""
    scenario = engine(make_scenario(tmp_path), "flower")
    expected, expected_stats = in_process(scenario)
    got, stats = through_grid(scenario, nodes=2)
    assert torch.equal(got.fed.method.get_flat(), expected.fed.method.get_flat())
    assert [(r.round, r.sampled, r.weights) for r in got.transcript.rounds] == \
           [(r.round, r.sampled, r.weights) for r in expected.transcript.rounds]
    assert stats.train_losses == expected_stats.train_losses
    assert stats.bytes_up == expected_stats.bytes_up


def test_the_server_records_what_it_received_and_the_ledger_of_client_side_dp(tmp_path):
    """dp-local: the clients' DP-SGD steps reach the server's accountant; the server keeps the updates the
    attacks read; the clients' trained batches come back as ground truth."""
    scenario = engine(make_scenario(tmp_path, attacks=["mia-gradient"], defenses=FAMILIES["dp-local"],
                                    federation={"rounds": 1}), "flower")
    expected, _ = in_process(scenario)
    got, _ = through_grid(scenario, nodes=3)
    for mine, theirs in zip(got.transcript.rounds, expected.transcript.rounds):
        assert mine.transmitted.keys() == theirs.transmitted.keys()
        assert all(torch.equal(mine.transmitted[c], theirs.transmitted[c]) for c in mine.transmitted)
        assert torch.equal(mine.global_before, theirs.global_before)
    assert got.truth.client_batches == expected.truth.client_batches and got.truth.client_batches
    ours, theirs = got.fed.defenses[0].privacy(), expected.fed.defenses[0].privacy()
    assert ours["dp.steps"] == theirs["dp.steps"] > 0
    assert ours["dp.epsilon"] == theirs["dp.epsilon"]


@contextlib.contextmanager
def rounds_through(app, nodes: int):
    """``runner.execute`` of an ``engine: flower`` run sends its rounds over an in-process Grid to ``app``
    (the hook a deployed ServerApp uses), so a whole run's rows come out without starting Flower."""
    GRIDS.append(DeployedGrid(InProcessGrid(app, nodes), min_nodes=nodes))
    try:
        yield
    finally:
        GRIDS.pop()


def fresh_process_app(message, context):
    """The ClientApp as the deployment engine runs it: every message in a fresh process that rebuilds the run
    (its defenses' client-side state included) from the scenario and seed."""
    client._built.clear()
    return client.app(message, context)


def test_dp_local_audit_gives_the_in_process_lower_bound_when_each_message_runs_in_a_fresh_process(tmp_path):
    """dp-local's one-run audit (audit_canaries): the canaries, which were included and their losses live in the
    audited client's copy of the defense. Under Flower that copy must reach the server (which reports
    dp.epsilon_lower) and the audited client's next job (which, in deployment, runs in another process), and
    a job of another client, replayed after it, must not undo it: same dp.* rows as in-process. Three clients
    on two SuperNodes, two rounds."""
    scenario = audited_scenario(tmp_path)
    with rounds_through(fresh_process_app, nodes=2):
        flower_rows = runner.execute(engine(scenario, "flower"), 0)
    assert_audited(flower_rows)
    assert_same_metrics(flower_rows, runner.execute(engine(scenario, "inprocess"), 0))


def audited_scenario(tmp_path) -> Scenario:
    """LoRA, three clients, two rounds; dp-local audits client 0 with 8 canaries."""
    return make_scenario(tmp_path, attacks=[], federation={"rounds": 2, "local_steps": 1}, defenses=[
        {"name": "dp-local", "params": {"noise_multiplier": 1.0, "audit_canaries": 8, "grad_sample_mode": "hooks"}}])


def assert_audited(rows) -> None:
    audited = {r.metric: r.value for r in rows if r.metric.startswith("dp.")}
    assert audited.keys() >= {"dp.epsilon_lower", "dp.audit_epsilon", "dp.audit_canaries", "dp.audit_included"}
    assert audited["dp.audit_canaries"] == 8 and audited["dp.audit_epsilon"] > 0


@pytest.mark.parametrize(("tier", "method"), [("gray-box", "provider-tuning"), ("black-box", "textual-prompt")])
def test_a_closed_tiers_provider_log_and_egress_reach_the_servers_transcript(tmp_path, tier, method):
    """provider-tuning at gray-box: each client's job uploads its examples to the provider's tuning endpoint;
    textual-prompt at black-box: each job queries the provider with its records. The provider logs them
    while the client's job runs. Carried back in sampled order, the server's transcript holds the same
    provider log and egress counts as in-process: privacy.egress_* rows, and the provider's log-lookup
    membership attack, agree. A SuperNode hosts two clients and its process keeps the run between rounds."""
    scenario = engine(make_scenario(tmp_path, tier=tier, method=method, attacks=["mia-provider"],
                                    federation={"rounds": 2, "local_steps": 1, "examples_per_client": 8}), "flower")
    client._built.clear()
    with rounds_through(client.app, nodes=2):
        flower_rows = runner.execute(scenario, 0)
    inprocess_rows = runner.execute(engine(scenario, "inprocess"), 0)
    values = {r.metric: r.value for r in flower_rows}
    assert values["privacy.egress_records"] > 0 and values["privacy.egress_bytes"] > 0
    assert values["mia.auc"] > 0.5  # the log holds members' text
    assert_same_metrics(flower_rows, inprocess_rows)


def test_what_a_job_added_to_the_transcript_is_carried_and_appended_in_place():
    from bench.api.transcript import ProviderRecord, Transcript

    client_side, server_side = Transcript(egress_records=3, egress_bytes=30), Transcript()
    client_side.provider_log.append(ProviderRecord(0, "inference", "an earlier job's request"))
    log = server_side.provider_log  # a view built before the rounds holds this list
    mark = state.transcript_mark(client_side)
    client_side.provider_log.append(ProviderRecord(1, "tuning-upload", "a note"))
    client_side.egress_records, client_side.egress_bytes = 4, 36
    state.extend_transcript(server_side, state.transcript_changes(client_side, mark))
    assert log is server_side.provider_log and log == [ProviderRecord(1, "tuning-upload", "a note")]
    assert (server_side.egress_records, server_side.egress_bytes) == (1, 6)


class Audit:  # module level: the wire pickles it
    def __init__(self):
        self.after = None


class AuditingDefense:
    ledger = None

    def __init__(self, audit=None):
        self.audit = audit


def test_an_audit_goes_down_with_the_message_and_comes_back_only_from_the_job_that_changed_it():
    server, audited, other = AuditingDefense(Audit()), AuditingDefense(), AuditingDefense()
    for job in (audited, other):
        state.apply(job, pickle.loads(pickle.dumps(state.downlink(server))))  # through the wire
    before = state.snapshot(audited), state.snapshot(other)
    audited.audit.after = 0.5
    changed = state.changes(audited, before[0]), state.changes(other, before[1])
    assert changed[1] == {}  # the other client's copy is the stale one: it must not be replayed
    for c in changed:
        state.apply(server, c)
    assert server.audit.after == 0.5


def comparable(rows) -> dict:
    """Every measurement but time and memory (cost.*_s, peak memory; cost rows that count bytes are kept)."""
    timed = lambda metric: metric.startswith("cost.") and (metric.endswith("_s") or metric == "cost.peak_mem_mb")  # noqa: E731
    return {(r.attack, r.metric): (r.status, r.value) for r in rows if not timed(r.metric)}


def assert_same_metrics(flower_rows, inprocess_rows):
    mine, theirs = comparable(flower_rows), comparable(inprocess_rows)
    assert mine.keys() == theirs.keys()
    for key, (status, value) in theirs.items():
        assert mine[key][0] == status == "ok", (key, mine[key])
        same = mine[key][1] == value or (isinstance(value, float) and math.isnan(value) and math.isnan(mine[key][1]))
        assert same, (key, mine[key][1], value)


def simulated_and_in_process(scenario: Scenario):
    """The rows of ``scenario`` through Flower's simulation engine, and in-process at its ClientApps' thread count."""
    flower_rows = runner.execute(engine(scenario, "flower"), 0)
    with torch_threads(SIMULATION_THREADS):
        return flower_rows, runner.execute(engine(scenario, "inprocess"), 0)


def test_simulation_engine_gives_the_in_process_metrics_on_the_smoke_scenario():
    """A Ray instance and its actors start: about 20 s on 2 idle cores (in the default suite, as CI runs it)."""
    assert_same_metrics(*simulated_and_in_process(load("scenarios/smoke.yaml")[0]))


@pytest.mark.parametrize("family", families_in_ci_first())
def test_simulation_engine_gives_the_in_process_metrics_per_defense_family(tmp_path, family):
    """Identical metrics, membership and inversion attacks included, read from the transcript Flower's server kept."""
    flower_rows, in_process_rows = simulated_and_in_process(family_scenario(tmp_path, family))
    assert {r.attack for r in flower_rows if r.value is not None} >= set(ATTACKS)
    assert_same_metrics(flower_rows, in_process_rows)


@pytest.mark.slow  # a Ray instance and its actors start
def test_simulation_engine_gives_the_in_process_audit_of_dp_local(tmp_path):
    """dp-local's one-run audit through Flower's simulation engine: one SuperNode per client, served by
    whichever Ray actor is free, so the audited client's jobs need not share a process: same rows as in-process."""
    flower_rows, in_process_rows = simulated_and_in_process(audited_scenario(tmp_path))
    assert_audited(flower_rows)
    assert_same_metrics(flower_rows, in_process_rows)


# A SuperLink, two SuperNodes and their app processes start: about 40 s a run on 2 idle cores. Each
# deployed ClientApp process runs at torch's default thread count, as this test process does.
@pytest.mark.parametrize("family", families_in_ci_first())
def test_deployment_engine_gives_the_in_process_metrics(tmp_path, monkeypatch, family):
    """``federation.engine: flower-deployment``: a SuperLink and two SuperNodes as separate processes on
    localhost (insecure), the app submitted with ``flwr run``: the rows its ServerApp wrote equal the
    in-process engine's, membership and inversion attacks included (read from the transcript its server kept)."""
    monkeypatch.setenv("TIERBENCH_FLOWER_HOME", str(tmp_path / "flower"))
    scenario = family_scenario(tmp_path, family)
    flower_rows = runner.execute(engine(scenario, "flower-deployment"), 0)
    assert {r.attack for r in flower_rows if r.value is not None} >= set(ATTACKS)
    assert_same_metrics(flower_rows, runner.execute(engine(scenario, "inprocess"), 0))
    assert (tmp_path / "flower" / f"{scenario.hash}-0" / "flwr" / "state.db").exists()  # Flower's state in the run's folder


@pytest.mark.slow  # as above
def test_deployment_engine_gives_the_in_process_audit_of_dp_local(tmp_path, monkeypatch):
    """dp-local's one-run audit deployed: each message runs in a fresh ``flwr-clientapp`` process, so the
    audited client's second job continues the canaries only from the copy the server sent down."""
    monkeypatch.setenv("TIERBENCH_FLOWER_HOME", str(tmp_path / "flower"))
    scenario = audited_scenario(tmp_path)
    flower_rows = runner.execute(engine(scenario, "flower-deployment"), 0)
    assert_audited(flower_rows)
    assert_same_metrics(flower_rows, runner.execute(engine(scenario, "inprocess"), 0))


@pytest.mark.slow  # as above, through the command line
def test_bench_run_on_a_flower_deployment_scenario_stores_the_in_process_metrics(tmp_path, monkeypatch):
    """``python -m bench run`` on the smoke cell with ``engine: flower-deployment`` starts and stops its
    SuperLink and SuperNodes and stores the rows an in-process run gives."""
    from bench.cli import main
    from bench.store.results import ResultStore, Row

    monkeypatch.setenv("TIERBENCH_FLOWER_HOME", str(tmp_path / "flower"))
    document = yaml.safe_load(Path("scenarios/smoke.yaml").read_text())
    document.pop("matrix")
    document["tier"], document["method"] = "open-source", "fft"
    document["federation"].update(engine="flower-deployment", client_batch=1)
    path = tmp_path / "smoke-deployment.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    stored = [Row(**{k: v for k, v in r.items() if k in Row.__dataclass_fields__})
              for r in ResultStore(tmp_path / "out").rows()]
    assert_same_metrics(stored, runner.execute(engine(load(path)[0], "inprocess"), 0))
    assert not _flower_processes(tmp_path / "flower")  # stopped after the run


def _flower_processes(home: Path) -> list[int]:
    """Processes whose environment names a FLWR_HOME under ``home`` (what a deployment started)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"FLWR_HOME={home}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def fake_flower(folder: Path, *, superlink: str, flwr: str) -> Path:
    """A bin folder whose ``flower-superlink``/``flower-supernode``/``flwr`` are the given Python bodies
    (``port``: the SuperLink's port from its arguments)."""
    folder.mkdir()
    supernode = "import time; time.sleep(60)"
    for name, body in {"flower-superlink": superlink, "flower-supernode": supernode, "flwr": flwr}.items():
        script = folder / name
        script.write_text(f"#!{sys.executable}\nimport sys\nport = int(sys.argv[sys.argv.index('--port') + 1]) "
                          f"if '--port' in sys.argv else 0\n{body}\n")
        script.chmod(0o755)
    return folder


LISTEN = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', port)); s.listen(); time.sleep(60)"


@pytest.mark.parametrize(("superlink", "flwr", "timeout", "reason"), [
    ("print('cannot open the database'); sys.exit(3)", "", "60", "SuperLink exited (3) before listening: cannot open"),
    (LISTEN, "print('invalid app config'); sys.exit(1)", "60", "ended without rows (flwr run exited 1): invalid app"),
    (LISTEN, "import time; time.sleep(60)", "3", "no rows from the deployed run after 3 s"),
], ids=["superlink-fails", "submission-fails", "run-hangs"])
def test_a_deployment_that_cannot_run_is_a_failed_run_with_its_reason_not_a_hang(tmp_path, monkeypatch, superlink,
                                                                                 flwr, timeout, reason):
    from bench.engine.flower import deployment

    monkeypatch.setattr(deployment, "BIN", fake_flower(tmp_path / "bin", superlink=superlink, flwr=flwr))
    monkeypatch.setenv("TIERBENCH_FLOWER_HOME", str(tmp_path / "flower"))
    monkeypatch.setenv("TIERBENCH_FLOWER_TIMEOUT", timeout)
    scenario = engine(make_scenario(tmp_path, attacks=[]), "flower-deployment")
    earlier = tmp_path / "flower" / f"{scenario.hash}-0" / "job.rows"  # an earlier run's rows, kept in the folder
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(pickle.dumps([]))
    started = time.monotonic()
    rows = runner.execute(scenario, 0)
    assert time.monotonic() - started < 50
    assert [(r.status, r.metric) for r in rows] == [("failed", "run")]
    assert reason in rows[0].error, rows[0].error
    assert not _flower_processes(tmp_path / "flower")  # every process it started is stopped


WARM_SERVER = """
import json, os, sys
from pathlib import Path
from bench.engine.flower import warm

def main():  # stands for Flower's flwr-clientapp: records where it ran and what it found imported, imports, exits
    Path(sys.argv[1]).write_text(json.dumps([os.getpid(), os.getppid(), 'tomllib' in sys.modules, 'wave' in sys.modules]))
    import wave  # noqa: F401 - what a task imports, the server imports after it (for the tasks after it)
    sys.exit(int(sys.argv[2]))

warm.serve(sys.argv[1], main=main, preload=('tomllib',))
"""


def test_the_warm_clientapp_server_runs_each_task_in_a_child_forked_after_its_imports(tmp_path):
    """The ``flwr-clientapp`` a deployment's SuperExec starts is a shim: the task runs in a child the warm server
    forks (its imports already done), and the shim exits with the child's code, as Flower's process would.
    What a task imported the server imports after it: the next task's child starts with it."""
    from bench.engine.flower import warm

    name = f"tierbench-test-{os.getpid()}"
    server = subprocess.Popen([sys.executable, "-c", WARM_SERVER, name], cwd=Path(__file__).parents[1])
    try:
        env = {**os.environ, warm.SOCKET_ENV: name}
        shim = warm.write_shim(tmp_path / "bin")
        codes = [subprocess.run([str(shim), str(tmp_path / f"task{i}"), str(i)], env=env, timeout=60).returncode
                 for i in (3, 0)]
        ran = [json.loads((tmp_path / f"task{i}").read_text()) for i in (3, 0)]
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert codes == [3, 0]
    assert [parent for _, parent, *_ in ran] == [server.pid, server.pid]  # forked by the server, one child per task
    assert ran[0][0] != ran[1][0] and all(preloaded for _, _, preloaded, _ in ran)
    assert [found for *_, found in ran] == [False, True]  # the first task imported it; the server, then the second


def test_a_childs_report_of_its_imports_fits_a_pipe_and_a_torn_one_reads_as_none():
    """A child reports its imports through a pipe the server reads only once the child has exited, so the report
    must fit the pipe (``REPORT_BYTES``): a task's ~2,000 module names fit whole, compressed; a list that does
    not is cut to a prefix; a child killed mid-report gives no names."""
    from bench.engine.flower import warm

    def reported(names):
        read, write = os.pipe()
        warm._report(write, names)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        assert len(data) <= warm.REPORT_BYTES
        return data, warm._names(data)

    modules = [f"transformers.models.model{i}.modeling_model{i}" for i in range(2_000)]  # 64 KB as JSON
    data, names = reported(modules)
    assert names == modules
    noise = [os.urandom(12).hex() for _ in range(20_000)]  # does not compress: cut
    assert 0 < len(reported(noise)[1]) < len(noise) and reported(noise)[1] == noise[: len(reported(noise)[1])]
    assert warm._names(data[:100]) == [] and warm._names(b"") == []


class SlowReplies:
    """A Grid's push and pull where each message's reply shows up at the ``after``-th pull."""

    def __init__(self, after: dict[str, int]):
        self.after, self.pulls = after, 0

    def push_messages(self, messages):
        return list(messages)

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [types.SimpleNamespace(metadata=types.SimpleNamespace(reply_to_message_id=m))
                for m in message_ids if self.after[m] == self.pulls]


def test_the_deployed_grid_collects_every_reply_pulling_at_its_own_interval(monkeypatch):
    """``PromptGrid.send_and_receive`` is Flower's HTTP grid's (push, then pull until every reply is in or the
    timeout passes) with ``poll_s`` between pulls instead of 3 s."""
    from bench.engine.flower import prompt_grid

    sleeps = []
    monkeypatch.setattr(prompt_grid.time, "sleep", sleeps.append)
    inner = SlowReplies({"a": 1, "b": 3})
    replies = prompt_grid.PromptGrid(inner, poll_s=0.05).send_and_receive(["a", "b"])  # push and pull go to inner
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert (inner.pulls, sleeps) == (3, [0.05, 0.05])
    clock = iter([0.0, 0.0, 10.0])  # the deadline passes after the first pull
    monkeypatch.setattr(prompt_grid.time, "time", lambda: next(clock))
    late = prompt_grid.PromptGrid(SlowReplies({"a": 1, "b": 5}), poll_s=0.05)
    assert [r.metadata.reply_to_message_id for r in late.send_and_receive(["a", "b"], timeout=5.0)] == ["a"]


def test_a_protocol_that_does_not_share_parameters_is_refused_under_flower(tmp_path):
    """kd and split send logits/activations; Flower's strategy carries parameter updates, so such a run
    is refused before training rather than silently trained as FedAvg."""
    from bench.engine.runner import execute
    from tests.helpers import make_scenario

    scenario = make_scenario(tmp_path, federation={"engine": "flower", "protocol": "kd", "clients": 2,
                                                   "clients_per_round": 2, "rounds": 1})
    rows = execute(scenario, 0)
    assert rows[0].status == "incompatible" and "in-process only" in rows[0].error


def test_a_deployed_runs_wall_time_is_the_whole_deployment_not_the_server_apps(tmp_path, monkeypatch):
    """The rows come back from the ServerApp's own ``execute``, which timed only itself; starting the
    SuperLink, the SuperNodes and every ClientApp process is the run's cost too (issue 18)."""
    from bench.engine.flower import deployment
    from bench.store.results import Row

    def fake_run(scenario: Scenario, seed: int) -> list[Row]:
        time.sleep(0.5)  # the deployment around the ServerApp
        base = dict(run_id="r", scenario="s", scenario_hash="h", seed=seed, tier="t", model="m", task="k", method="x",
                    defenses="none", status="ok", wall_s=0.01)
        return [Row(attack="none", metric="utility.accuracy", value=0.5, **base),
                Row(attack="none", metric="cost.wall_s", value=0.01, **base)]

    monkeypatch.setattr(deployment, "run_scenario", fake_run)
    rows = runner.execute(engine(make_scenario(tmp_path, attacks=[]), "flower-deployment"), 0)
    assert all(r.wall_s >= 0.5 for r in rows), [r.wall_s for r in rows]
    cost = next(r for r in rows if r.metric == "cost.wall_s")
    assert cost.value >= 0.5 and cost.extra["server_app_s"] == 0.01
