"""Failures: bad videos and masks get a failed row and the job goes on; unsafe ids stay inside the
output; an actor killed mid-video is retried and its rows land once; a killed driver resumes, and
its local Ray (on 127.0.0.1 only) goes with it; bad options, outputs and manifests are one line and
exit 2 before anything is written; a video whose outcome cannot be recorded (read-only or full
output) makes the run say so and exit 3, and the rerun finishes it; Ray clusters that cannot be
joined are one line; folders of symbolic links are read. docs/failure-modes.md lists them all."""
import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

from jobs import pseudo_label
from job_helpers import (FAST, ROOT, SAMPLE, assert_exactly_once, assert_same_masks, compact_ckpt,  # noqa: F401
                         free_port, job_masks, ray_cli, ray_runtime, read_table, reference_masks, session_token_env,
                         tiny_corpus, wait_for, write_mask, write_video_folder)

slow = pytest.mark.slow


def _files(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@slow
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


@slow
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


@slow
def test_a_video_that_keeps_killing_its_actor_fails_alone_among_videos_batched_with_it(ray_runtime, compact_ckpt,
                                                                                    tmp_path, capsys):
    """--videos-per-task 3: one Ray task holds s0, long, s1. The long video kills its actor on each of its
    --max-retries 1 + 1 tries, so the task never returns: s0 (committed before the first kill) and s1
    (never started) are run again one per task, s0 handing back its record, and only the long one fails."""
    mask = write_mask(tmp_path / "mask.png")
    rows = [("s0", write_video_folder(tmp_path / "s0", 2)), ("long", write_video_folder(tmp_path / "long", 200)),
            *((f"s{i}", write_video_folder(tmp_path / f"s{i}", 2, seed=i)) for i in range(1, 23))]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video_id": v, "video_uri": str(p), "annotations_uri": str(mask)}) + "\n"
                                for v, p in rows))
    out = tmp_path / "out"
    result = {}
    job = threading.Thread(target=lambda: result.setdefault("rc", pseudo_label.main(
        ["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt), "--actors", "2",
         "--videos-per-task", "3", "--max-retries", "1", *FAST])))
    job.start()

    def attempts(vid):
        return [json.loads(f.read_text()) for d in (out / "_attempts").glob(f"{vid}-*") for f in d.glob("*.json")]

    killed = set()
    for n in (1, 2):  # the first try and its one retry
        marker = wait_for(lambda: [a for a in attempts("long") if a["attempt"] not in killed], timeout=300,
                          interval=0.02, what=f"try {n} of the long video")[0]
        os.kill(marker["pid"], signal.SIGKILL)
        killed.add(marker["attempt"])
    job.join(timeout=600)
    assert not job.is_alive() and result["rc"] == 0
    shorts = {v for v, _ in rows if v != "long"}
    videos = assert_exactly_once(str(out), shorts)
    assert videos["long"]["status"] == "failed" and videos["long"]["error_type"] == "WorkerDied"
    assert len(attempts("long")) == 2
    assert all(videos[v]["attempts"] == 1 and len(attempts(v)) == 1 for v in shorts)  # none of them redone
    text = capsys.readouterr().out
    assert "running them again one per task" in text and "23 ok, 1 failed" in text


@slow
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


# -- helpers: outputs that cannot be written -------------------------------------------------------

def _run(*cmd) -> bool:
    return subprocess.run(list(cmd), capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(path):
    """``path`` read-only for everyone, root included: a read-only bind mount over it when this
    process may mount (root), else its folders chmod'ed to r-x (enough for an ordinary user)."""
    path = str(path)
    if os.geteuid() == 0:
        if not (_run("mount", "--bind", path, path) and _run("mount", "-o", "remount,bind,ro", path)):
            _run("umount", path)
            pytest.skip("root, but cannot mount here: no way to make a folder read-only for root")
        try:
            yield
        finally:
            _run("umount", "-l", path)
        return
    dirs = [d for d, _, _ in os.walk(path)]
    for d in dirs:
        os.chmod(d, 0o555)
    try:
        yield
    finally:
        for d in dirs:
            os.chmod(d, 0o755)


@contextlib.contextmanager
def make_read_only(path):
    """``read_only`` entered on demand: ``ro = make_read_only(p)`` ... ``ro.__enter__()``; undone at the end."""
    cm = read_only(path)
    try:
        yield cm
    finally:
        with contextlib.suppress(Exception):
            cm.__exit__(None, None, None)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 4 MiB tmpfs (a disk that fills up with real ENOSPC); skips where mounting is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or not _run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)):
        pytest.skip("cannot mount a tmpfs here (needs root); test_unrecorded_outcome_when_the_disk_is_full_injected "
                    "covers ENOSPC without it")
    try:
        yield mnt
    finally:
        _run("umount", "-l", str(mnt))


def _fill(folder) -> None:
    """Fills the file system of ``folder`` to the last byte."""
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as f:  # unbuffered: close() has nothing left
        for chunk in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    with pytest.raises(OSError, match="No space left"):
        with open(os.path.join(folder, "probe"), "wb", buffering=0) as f:
            f.write(b"x")


def _one_line_error(err: str, prefix: str = "pseudo-label: error: ") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(prefix) or lines[0].startswith("python -m jobs.pseudo_label: error: "), err
    return lines[0]


# -- options, outputs, manifests: refused before Ray starts and before anything is written --------------

@pytest.fixture
def no_ray(monkeypatch):
    from jobs.label import pool

    def refuse(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(pool, "ray_session", refuse)


@pytest.mark.parametrize("argv, words", [
    (["--actors", "abc"], ["--actors", "expected N, MIN:MAX or auto", "'abc'"]),
    (["--actors", "0"], ["--actors", "need 1 <= min <= max"]),
    (["--actors", "2:1"], ["need 1 <= min <= max"]),
    (["--storage-options", "notjson"], ["--storage-options is not JSON"]),
    (["--storage-options", "[1, 2]"], ["--storage-options must be a JSON object"]),
    (["--shards", "0"], ["--shards 0 is out of range"]),
    (["--size", "-5"], ["size must be a positive number", "-5"]),
    (["--budget", "0"], ["budget must be a positive integer"]),
    (["--max-retries", "-1"], ["--max-retries -1 is out of range"]),
    (["--num-cpus", "0"], ["--num-cpus 0 is out of range"]),
    (["--cpus-per-actor", "nan"], ["--cpus-per-actor nan is out of range"]),
    (["--prefetch", "0"], ["--prefetch 0 is out of range"]),
    (["--shards", "two"], ["--shards", "invalid int value"]),
])
def test_bad_options_are_one_line_before_anything_runs(argv, words, compact_ckpt, tmp_path, capsys, no_ray):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        pseudo_label.main(["--output", str(out), "--checkpoint", str(compact_ckpt), *argv])
    assert e.value.code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert all(w in line for w in words), line
    assert not out.exists()


def test_bad_outputs_are_one_line_before_anything_is_written(compact_ckpt, tmp_path, capsys, no_ray, monkeypatch):
    manifest = tiny_corpus(tmp_path / "corpus", n=1, frames=2)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    cases = [("foo://x", ["--output foo://x: not a usable location", "Protocol not known: foo"]),
             (str(a_file), ["is a file, not a folder"]),
             (str(a_file / "below"), [f"{a_file} is a file, not a folder"])]
    for output, words in cases:
        assert pseudo_label.main(["--manifest", str(manifest), "--output", output, "--checkpoint",
                                  str(compact_ckpt)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert all(w in line for w in words), line
    assert a_file.read_text() == "x"
    with read_only(locked):
        for output in (locked, locked / "run1"):
            assert pseudo_label.main(["--manifest", str(manifest), "--output", str(output), "--checkpoint",
                                      str(compact_ckpt)]) == 2
            line = _one_line_error(capsys.readouterr().err)
            assert f"{locked} is not writable (a read-only folder or file system)" in line, line
    assert os.listdir(locked) == []
    # --num-cpus sizes a local Ray: with a cluster to join it is refused, before anything is written
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    out = tmp_path / "out"
    assert pseudo_label.main(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                              "--num-cpus", "2"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--num-cpus 2 sizes the local Ray" in line and "127.0.0.1:1 ($RAY_ADDRESS)" in line, line
    assert not out.exists()


def test_option_errors_are_one_line_from_the_command_line():
    r = subprocess.run([sys.executable, "-m", "jobs.pseudo_label", "--actors", "abc"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and not r.stdout
    assert "expected N, MIN:MAX or auto" in _one_line_error(r.stderr)


@pytest.mark.parametrize("value, words", [(2147483648, ["start_frame must be a frame index 0..2147483647"]),
                                          (True, ["start_frame", "True"])])
def test_start_frames_the_output_cannot_hold_stop_the_job(value, words, compact_ckpt, tmp_path, capsys, no_ray):
    """2147483648 passed the check and then overflowed the int32 column: the video got no row and the run
    exited 0. Now the manifest is refused, naming the row."""
    frames, mask = write_video_folder(tmp_path / "frames", 2), write_mask(tmp_path / "mask.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video_id": "v", "video_uri": str(frames), "annotations_uri": str(mask),
                                    "start_frame": value}) + "\n")
    out = tmp_path / "out"
    assert pseudo_label.main(["--manifest", str(manifest), "--output", str(out), "--checkpoint",
                              str(compact_ckpt)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "row 1:" in line and all(w in line for w in words), line
    assert not out.exists()


def test_vos_segment_refuses_outputs_it_cannot_write(compact_ckpt, tmp_path, capsys):
    from vos_core import cli

    frames, mask = write_video_folder(tmp_path / "frames", 2), write_mask(tmp_path / "mask.png")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()

    def segment(output):
        rc = cli.main(["segment", "--checkpoint", str(compact_ckpt), "--frames", str(frames), "--annotations",
                       str(mask), "--output", str(output), "--no-progress"])
        return rc, _one_line_error(capsys.readouterr().err, "vos segment: error: ")

    assert segment(a_file) == (2, f"vos segment: error: --output {a_file}: is a file, not a folder")
    assert "cannot create the folder" in segment(a_file / "x")[1]
    with read_only(locked):
        rc, line = segment(locked)
        assert rc == 2 and "is not writable (a read-only folder or file system)" in line, line
        rc, line = segment(locked / "new")
        assert rc == 2 and "cannot create the folder" in line, line
    assert a_file.read_text() == "x" and os.listdir(locked) == []


# -- symbolic links ----------------------------------------------------------------------------

def test_folders_of_symbolic_links_are_read(tmp_path, capsys):
    """`vos eval` of a results folder assembled from links ("no sequence folders" before), frames and
    masks that are links, and vos_train's DAVIS index over linked sequences."""
    from vos_core import cli
    from vos_core.io import load_annotations, open_frames
    from vos_train.data import DavisIndex

    davis = SAMPLE / "davis"
    results = tmp_path / "results"
    results.mkdir()
    for seq in ("judo-a", "judo-b"):  # the ground truth itself, linked in: a perfect score
        (results / seq).symlink_to(davis / "Annotations" / seq, target_is_directory=True)
    assert cli.main(["eval", "--results", str(results), "--annotations", str(davis / "Annotations"),
                     "--output", str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores["sequences"]) == {"judo-a", "judo-b"} and scores["J_mean"] == pytest.approx(1.0)
    linked = tmp_path / "frames"
    linked.mkdir()
    originals = sorted((davis / "JPEGImages" / "judo-a").iterdir())
    for f in originals:
        (linked / f.name).symlink_to(f)
    (linked / "99999.jpg").symlink_to(tmp_path / "gone.jpg")  # a dangling link is no frame
    assert open_frames(str(linked)).names == [f.stem for f in originals]
    masks = tmp_path / "masks"
    masks.mkdir()
    for f in sorted((davis / "Annotations" / "judo-a").iterdir()):
        (masks / f.name).symlink_to(f)
    names = [f.stem for f in originals]
    want = sorted(load_annotations(str(davis / "Annotations" / "judo-a"), frame_names=names))
    assert sorted(load_annotations(str(masks), frame_names=names)) == want and want
    root = tmp_path / "davis"
    for sub in ("JPEGImages", "Annotations"):
        (root / sub).mkdir(parents=True)
        (root / sub / "judo-b").symlink_to(davis / sub / "judo-b", target_is_directory=True)
    assert list(DavisIndex(str(root)).frames) == ["judo-b"]


# -- outcomes that cannot be recorded ------------------------------------------------------------

def _long_first_corpus(root, n_short=2):
    mask = write_mask(root / "mask.png")
    rows = [("long", write_video_folder(root / "long", 150))]
    rows += [(f"short{i}", write_video_folder(root / f"short{i}", 4, seed=i + 1)) for i in range(n_short)]
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video_id": v, "video_uri": str(p), "annotations_uri": str(mask)}) + "\n"
                                for v, p in rows))
    return manifest, {v for v, _ in rows}


def _job_in_thread(args):
    result = {}
    job = threading.Thread(target=lambda: result.setdefault("rc", pseudo_label.main(args)))
    job.start()
    return job, result


def _incomplete(text: str, out) -> set[str]:
    """The videos the run says it could not record (its 'run incomplete' line)."""
    line = next(ln for ln in text.splitlines() if ln.startswith("run incomplete: "))
    assert f"their outcome could not be written to {out}" in line and "rerun the same command" in line, line
    return {v.strip(" '") for v in line.rsplit(": ", 1)[1].split(",")}


@slow
def test_unrecorded_outcome_when_the_output_turns_read_only(ray_runtime, compact_ckpt, tmp_path, capsys):
    manifest, ids = _long_first_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    out.mkdir()
    args = ["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt), "--actors", "1",
            *FAST]
    with make_read_only(out) as ro:
        job, result = _job_in_thread(args)
        wait_for(lambda: list(out.glob("_attempts/long-*/*.json")), timeout=180, interval=0.02,
                 what="the long video to start")
        ro.__enter__()  # the output turns read-only in the middle of the long video
        job.join(timeout=600)
        assert not job.is_alive()
        text = capsys.readouterr().out
        assert result["rc"] == 3, text
        missing = _incomplete(text, out)
        assert "long" in missing and missing <= ids
        recorded = {v["video_id"] for v in read_table(str(out), "videos").to_pylist()} \
            if (out / "videos").exists() else set()
        assert recorded | missing == ids and not recorded & missing
        ro.__exit__(None, None, None)
    assert pseudo_label.main(args) == 0  # writable again: the rerun finishes the run
    assert_exactly_once(str(out), ids)
    assert not (out / "_staging").exists() or not list((out / "_staging").iterdir())


@slow
def test_unrecorded_outcome_when_the_disk_is_full(ray_runtime, compact_ckpt, tmp_path, tiny_tmpfs, capsys):
    manifest, ids = _long_first_corpus(tmp_path / "corpus")
    out = tiny_tmpfs / "out"
    args = ["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt), "--actors", "1",
            *FAST]
    job, result = _job_in_thread(args)
    wait_for(lambda: list(out.glob("_attempts/long-*/*.json")), timeout=180, interval=0.02,
             what="the long video to start")
    _fill(tiny_tmpfs)  # [Errno 28] No space left on device, for real, from here on
    job.join(timeout=600)
    assert not job.is_alive()
    text = capsys.readouterr().out
    assert result["rc"] == 3, text
    assert "No space left on device" in text and "long" in _incomplete(text, out)
    os.remove(tiny_tmpfs / "filler")
    assert pseudo_label.main(args) == 0
    assert_exactly_once(str(out), ids)


def test_unrecorded_outcome_when_the_disk_is_full_injected(compact_ckpt, tmp_path, monkeypatch):
    """The worker side without a tmpfs: every write fails with ENOSPC, so the video's failure record
    cannot be written either; process_video says so (committed False) instead of raising."""
    from jobs import storage as st
    from jobs.label import worker
    from jobs.label.manifest import VideoTask
    from vos_core import Segmenter, SegmenterConfig, load_model

    frames, mask = write_video_folder(tmp_path / "frames", 3), write_mask(tmp_path / "mask.png")
    config = worker.WorkerConfig(checkpoint=str(compact_ckpt), model_checksum="sha256:x", output=str(tmp_path / "out"),
                                 shards=4, run_id="r", settings={"size": 48, "budget": 20000})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "put_atomic", full)
    monkeypatch.setattr(st.AtomicFile, "__init__", full)
    seg = Segmenter(load_model(str(compact_ckpt)), SegmenterConfig(size=48, budget=20000, keep_probs=False))
    r = worker.process_video(VideoTask("v", str(frames), str(mask)), seg, config)
    assert r["committed"] is False and r["status"] == "failed"
    assert "its failure record could not be written" in r["error"] and "No space left on device" in r["error"]


# -- Ray -----------------------------------------------------------------------------------------

def _listening_sockets(pids) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state the processes ``pids`` hold (Linux /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    found.append(_address(cols[1].split(":")[0], v6))
    return found


def _address(hex_ip: str, v6: bool) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_ip)
    if not v6:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # /proc prints each 32-bit word little-endian
    ip = ipaddress.IPv6Address(words)
    return str(ip.ipv4_mapped or ip)


@slow
def test_local_ray_listens_on_loopback_and_dies_with_its_killed_driver(compact_ckpt, tmp_path, tmp_path_factory):
    from jobs.label import reaper

    manifest, ids = _long_first_corpus(tmp_path / "corpus", n_short=1)
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt), "--actors", "1",
            "--num-cpus", "1", *FAST]
    env = {**os.environ, **session_token_env(tmp_path_factory)}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-m", "jobs.pseudo_label", *args], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: list(out.glob("_attempts/long-*/*.json")), timeout=240, interval=0.05,
                 what="the long video to start")
        ray_procs = {p: s for p, s in reaper.descendants([driver.pid], reaper._processes()).items()
                     if p != driver.pid}
        names = set()
        for pid in ray_procs:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                names.add(f.read().split(b"\0")[0].decode(errors="replace"))
        assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names), names
        assert any("Agent" in n for n in names), names  # the dashboard / runtime-env agents that stayed behind
        listening = _listening_sockets([driver.pid, *ray_procs])
        assert listening and all(a in ("127.0.0.1", "::1") for a in listening), listening
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: not its process group
        driver.wait(timeout=30)
    left = lambda: {p: s for p, s in reaper._still(ray_procs).items() if not reaper._zombie(p)}  # noqa: E731
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not left(), timeout=30, interval=0.5, what="the local Ray to go")
    assert not left(), f"processes of the killed driver's Ray still running: {left()}"
    # the rerun takes the run's lease at once (the kernel dropped the killed driver's lock) and finishes
    r = subprocess.run([sys.executable, "-m", "jobs.pseudo_label", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "(resumed)" in r.stdout, r.stdout + r.stderr
    assert_exactly_once(str(out), ids)


@slow
def test_joining_a_token_cluster_without_the_token_is_one_line(compact_ckpt, tmp_path, tmp_path_factory):
    from job_helpers import stop_cluster

    auth = session_token_env(tmp_path_factory)
    env = {**os.environ, **auth}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="vosauth", dir="/tmp")
    log = open(tmp_path / "ray_start.log", "wb")
    head = subprocess.Popen([ray_cli(), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             "--include-dashboard=false", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp_dir}",
                             "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: head.poll() is not None or "Ray runtime started" in (tmp_path / "ray_start.log").read_text(),
                 timeout=180, interval=0.5, what="ray start")
        assert head.poll() is None, (tmp_path / "ray_start.log").read_text()
        no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        no_token["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no_token_here")
        manifest = tiny_corpus(tmp_path / "corpus", n=1, frames=2)
        r = subprocess.run([sys.executable, "-m", "jobs.pseudo_label", "--manifest", str(manifest), "--output",
                            str(tmp_path / "out"), "--checkpoint", str(compact_ckpt), "--ray-address",
                            f"127.0.0.1:{port}", *FAST], cwd=ROOT, env=no_token, capture_output=True, text=True,
                           timeout=300)
    finally:
        try:
            stop_cluster(head, temp_dir)
        finally:
            log.close()
            shutil.rmtree(temp_dir, ignore_errors=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Failed to get cluster ID" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pseudo-label: error: the Ray cluster at 127.0.0.1:") and "RAY_AUTH_MODE=token" in last
    assert "RAY_AUTH_TOKEN_PATH=" in last


# -- small objects at a reduced working size ----------------------------------------------------------

@slow
def test_small_objects_survive_a_reduced_working_size_in_the_job(ray_runtime, compact_ckpt, tmp_path, capsys):
    """A 2x2 object in a 144x256 video at --size 48 (1/3 scale): kept and tracked, not 'first annotation is
    empty' nor dropped (vos_core keeps every annotated object, tests/test_segmenter.py)."""
    frames = write_video_folder(tmp_path / "frames", 4, h=144, w=256)
    only_tiny = write_mask(tmp_path / "tiny.png", h=144, w=256, box=(70, 72, 100, 102), oid=3)
    both = np.zeros((144, 256), np.uint8)
    both[30:90, 40:120] = 1
    both[70:72, 180:182] = 2
    from PIL import Image
    Image.fromarray(both, mode="L").save(tmp_path / "both.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video_id": v, "video_uri": str(frames), "annotations_uri": str(a)}) + "\n"
                                for v, a in (("tiny", only_tiny), ("both", tmp_path / "both.png"))))
    out = tmp_path / "out"
    assert pseudo_label.main(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                              "--actors", "1", *FAST]) == 0, capsys.readouterr().out
    videos = assert_exactly_once(str(out), {"tiny", "both"})
    assert videos["tiny"]["objects"] == 1 and videos["both"]["objects"] == 2
    masks = read_table(str(out), "masks").to_pylist()
    first = {(m["video_id"], m["object_id"]): m["area"] for m in masks if m["frame_index"] == 0}
    assert first[("tiny", 3)] > 0 and first[("both", 2)] > 0 and first[("both", 1)] > 1000, first
    assert {(m["video_id"], m["object_id"]) for m in masks} == {("tiny", 3), ("both", 1), ("both", 2)}
    assert len(masks) == 4 * 3  # every object has a row in every frame


def test_start_frames_the_video_does_not_reach_fail_that_video(compact_ckpt, tmp_path):
    """Without Ray (the worker's process_video): a start_frame past the video's end, and one where the
    annotation folder has no mask, give that video a failed record naming why."""
    from jobs.label import worker
    from jobs.label.manifest import VideoTask
    from vos_core import Segmenter, SegmenterConfig, load_model

    frames, mask = write_video_folder(tmp_path / "frames", 3), write_mask(tmp_path / "masks" / "00000.png")
    out = tmp_path / "out"
    config = worker.WorkerConfig(checkpoint=str(compact_ckpt), model_checksum="sha256:x", output=str(out), shards=4,
                                 run_id="r", settings={"size": 48, "budget": 20000})
    seg = Segmenter(load_model(str(compact_ckpt)), SegmenterConfig(size=48, budget=20000, keep_probs=False))
    past = worker.process_video(VideoTask("past", str(frames), str(mask), start_frame=10), seg, config)
    unmasked = worker.process_video(VideoTask("unmasked", str(frames), str(tmp_path / "masks"), start_frame=2), seg,
                                    config)
    assert past["committed"] and past["status"] == "failed", past
    assert unmasked["committed"] and unmasked["status"] == "failed", unmasked
    rows = {v["video_id"]: v for v in read_table(str(out), "videos").to_pylist()}
    assert rows["past"]["error_type"] == "VideoReadError"
    assert rows["past"]["error"].endswith("frames: the video ends before its start frame 10")
    assert rows["unmasked"]["error_type"] == "AnnotationError"
    assert rows["unmasked"]["error"].endswith("masks: no mask for start_frame 2 (masks for frames 0)")
