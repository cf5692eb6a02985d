"""The job on real multi-node Ray clusters on this machine (token authentication on), with the real engine:

* a worker node lost mid-video (every process of the node killed at once, as when a spot VM is
  reclaimed): the video is retried on another node and committed once, nothing else is redone;
* a video whose actors keep dying ends as WorkerDied after --max-retries restarts, the others go on;
* a driver killed (kill -9) and started again against the same cluster with the same --run-id: it
  finishes the run without duplicates;
* Ray's autoscaler (v2) with its fake multi-node provider (the one Ray tests its autoscaler with: the
  nodes it adds are real raylets on this machine): with ``--actors 1:4`` worker nodes are added while
  videos wait and removed again when the work runs out.

Each node of the fixed cluster is its own ``ray start --block --node-ip-address=127.0.0.1`` process (as in
tests/test_ray_submit.py; Ray registers such nodes at this machine's own address, nothing leaves it) with its
own --temp-dir and node id, so one node can be killed alone. The clusters are stopped by ending exactly their
processes (never `ray stop`, which would end every Ray on the machine, nor AutoscalingCluster, which runs it)."""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from job_helpers import (FAST, ROOT, assert_exactly_once, compact_ckpt, free_port, pids_under,  # noqa: F401
                         ray_cli, read_table, session_token_env, sigkill_until_gone, tiny_corpus, wait_for,
                         write_mask, write_video_folder)
from jobs.label import reaper

pytestmark = pytest.mark.slow


def _node_id(i: int) -> str:
    """A fixed Ray node id (28 bytes of hex), set with RAY_OVERRIDE_NODE_ID_FOR_TESTING."""
    return f"{0xC0FFEE:06x}" + f"{i:050x}"


class LocalCluster:
    """A Ray cluster on 127.0.0.1: a head and worker nodes, each a `ray start --block` process in a
    session of its own, with its own --temp-dir (short: Ray's sockets live under it)."""

    def __init__(self, log_dir: Path, env: dict):
        self.log_dir, self.env = log_dir, env
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, tuple[subprocess.Popen, str]] = {}  # name -> (ray start, temp dir)

    def _start(self, name: str, args: list[str], env: dict | None = None, ready: str = "Ray runtime started"):
        for tries_left in (1, 0):
            temp_dir = tempfile.mkdtemp(prefix=f"vosmn{name[:4]}", dir="/tmp")
            log = self.log_dir / f"ray_{name}.log"
            with open(log, "wb") as f:
                proc = subprocess.Popen([ray_cli(), "start", "--block", "--node-ip-address=127.0.0.1",
                                         f"--temp-dir={temp_dir}", "--disable-usage-stats", *args],
                                        env={**self.env, **(env or {})}, stdout=f, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            self.nodes[name] = (proc, temp_dir)
            wait_for(lambda: proc.poll() is not None or ready in log.read_text(errors="replace"), timeout=180,
                     interval=0.5, what=f"ray start ({name})")
            text = log.read_text(errors="replace")
            if proc.poll() is not None and tries_left and "timed out during startup" in text:
                self.kill(name)  # Ray gives a raylet 30 s to register (fixed in 2.60): a loaded machine, once more
                continue
            assert proc.poll() is None, text
            return proc

    def start_head(self, *args: str, env: dict | None = None):
        return self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false", *args], env)

    def add_worker(self, name: str, index: int, num_cpus: int = 1):
        return self._start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}"],
                           {"RAY_OVERRIDE_NODE_ID_FOR_TESTING": _node_id(index)})

    def kill(self, name: str) -> None:
        """Every process of the node at once, SIGKILL: nothing of it gets to say goodbye."""
        proc, temp_dir = self.nodes.pop(name)
        _kill_tree(proc, temp_dir)

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + [n for n in self.nodes if n == "head"]:
            self.kill(name)


def _kill_tree(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGKILL to the `ray start` process, every process below it, its session and anything still
    naming its temp dir; waits until they are gone."""
    tracked = reaper.descendants([proc.pid], reaper._processes())
    for pid in tracked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    def left():
        return [p for p in (*reaper._still(tracked), *pids_under(temp_dir)) if not reaper._zombie(p)]

    if not sigkill_until_gone(left, timeout=20, interval=0.2):
        raise AssertionError(f"processes of the node under {temp_dir} still running")
    shutil.rmtree(temp_dir, ignore_errors=True)


def _env(tmp_path_factory) -> dict:
    env = {**os.environ, **session_token_env(tmp_path_factory), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("RAY_ADDRESS", None)
    return env


class Driver:
    """``python -m jobs.pseudo_label`` against a cluster, its output lines collected as they come."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self._f = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "jobs.pseudo_label", *args], cwd=ROOT, env=env,
                                     stdout=self._f, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._f.close()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait(30)


def _attempts(out: Path, prefix: str) -> list[dict]:
    return [json.loads(f.read_text()) for f in out.glob(f"_attempts/{prefix}-*/*.json")]


def _long_first_manifest(root: Path, long_frames: int, n_short: int) -> Path:
    """A long video ('long') first, then ``n_short`` videos of 4 frames ('short0'...)."""
    mask = write_mask(root / "mask.png")
    rows = [("long", write_video_folder(root / "long", long_frames))]
    rows += [(f"short{i}", write_video_folder(root / f"short{i}", 4, seed=i)) for i in range(n_short)]
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video_id": v, "video_uri": str(p), "annotations_uri": str(mask)}) + "\n"
                                for v, p in rows))
    return manifest


# -- a fixed cluster: a head that runs no model work and three 1-CPU worker nodes --------------------------------------

@pytest.fixture(scope="class")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), _env(tmp_path_factory))
    try:
        c.start_head("--num-cpus=0")  # like cluster/*.yaml: the head runs the driver only
        for i, name in enumerate(("w1", "w2", "w3"), start=1):
            c.add_worker(name, i)
        yield c
    finally:
        c.stop()


class TestFixedCluster:
    def test_node_lost_mid_video(self, cluster, compact_ckpt, tmp_path):  # noqa: F811
        long_frames, n_short = 200, 3
        manifest = _long_first_manifest(tmp_path, long_frames, n_short)
        out = tmp_path / "out"
        # Two actors on three 1-CPU nodes: the third node is where Ray restarts the actor of the lost one.
        driver = Driver(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                         "--actors", "2", "--ray-address", cluster.address, "--run-id", "node-loss", *FAST,
                         "--progress-interval", "0.5"], cluster.env, tmp_path / "driver.log")
        short_frames = 4 * n_short

        def long_mid_way():
            # the driver's live progress: more frames than the short videos have, so the long one is under way
            seen = [int(m) for m in re.findall(r"in progress, (\d+) frames", driver.text())]
            return seen and seen[-1] >= short_frames + 20 and _attempts(out, "long")

        try:
            first = wait_for(long_mid_way, timeout=600, interval=0.1, what="the long video to be mid-way")
            assert len(first) == 1 and first[0]["node_id"]
            lost = {_node_id(i): name for i, name in enumerate(("w1", "w2", "w3"), start=1)}[first[0]["node_id"]]
            cluster.kill(lost)
            assert driver.wait(timeout=900) == 0, driver.text()
        finally:
            if driver.proc.poll() is None:
                driver.kill()
        text = driver.text()
        videos = assert_exactly_once(str(out), {"long", *(f"short{i}" for i in range(n_short))})
        assert videos["long"]["frames"] == long_frames and videos["long"]["attempts"] == 2
        tries = _attempts(out, "long")
        assert len(tries) == 2
        second = next(a for a in tries if a["attempt"] != first[0]["attempt"])
        assert second["node_id"] != first[0]["node_id"] and second["attempt"] == videos["long"]["attempt"]
        for i in range(n_short):  # done once each, none redone
            assert videos[f"short{i}"]["attempts"] == 1 and len(_attempts(out, f"short{i}")) == 1
        assert "[attempt 2]" in text and "4 ok, 0 failed" in text, text

    def test_a_video_whose_workers_keep_dying_fails_alone(self, cluster, compact_ckpt, tmp_path):  # noqa: F811
        """Task retries are unbounded (so that a lost node does not use them up), the restarts are not:
        a video that kills its actor more than --max-retries times ends as WorkerDied, the run goes on."""
        manifest = _long_first_manifest(tmp_path, long_frames=200, n_short=3)
        out = tmp_path / "out"
        driver = Driver(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                         "--actors", "2", "--max-retries", "1", "--ray-address", cluster.address, *FAST],
                        cluster.env, tmp_path / "driver.log")
        killed = set()
        try:
            deadline = time.monotonic() + 900
            while driver.proc.poll() is None and time.monotonic() < deadline:  # every attempt of 'long' killed
                for a in _attempts(out, "long"):
                    if a["attempt"] not in killed:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(a["pid"], signal.SIGKILL)
                        killed.add(a["attempt"])
                time.sleep(0.05)
            assert driver.wait(timeout=30) == 0, driver.text()
        finally:
            if driver.proc.poll() is None:
                driver.kill()
        videos = assert_exactly_once(str(out), {f"short{i}" for i in range(3)})
        assert videos["long"]["status"] == "failed" and videos["long"]["error_type"] == "WorkerDied"
        assert len(_attempts(out, "long")) == len(killed) >= 2  # --max-retries 1: two tries at least, all killed

    def test_driver_killed_and_restarted_against_the_cluster(self, cluster, compact_ckpt, tmp_path):  # noqa: F811
        manifest = tiny_corpus(tmp_path / "corpus", n=8, frames=12)
        out = tmp_path / "out"
        args = ["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt), "--actors", "2",
                "--ray-address", cluster.address, "--run-id", "restart-me", *FAST]
        driver = Driver(args, cluster.env, tmp_path / "driver1.log")
        try:
            wait_for(lambda: len(list((out / "videos").glob("shard=*/*.parquet"))) >= 2, timeout=600, interval=0.05,
                     what="two committed videos")
        finally:
            driver.kill()  # kill -9: no clean-up of any kind
        # The cluster ends the dead driver's actors (its job is gone): nothing of it writes any more.
        pids = {a["pid"] for f in out.glob("_attempts/*/*.json") for a in [json.loads(f.read_text())]}
        wait_for(lambda: all(reaper._zombie(p) for p in pids), timeout=60, interval=0.2,
                 what="the killed driver's actors to end")
        before = {v["video_id"]: v["attempt"] for v in read_table(str(out), "videos").to_pylist()}
        assert 2 <= len(before) < 8
        again = Driver(args, cluster.env, tmp_path / "driver2.log")
        assert again.wait(timeout=600) == 0, again.text()
        text = again.text()
        assert "run restart-me (resumed)" in text and f"{len(before)} skipped" in text, text
        videos = assert_exactly_once(str(out), {f"vid{i:02d}" for i in range(8)})
        for vid, attempt in before.items():
            assert videos[vid]["attempt"] == attempt  # committed before the kill: not redone
        assert sum(v["attempts"] for v in videos.values()) <= 8 + 2  # at most the two in flight ran twice


# -- autoscaling: Ray's autoscaler (v2, as in cluster/*.yaml) with its fake multi-node provider ----------------------

#: Prints the cluster's alive worker nodes (all but the head) as a JSON line every 0.25 s, a Ray driver of its own.
_SAMPLER = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
while True:
    alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    print(json.dumps({"t": time.time(), "workers": sorted(n["NodeID"] for n in alive)}), flush=True)
    time.sleep(0.25)
"""


def _collect(lines, samples: list) -> None:
    for line in lines:
        with contextlib.suppress(ValueError):  # a line cut short when the sampler is killed
            samples.append(json.loads(line))


def _autoscaling_config(gcs_address: str, max_workers: int) -> dict:
    """The fake multi-node provider's config (as the example.yaml Ray tests with, which its wheel does not ship):
    a head that runs no model work and 1-CPU worker nodes scaling 1..max_workers, idle ones removed after 6 s."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    return {
        "cluster_name": "vos-fake", "max_workers": max_workers, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        # "external" with the fake provider's class: type "fake_multinode" reads its defaults from that example.yaml
        "provider": {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider."
                                                   "FakeMultiNodeProvider", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID,
                     "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {"resources": {"CPU": 1, "object_store_memory": 200 * 2**20}, "node_config": {},
                           "min_workers": 1, "max_workers": max_workers}},
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                           "head_start_ray_commands", "worker_start_ray_commands")}}


def test_autoscaler_adds_nodes_while_videos_wait_and_removes_them(compact_ckpt, tmp_path, tmp_path_factory):  # noqa: F811
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    max_workers, n_videos = 3, 8
    c = LocalCluster(tmp_path, _env(tmp_path_factory))
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(_autoscaling_config(c.address, max_workers)))
    # What AutoscalingCluster.start sets (it also runs `ray stop --force`, which would end every Ray here).
    fake = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}
    samples, sampler, driver = [], None, None
    try:
        c.start_head("--num-cpus=0", f"--autoscaling-config={config}", env=fake)
        with open(tmp_path / "sampler.log", "wb") as err:
            sampler = subprocess.Popen([sys.executable, "-c", _SAMPLER, c.address], env=c.env, stdout=subprocess.PIPE,
                                       stderr=err, text=True, start_new_session=True)
        threading.Thread(target=_collect, args=(sampler.stdout, samples), daemon=True).start()
        wait_for(lambda: samples and len(samples[-1]["workers"]) == 1, timeout=300, interval=0.2,
                 what="the first worker node (min_workers 1)")
        manifest = tiny_corpus(tmp_path / "corpus", n=n_videos, frames=100)
        out = tmp_path / "out"
        started = time.time()
        driver = Driver(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                         "--actors", "1:4", "--ray-address", c.address, *FAST], c.env, tmp_path / "driver.log")
        assert driver.wait(timeout=900) == 0, driver.text()
        finished = time.time()
        wait_for(lambda: samples[-1]["t"] > finished and len(samples[-1]["workers"]) == 1, timeout=300,
                 interval=0.5, what="the idle worker nodes to be removed (down to min_workers 1)")
    finally:
        if driver is not None and driver.proc.poll() is None:
            driver.kill()
        if sampler is not None:
            os.killpg(sampler.pid, signal.SIGKILL)
            sampler.wait(timeout=30)
        c.stop()
    text = driver.text()
    assert f"{n_videos} ok, 0 failed" in text and "actors: 1..4" in text, text
    videos = assert_exactly_once(str(out), {f"vid{i:02d}" for i in range(n_videos)})
    during = [s for s in samples if started <= s["t"] <= finished]
    counts = [len(s["workers"]) for s in during]
    peak = max(counts)
    assert 2 <= peak <= max_workers, counts  # nodes were added while videos waited, never past max_workers
    nodes_used = {a["node_id"] for f in out.glob("_attempts/*/*.json") for a in [json.loads(f.read_text())]}
    # Videos ran on worker nodes only. Whether an added node gets a video before the first actor has done them
    # all is timing (on a quiet machine it may not: seen in CI); the node counts above are what the issue asks.
    assert nodes_used and nodes_used <= {n for s in samples for n in s["workers"]}
