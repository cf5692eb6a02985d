"""Two drivers on one output: the run's lease (jobs/label/lease.py) lets exactly one write it.

* the lease itself, in real processes started at once (many rounds), locally (flock) and on S3
  (moto: conditional PUTs), with take-over of a stale lease and a holder that finds it lost;
* two real drivers (`python -m jobs.pseudo_label`, each starting its own local Ray) started at once
  on the same --output and --run-id, locally and on S3: one runs, the other is refused in one line
  (exit 2) before writing anything, and every video's rows land exactly once. The rounds are
  ``VOS_CONCURRENCY_ROUNDS`` (default 2 locally, 1 on S3: each round starts a Ray; run it with
  more, e.g. ``VOS_CONCURRENCY_ROUNDS=20 python -m pytest tests/test_concurrency.py``)."""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jobs import storage as st
from jobs.label import lease as ls
from jobs.layout import LEASE_FILE, Layout
from job_helpers import (FAST, ROOT, S3_ENV, assert_exactly_once, compact_ckpt, make_bucket, moto_s3,  # noqa: F401
                         s3fs_for, session_token_env, tiny_corpus)

ROUNDS = int(os.environ.get("VOS_CONCURRENCY_ROUNDS", "0"))
HELD = "is being written by another driver"

# A process that, in each round, asks for the lease of that round's output at the round's start time,
# reports, and (when it won) holds the lease until every process has made its attempt.
_TAKER = textwrap.dedent("""
    import json, os, sys, time
    from jobs import storage as st
    from jobs.label import lease as ls
    from jobs.layout import Layout
    outs, endpoint, start_at, every, marks, n = (json.loads(sys.argv[1]), sys.argv[2] or None, float(sys.argv[3]),
                                                 float(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    storage = st.Storage(endpoint_url=endpoint)
    layouts = [Layout(o, storage) for o in outs]
    for i, layout in enumerate(layouts):
        layout.fs  # resolved before the start line
        time.sleep(max(0.0, start_at + i * every - time.time()))
        try:
            lease, answer = ls.acquire(layout), {"won": True}
        except ls.LeaseHeld as e:
            lease, answer = None, {"won": False, "message": str(e)}
        open(os.path.join(marks, f"{i}-{os.getpid()}"), "w").close()
        if lease is not None:
            while sum(f.startswith(f"{i}-") for f in os.listdir(marks)) < n:
                time.sleep(0.02)
            lease.release()
        print(json.dumps({"round": i, **answer}), flush=True)
""")


def _race(outs: list[str], endpoint: str | None, marks, takers: int = 3) -> list[list[dict]]:
    """``takers`` processes asking for the lease of each output at the same instant; their answers by round."""
    env = {**os.environ, **(S3_ENV if endpoint else {})}
    marks.mkdir()
    start_at, every = time.time() + 8.0, 1.0  # the first round after every process has imported and resolved
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, json.dumps(outs), endpoint or "", str(start_at),
                               str(every), str(marks), str(takers)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(takers)]
    rounds = [[] for _ in outs]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        for line in stdout.splitlines():
            a = json.loads(line)
            rounds[a["round"]].append(a)
    return rounds


@pytest.mark.parametrize("where", ["local", "s3"])
def test_exactly_one_of_several_processes_gets_the_lease(where, tmp_path, request):
    endpoint = None
    if where == "s3":
        endpoint = request.getfixturevalue("moto_s3")
        make_bucket(endpoint, "lease-race")
    n = max(ROUNDS, 5)
    outs = [str(tmp_path / f"out{i}") for i in range(n)] if where == "local" else [f"s3://lease-race/o{i}" for i in range(n)]
    for answers in _race(outs, endpoint, tmp_path / "marks"):
        assert len(answers) == 3 and sum(a["won"] for a in answers) == 1, answers
        for a in answers:
            if not a["won"]:
                assert HELD in a["message"] and LEASE_FILE in a["message"], a
    ls.acquire(Layout(outs[-1], st.Storage(endpoint_url=endpoint))).release()  # released by its holder: free again


_HOLDER = textwrap.dedent("""
    import sys, time
    from jobs import storage as st
    from jobs.label import lease as ls
    from jobs.layout import Layout
    lease = ls.acquire(Layout(sys.argv[1], st.Storage()))
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_local_lease_is_free_as_soon_as_its_holder_dies(tmp_path):
    out = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, out], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        layout = Layout(out, st.Storage())
        with pytest.raises(ls.LeaseHeld, match=f"pid.*{holder.pid}|{holder.pid}"):
            ls.acquire(layout)
    finally:
        holder.kill()
        holder.wait()
    ls.acquire(layout).release()  # the kernel dropped the lock with the process


def _lease_json(fs, path, **changes):
    info = json.loads(fs.cat_file(path))
    info.update(changes)
    fs.pipe_file(path, json.dumps(info).encode())


def test_s3_stale_leases_are_taken_over_and_their_holder_stops(moto_s3, monkeypatch, capsys):  # noqa: F811
    fs = make_bucket(moto_s3, "lease-stale")
    layout = Layout("s3://lease-stale/run", st.Storage(endpoint_url=moto_s3))
    path = "lease-stale/run/" + LEASE_FILE
    monkeypatch.setattr(ls, "HEARTBEAT_S", 0.2)
    first = ls.acquire(layout)
    time.sleep(0.6)
    with pytest.raises(ls.LeaseHeld, match="last heartbeat"):  # fresh: refused
        ls.acquire(layout)
    first._stop.set()  # its driver hangs: no more heartbeats
    time.sleep(0.3)
    _lease_json(fs, path, heartbeat_at="2000-01-01T00:00:00+00:00", host="elsewhere")
    second = ls.acquire(layout)  # stale: taken over
    assert "took over the run's lease" in capsys.readouterr().out
    first._stop.clear()
    first._thread = threading.Thread(target=first._beat, daemon=True)
    first._thread.start()  # it wakes up: its next heartbeat's condition fails
    deadline = time.monotonic() + 10
    while first.lost is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.lost and "taken over" in first.lost
    with pytest.raises(ls.LeaseLost):
        first.check()
    first.release()
    assert fs.exists(path)  # a lost lease's release leaves the new holder's lease alone
    with pytest.raises(ls.LeaseHeld):
        ls.acquire(layout)
    second.release()
    assert not fs.exists(path)


def test_s3_lease_of_a_driver_gone_on_this_machine_is_taken_over_at_once(moto_s3, capsys):  # noqa: F811
    fs = make_bucket(moto_s3, "lease-gone")
    layout = Layout("s3://lease-gone/run", st.Storage(endpoint_url=moto_s3))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held = ls.acquire(layout)
    held._stop.set()
    _lease_json(fs, "lease-gone/run/" + LEASE_FILE, pid=dead.pid)  # fresh heartbeat, but its process is gone
    ls.acquire(layout).release()
    assert f"pid {dead.pid} on this machine) is gone" in capsys.readouterr().out


def test_s3_an_unwritable_output_is_one_line(moto_s3):  # noqa: F811
    layout = Layout("s3://no-such-bucket-here/run", st.Storage(endpoint_url=moto_s3))
    with pytest.raises(ls.OutputError, match="cannot write the run's lease"):
        ls.acquire(layout)


# -- two real drivers ------------------------------------------------------------------------

def _drivers_at_once(args: list[str], env: dict, n: int = 2) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "jobs.pseudo_label", *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def _check_round(results, out: str, expected: set[str], filesystem=None) -> bool:
    """Checks one round of drivers started at once; True when one of them was refused."""
    codes = sorted(r.returncode for r in results)
    text = "\n".join(f"rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}" for r in results)
    assert codes in ([0, 2], [0, 0]), text
    if codes == [0, 2]:
        refused = next(r for r in results if r.returncode == 2)
        err = refused.stderr.strip().splitlines()
        assert err and err[-1].startswith("pseudo-label: error: ") and HELD in err[-1], text
        assert "Traceback" not in refused.stderr and "video(s) to process" not in refused.stdout, text
    winner = next(r for r in results if r.returncode == 0)
    assert f"{len(expected)} ok, 0 failed" in winner.stdout or "skipped" in winner.stdout, text
    assert_exactly_once(out, expected, filesystem=filesystem)
    return codes == [0, 2]


def _job_env(tmp_path_factory, **extra) -> dict:
    env = {**os.environ, **session_token_env(tmp_path_factory), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_two_drivers_started_at_once_locally(compact_ckpt, tmp_path, tmp_path_factory):  # noqa: F811
    manifest = tiny_corpus(tmp_path / "corpus", n=4, frames=12)
    expected = {f"vid{i:02d}" for i in range(4)}
    env = _job_env(tmp_path_factory)
    refused = 0
    for i in range(ROUNDS or 2):
        out = str(tmp_path / f"out{i}")
        args = ["--manifest", str(manifest), "--output", out, "--checkpoint", str(compact_ckpt), "--run-id", "twice",
                "--actors", "1", "--num-cpus", "1", *FAST]
        refused += _check_round(_drivers_at_once(args, env), out, expected)
    assert refused == (ROUNDS or 2)  # the second always came while the first ran: it was refused every time
    # and once more on the last output, both resuming a finished run: nothing to do, nothing lost
    _check_round(_drivers_at_once(args, env), out, expected)


@pytest.mark.slow
def test_two_drivers_started_at_once_on_s3(moto_s3, compact_ckpt, tmp_path, tmp_path_factory):  # noqa: F811
    fs = make_bucket(moto_s3, "twice")
    manifest = tiny_corpus(tmp_path / "corpus", n=3, frames=12)
    expected = {f"vid{i:02d}" for i in range(3)}
    env = _job_env(tmp_path_factory, **S3_ENV, AWS_ENDPOINT_URL=moto_s3)
    for i in range(ROUNDS or 1):
        out = f"s3://twice/out{i}"
        args = ["--manifest", str(manifest), "--output", out, "--checkpoint", str(compact_ckpt), "--run-id", "twice",
                "--actors", "1", "--num-cpus", "1", *FAST]
        assert _check_round(_drivers_at_once(args, env), out, expected, filesystem=s3fs_for(moto_s3))
        assert not fs.exists(f"twice/out{i}/{LEASE_FILE}")  # released at the end
