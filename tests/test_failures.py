"""Failures: bad videos and masks get a failed row and the job goes on; unsafe ids stay inside the
output; an actor killed mid-video is retried and its rows land once; a killed driver resumes."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from jobs import pseudo_label
from job_helpers import (FAST, ROOT, assert_exactly_once, assert_same_masks, compact_ckpt,  # noqa: F401
                         job_masks, ray_runtime, read_table, reference_masks, session_token_env, tiny_corpus,
                         wait_for, write_mask, write_video_folder)

pytestmark = pytest.mark.slow


def _files(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def test_bad_inputs_fail_alone_and_unsafe_ids_stay_inside(ray_runtime, compact_ckpt, tmp_path, capsys):
    data = tmp_path / "data"
    frames = write_video_folder(data / "frames", 3)
    good = write_mask(data / "good.png")
    (data / "corrupt.mp4").write_bytes(os.urandom(4096))
    write_mask(data / "small.png", h=10, w=10)
    write_mask(data / "empty.png", box=(0, 0, 0, 0))
    rows = [
        ("../escape", frames, good), ("a/b", frames, good), ("ok", frames, good),
        ("corrupt", data / "corrupt.mp4", good),
        ("missing-video", data / "nope.mp4", good),
        ("missing-mask", frames, data / "nope.png"),
        ("mis-sized", frames, data / "small.png"),
        ("empty-mask", frames, data / "empty.png"),
    ]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "video_uri", "annotations_uri"])
        w.writerows(rows)
    out = tmp_path / "deep" / "out"
    before = _files(tmp_path)
    rc = pseudo_label.main(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                            "--actors", "2", *FAST])
    text = capsys.readouterr().out
    assert rc == 0, text  # failures do not fail the job unless asked
    assert "3 ok, 5 failed" in text
    videos = assert_exactly_once(str(out), {"../escape", "a/b", "ok"})
    reasons = {v: (r["error_type"], r["error"]) for v, r in videos.items() if r["status"] == "failed"}
    assert reasons["corrupt"][0] == "VideoReadError" and "corrupt.mp4" in reasons["corrupt"][1]
    assert reasons["missing-video"][0] == "VideoReadError" and "nope.mp4" in reasons["missing-video"][1]
    assert reasons["missing-mask"][0] == "AnnotationError" and "nope.png" in reasons["missing-mask"][1]
    assert reasons["mis-sized"][0] == "AnnotationError" and "10x10" in reasons["mis-sized"][1]
    assert reasons["empty-mask"][0] == "AnnotationError" and "empty" in reasons["empty-mask"][1]
    # every new file is under the output; the unsafe ids are kept verbatim in the rows
    assert all(p.startswith(str(out) + os.sep) for p in _files(tmp_path) - before)
    assert {m["video_id"] for m in read_table(str(out), "masks").to_pylist()} == {"../escape", "a/b", "ok"}
    assert_same_masks(job_masks(str(out), "../escape"), reference_masks(compact_ckpt, str(frames), {0: _ids(good)}))
    # --fail-on-error: the exit status says a video failed (rerunning the failed ones)
    rc = pseudo_label.main(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                            "--retry-failed", "--fail-on-error", "--actors", "2", *FAST])
    assert rc == 1
    assert "5 video(s) to process, 3 skipped" in capsys.readouterr().out
    assert_exactly_once(str(out), {"../escape", "a/b", "ok"})


def _ids(png):
    from vos_core.io import read_id_map
    return read_id_map(png)


def test_empty_video_id_is_refused_before_anything_runs(compact_ckpt, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video_id": "a", "video_uri": "x", "annotations_uri": "y"}) + "\n"
                        + json.dumps({"video_id": "", "video_uri": "x", "annotations_uri": "y"}) + "\n")
    rc = pseudo_label.main(["--manifest", str(manifest), "--output", str(tmp_path / "out"),
                            "--checkpoint", str(compact_ckpt), *FAST])
    assert rc == 2
    assert "row 2: empty video_id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_actor_killed_mid_video_is_retried_once(ray_runtime, compact_ckpt, tmp_path, capsys):
    long_video = write_video_folder(tmp_path / "long", 150)
    short = write_video_folder(tmp_path / "short", 4, seed=1)
    mask = write_mask(tmp_path / "mask.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video_id": v, "video_uri": str(p), "annotations_uri": str(mask)}) + "\n"
                                for v, p in (("long", long_video), ("short", short))))
    out = tmp_path / "out"
    result = {}
    job = threading.Thread(target=lambda: result.setdefault("rc", pseudo_label.main(
        ["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt), "--actors", "2",
         *FAST])))
    job.start()
    attempts_dir = out / "_attempts"

    def first_attempt():
        for d in attempts_dir.glob("long-*"):
            for f in d.glob("*.json"):
                return json.loads(f.read_text())

    marker = wait_for(first_attempt, timeout=120, interval=0.02, what="the long video to start")
    os.kill(marker["pid"], signal.SIGKILL)  # the actor process, in the middle of the video
    job.join(timeout=300)
    assert not job.is_alive() and result["rc"] == 0
    videos = assert_exactly_once(str(out), {"long", "short"})
    assert videos["long"]["attempts"] == 2 and videos["long"]["attempt"] != marker["attempt"]
    assert videos["long"]["frames"] == 150
    assert_same_masks(job_masks(str(out), "long"), reference_masks(compact_ckpt, str(long_video), {0: _ids(mask)}))
    assert "[attempt 2]" in capsys.readouterr().out


def test_driver_killed_then_resumed(ray_runtime, compact_ckpt, tmp_path, tmp_path_factory, capsys):
    manifest = tiny_corpus(tmp_path / "corpus", n=8, frames=12)
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt), "--actors", "1",
            "--run-id", "resume-me", *FAST]
    env = {**os.environ, **session_token_env(tmp_path_factory)}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-m", "jobs.pseudo_label", *args, "--num-cpus", "1"], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: len(list((out / "videos").glob("shard=*/*.parquet"))) >= 2, timeout=180, interval=0.1,
                 what="two committed videos")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started (its own session)
        driver.wait(timeout=30)
    before = {v["video_id"]: v["attempt"] for v in read_table(str(out), "videos").to_pylist()}
    assert 2 <= len(before) < 8
    capsys.readouterr()
    assert pseudo_label.main(args) == 0  # the same command: resumes
    text = capsys.readouterr().out
    assert "(resumed)" in text and "skipped" in text
    videos = assert_exactly_once(str(out), {f"vid{i:02d}" for i in range(8)})
    for vid, attempt in before.items():
        assert videos[vid]["attempt"] == attempt  # committed before the kill: not redone
    assert sum(1 for v in videos.values() if v["attempts"] == 1) >= 7  # at most the in-flight one ran twice
