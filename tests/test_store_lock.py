"""One writer per results folder, refused by name and pid; an unusable ``--out`` is refused before any run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.api.errors import UserError
from bench.store.results import ResultStore, Row

ROOT = Path(__file__).resolve().parents[1]


def _row(seed: int) -> Row:
    return Row(run_id=f"h-{seed}", scenario="s", scenario_hash="h", seed=seed, tier="open-weight", model="m", task="t",
               method="lora", defenses="none", attack="none", metric="utility.accuracy", value=0.5)


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path / 'out'`` as its writer (as a running sweep does)."""
    code = ("import sys, time; from bench.store.results import ResultStore; s = ResultStore(sys.argv[1], writer=True); "
            "s.append([]); print('ready', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.readline().strip() == b"ready"
    yield child
    child.kill()
    child.wait()


def test_second_writer_is_refused_naming_folder_and_pid_until_the_first_dies(tmp_path, holder):
    out = tmp_path / "out"
    with pytest.raises(UserError) as refused:
        ResultStore(out, writer=True)
    assert str(out) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    with pytest.raises(UserError):
        ResultStore(out).append([_row(0)])  # an occasional writer is refused as well
    assert ResultStore(out).rows() == [] and ResultStore(out).done() == set(), "readers take no lock"

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with ResultStore(out, writer=True) as store:  # the kernel released the dead holder's lock
        store.append([_row(0)])
    assert ResultStore(out).done() == {("h", 0)}


def test_writers_in_one_process_share_the_lock(tmp_path):
    first = ResultStore(tmp_path, writer=True)
    second = ResultStore(tmp_path, writer=True)
    second.append([_row(1)])
    second.close()
    first.append([_row(0)])
    first.close()
    assert ResultStore(tmp_path).done() == {("h", 0), ("h", 1)}


def test_cli_run_on_a_held_folder_exits_2_before_any_run(tmp_path, holder, monkeypatch, capsys):
    import bench.engine.sweep as sweep_module
    from bench.cli import main
    from tests.helpers import scenario_dict, write_scenario

    monkeypatch.setattr(sweep_module, "execute", _no_run)
    path = write_scenario(tmp_path, scenario_dict())
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "out") in err and f"pid {holder.pid}" in err and "Traceback" not in err


def _no_run(*args, **kwargs):
    raise AssertionError("a run started although --out cannot be written")


def test_out_under_a_file_is_refused_before_any_run(tmp_path, monkeypatch):
    import bench.engine.sweep as sweep_module
    from tests.helpers import make_scenario

    monkeypatch.setattr(sweep_module, "execute", _no_run)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="file/out"):
        sweep_module.sweep([make_scenario(tmp_path)], tmp_path / "file" / "out", show_progress=False)


@pytest.mark.parametrize("read_only", ["folder", "log"])
def test_read_only_out_is_refused_before_any_run(monkeypatch, read_only):
    import bench.engine.sweep as sweep_module
    from tests.helpers import make_scenario

    monkeypatch.setattr(sweep_module, "execute", _no_run)
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)  # traversable by the unprivileged user the check runs as under root
    out = base / "out"
    if read_only == "log":
        ResultStore(out).append([_row(0)])
        (out / "results.jsonl").chmod(0o444)
        out.chmod(0o777)
    else:
        out.mkdir()
        out.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(UserError, match=str(out)):
                sweep_module.sweep([make_scenario(base)], out, show_progress=False)
        else:  # root writes through permissions: open the store in a child that drops to nobody
            assert str(out) in _refusal_as_nobody(out)
    finally:
        out.chmod(0o755)
        shutil.rmtree(base)


def _refusal_as_nobody(out: Path) -> str:
    """The UserError message a writer gets on ``out`` as uid 65534 ('' when it was not refused)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no return
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            ResultStore(out, writer=True)
        except UserError as error:
            os.write(write, str(error).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged writer was not refused"
    return message
