"""The job end to end on a local Ray (one runtime shared by the module): the shipped sample corpus,
the shared data (DAVIS layout, a real mp4, the clip whose objects appear later with its mis-sized
mask), the embedded default, and the query layer over the result."""
import json
import os
import shutil

import duckdb
import numpy as np
import pytest

from conftest import require_shared
from jobs import pseudo_label
from jobs.label.manifest import load_manifest
from jobs.query import connect, decode_video
from jobs.query import main as query_main
from job_helpers import (FAST, SAMPLE, assert_exactly_once, assert_same_masks, compact_ckpt,  # noqa: F401
                         job_masks, ray_runtime, read_table, reference_masks, write_mask)
from vos_core.io import read_id_map
from vos_core.model import SHIPPED_CHECKPOINT

pytestmark = pytest.mark.slow


def run_job(*args) -> int:
    return pseudo_label.main([*map(str, args), *FAST])


def test_sample_corpus(ray_runtime, compact_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_job("--manifest", SAMPLE / "manifest.csv", "--output", out, "--checkpoint", compact_ckpt,
                 "--actors", "1:2", "--run-id", "sample")
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "[3/3]" in text and "run sample: 3 ok, 0 failed" in text and str(out) in text
    videos = assert_exactly_once(str(out), {"judo-a", "judo-b", "judo-mp4"})
    # every video's masks are exactly what the segmenter alone gives on the same inputs
    for t in load_manifest(str(SAMPLE / "manifest.csv")):
        assert_same_masks(job_masks(str(out), t.video_id), reference_masks(compact_ckpt, t.video_uri, t.annotations_uri),
                          t.video_id)
    v = videos["judo-b"]
    assert (v["frames"], v["objects"], v["start_frame"], v["height"], v["width"]) == (11, 3, 0, 180, 320)
    assert v["model_checksum"].startswith("sha256:") and v["run_id"] == "sample" and v["fps"] > 0
    assert json.loads(v["settings"])["size"] == 48 and v["device"] == "cpu"
    # objects that appear later: judo-b's objects 3 and 4 have rows from their first mask on
    masks = read_table(str(out), "masks").to_pylist()
    first = {o: min(m["frame_index"] for m in masks if m["video_id"] == "judo-b" and m["object_id"] == o)
             for o in (2, 3, 4)}
    assert first == {2: 0, 3: 3, 4: 8}
    # DuckDB over the raw files (what a user types) and through jobs.query's views
    con = duckdb.connect()
    n = con.sql(f"SELECT count(*) FROM read_parquet('{out}/masks/**/*.parquet', hive_partitioning=true)").fetchall()
    assert n[0][0] == sum(v["masks_rows"] for v in videos.values())
    q = connect(str(out))
    assert q.sql("SELECT count(*) FROM frames").fetchall()[0][0] == 8 + 11 + 16
    assert q.sql("SELECT count(DISTINCT shard) FROM masks").fetchall()[0][0] >= 1
    low = q.sql("SELECT video_id, frame_index FROM frames WHERE u_mean < 0.5 AND NOT annotated").fetchall()
    assert all(isinstance(r[1], int) for r in low)
    # decode one video back to PNGs: the same id maps
    written = decode_video(str(out), "judo-a", str(tmp_path / "png"))
    assert len(written) == 8
    ref = job_masks(str(out), "judo-a")
    for i, p in enumerate(sorted(written)):
        assert np.array_equal(read_id_map(p), ref[i])
    assert query_main(["--output", str(out), "--format", "csv",
                       "SELECT status, count(*) AS n FROM videos GROUP BY status"]) == 0
    assert "ok,3" in capsys.readouterr().out.replace('"', "")


def test_rerun_same_run_id_skips_committed(ray_runtime, compact_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    common = ("--manifest", SAMPLE / "davis", "--output", out, "--checkpoint", compact_ckpt, "--actors", "1")
    assert run_job(*common, "--run-id", "r1") == 0
    before = read_table(str(out), "videos").to_pylist()
    capsys.readouterr()
    assert run_job(*common) == 0  # no --run-id: adopts the run found at --output
    text = capsys.readouterr().out
    assert "(resumed)" in text and "0 video(s) to process, 2 skipped" in text
    assert read_table(str(out), "videos").to_pylist() == before
    assert_exactly_once(str(out), {"judo-a", "judo-b"})
    assert run_job(*common, "--run-id", "other") == 2  # another run id at the same output: refused
    assert "already holds run 'r1'" in capsys.readouterr().err


def test_embedded_default(ray_runtime, tmp_path, monkeypatch, capsys):
    """`python -m jobs.pseudo_label` with no arguments: the sample corpus, the shipped weights."""
    if not os.path.exists(SHIPPED_CHECKPOINT):
        pytest.skip(f"the shipped weights are not in this checkout: {SHIPPED_CHECKPOINT}")
    monkeypatch.chdir(tmp_path)
    assert pseudo_label.main([]) == 0
    text = capsys.readouterr().out
    runs = os.listdir(tmp_path / "vos_output")
    assert len(runs) == 1 and f"run {runs[0]}: 3 ok, 0 failed" in text
    assert str(tmp_path / "vos_output" / runs[0]) in text
    assert_exactly_once(str(tmp_path / "vos_output" / runs[0]), {"judo-a", "judo-b", "judo-mp4"})


def _shared_davis_root(tmp_path, seqs=("bear", "boat"), frames=5):
    """A DAVIS-layout root of the first frames of two shared DAVIS-2016 sequences, with the first
    frame's mask only (the shared set has every frame's ground truth)."""
    src = require_shared("davis16-train-240p")
    root = tmp_path / "davis"
    for seq in seqs:
        (root / "JPEGImages" / seq).mkdir(parents=True)
        (root / "Annotations" / seq).mkdir(parents=True)
        for i in range(frames):
            shutil.copy(src / "JPEGImages" / seq / f"{i:05d}.jpg", root / "JPEGImages" / seq / f"{i:05d}.jpg")
        shutil.copy(src / "Annotations" / seq / "00000.png", root / "Annotations" / seq / "00000.png")
    return root


def test_shared_data(ray_runtime, compact_ckpt, tmp_path, capsys):
    judo = require_shared("cutie-judo")
    mp4 = require_shared("videos", "cutie-example-640x480.mp4")
    # 1. a DAVIS-layout root given directly as --manifest
    root = _shared_davis_root(tmp_path)
    out = tmp_path / "davis_out"
    assert run_job("--manifest", root, "--output", out, "--checkpoint", compact_ckpt, "--actors", "2") == 0
    assert_exactly_once(str(out), {"bear", "boat"})
    for seq in ("bear", "boat"):
        assert_same_masks(job_masks(str(out), seq),
                          reference_masks(compact_ckpt, str(root / "JPEGImages" / seq), str(root / "Annotations" / seq)),
                          seq)
    # 2. an mp4 with a first-frame mask of our own (a rectangle) at start_frame 110 of 117, and the
    #    judo clip whose masks add objects at frames 5, 8, 13 - its 00005.png is 853 wide, not 854
    rect = write_mask(tmp_path / "rect.png", h=480, w=640, box=(150, 330, 200, 420), oid=7)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"video_id": "cutie-mp4", "video_uri": str(mp4), "annotations_uri": str(rect), "start_frame": 110})
        + "\n" + json.dumps({"video_id": "judo", "video_uri": str(judo / "JPEGImages"),
                             "annotations_uri": str(judo / "Annotations")}) + "\n")
    strict, lenient = tmp_path / "strict", tmp_path / "lenient"
    capsys.readouterr()
    assert run_job("--manifest", manifest, "--output", strict, "--checkpoint", compact_ckpt, "--actors", "2") == 0
    text = capsys.readouterr().out
    assert "1 ok, 1 failed" in text
    videos = assert_exactly_once(str(strict), {"cutie-mp4"})
    j = videos["judo"]
    assert j["status"] == "failed" and j["error_type"] == "AnnotationError"
    assert "00005.png" in j["error"] and "853x480" in j["error"] and "--resize-annotations" in j["error"]
    mp4_ref = reference_masks(compact_ckpt, str(mp4), {110: read_id_map(rect)})
    assert sorted(mp4_ref) == list(range(110, 117))
    assert_same_masks(job_masks(str(strict), "cutie-mp4"), mp4_ref, "cutie-mp4")
    assert videos["cutie-mp4"]["start_frame"] == 110
    # --fail-on-error turns the failure into the exit status (the committed video is skipped)
    assert run_job("--manifest", manifest, "--output", strict, "--checkpoint", compact_ckpt,
                   "--retry-failed", "--fail-on-error") == 1
    # with --resize-annotations the judo clip runs, objects appearing at their frames
    assert run_job("--manifest", manifest, "--output", lenient, "--checkpoint", compact_ckpt, "--actors", "2",
                   "--resize-annotations") == 0
    videos = assert_exactly_once(str(lenient), {"cutie-mp4", "judo"})
    assert videos["judo"]["objects"] == 4 and videos["judo"]["frames"] == 16
    assert_same_masks(job_masks(str(lenient), "judo"),
                      reference_masks(compact_ckpt, str(judo / "JPEGImages"), str(judo / "Annotations"),
                                      resize_annotations=True), "judo")
    firsts = connect(str(lenient)).sql(
        "SELECT object_id, min(frame_index) FROM masks WHERE video_id = 'judo' GROUP BY 1 ORDER BY 1").fetchall()
    assert firsts == [(1, 0), (2, 5), (3, 8), (4, 13)]
