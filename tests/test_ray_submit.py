"""The job as users run it on a cluster: a real `ray start --head` (token authentication) and
`ray job submit --working-dir <repo> -- python -m jobs.pseudo_label ...` on the default (sample)
manifest, then its outputs checked after the cluster is gone: the videos it records must still be
there (Ray's copy of the working dir is temporary), and no alarming Ray line was printed.

The cluster is stopped by ending exactly the processes it consists of (its `ray start --block`
process group, then any process still running under its private --temp-dir), not with
`ray stop --force`, which would kill every Ray on the machine, other people's included."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from job_helpers import (ROOT, SAMPLE, assert_exactly_once, assert_same_masks, compact_ckpt,  # noqa: F401
                         free_port, job_masks, ray_cli, reference_masks, session_token_env, stop_cluster, wait_for)
from jobs.label.manifest import load_manifest

pytestmark = pytest.mark.slow

#: What `--working-dir` must not upload (Ray also honours .gitignore and .rayignore).
EXCLUDES = [".git", ".venv*", "third_party", "vos_output", "outputs", "runs", ".pytest_cache", "*.egg-info",
            ".benchmarks"]


def _dashboard_up(port: int, token: str) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/version",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def test_ray_job_submit(compact_ckpt, tmp_path, tmp_path_factory):  # noqa: F811
    ray = ray_cli()
    auth = session_token_env(tmp_path_factory)
    env = {**os.environ, **auth}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="vosray", dir="/tmp")  # short: Ray's unix sockets live under it
    log = open(tmp_path / "ray_start.log", "wb")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--port={gcs_port}", f"--dashboard-port={dash_port}", "--num-cpus=2", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = tmp_path / "out"
    try:
        token = open(auth["RAY_AUTH_TOKEN_PATH"]).read().strip()
        wait_for(lambda: head.poll() is not None or _dashboard_up(dash_port, token), timeout=120, interval=0.5,
                 what="the Ray dashboard")
        assert head.poll() is None, (tmp_path / "ray_start.log").read_text()
        cmd = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dash_port}", "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
               "python", "-m", "jobs.pseudo_label", "--output", str(out),
               "--checkpoint", str(compact_ckpt), "--actors", "1:2", "--size", "48", "--budget", "20000",
               "--run-id", "submitted", "--fail-on-error"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
        text = r.stdout + r.stderr
        assert r.returncode == 0, text
        assert "succeeded" in text, text
        assert "run submitted: 3 ok, 0 failed" in text  # the driver's summary, streamed back by `ray job submit`
        assert "constructor arguments in the object store" not in text  # Ray Data's harmless warning: filtered
        assert "_ray_pkg_" in text  # the driver did run from Ray's temporary package (so the copy below matters)
        # the same token is what let the client in: without it the dashboard refuses the request
        no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
        no_token["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "missing_token")
        denied = subprocess.run([ray, "job", "list", "--address", f"http://127.0.0.1:{dash_port}"], env=no_token,
                                capture_output=True, text=True, timeout=120)
        assert denied.returncode != 0
    finally:
        try:
            stop_cluster(head, temp_dir)
        finally:
            log.close()
            shutil.rmtree(temp_dir, ignore_errors=True)
    videos = assert_exactly_once(str(out), {"judo-a", "judo-b", "judo-mp4"})
    for v in videos.values():  # recorded inside the output (the sample corpus copied there), still there
        assert v["video_uri"].startswith(str(out / "_sample_corpus")) and os.path.exists(v["video_uri"]), v
    t = load_manifest(str(SAMPLE / "manifest.csv"))[1]
    assert_same_masks(job_masks(str(out), t.video_id), reference_masks(compact_ckpt, t.video_uri, t.annotations_uri))
    render = subprocess.run([sys.executable, "-m", "jobs.render", "--output", str(out), "--video", "judo-b", "--to",
                             str(tmp_path / "judo-b") + "/"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert render.returncode == 0 and "wrote 11 frame(s)" in render.stdout, render.stderr
