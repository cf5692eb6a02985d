"""`vos compact`: query, load_labels (render), report and export give the same results before and
after; a rerun changes nothing; a compaction killed between its steps leaves readers seeing every
video once, and its rerun finishes it; a video committed while it runs stays visible; the job's
resume skips compacted videos (the real job on a local Ray); the same on S3 (moto on 127.0.0.1).
The run is made without Ray, as in test_export: the worker's process_video over the sample corpus
(2 folders of frames, 1 mp4), plus a failed video and a few written from results without a model."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from jobs import pseudo_label
from jobs import storage as st
from jobs.cli import main as vos_main
from jobs.inspect.export import export_run
from jobs.inspect.read import connect, load_labels, open_layout, query
from jobs.inspect.report import write_report
from jobs.label import compact as compaction
from jobs.label.commit import VideoCommit, write_failed
from jobs.label.lease import LeaseHeld, acquire
from jobs.label.manifest import load_manifest
from jobs.label.run_record import committed, open_run
from jobs.label.worker import WorkerConfig, process_video
from jobs.layout import COMPACTION, Layout, read_generations, shard_dir, shard_of
from job_helpers import (FAST, SAMPLE, assert_exactly_once, compact_ckpt, fake_result, moto_s3,  # noqa: F401
                         ray_runtime, s3fs_for, make_bucket, tiny_corpus)

SHARDS = 4
RUN = "cmp"
OK = {"judo-a", "judo-b", "judo-mp4"} | {f"syn-{i:02d}" for i in range(9)}
#: What every reader must give the same before and after (ordered, all columns but none dropped).
QUERIES = [
    "SELECT * FROM videos ORDER BY video_id",
    "SELECT * FROM masks ORDER BY video_id, frame_index, object_id",
    "SELECT * FROM frames ORDER BY video_id, frame_index",
    "SELECT * FROM masks_all ORDER BY video_id, frame_index, object_id",
    "SELECT shard, status, count(*) AS n FROM videos GROUP BY ALL ORDER BY ALL",
    "SELECT count(*) AS n FROM masks",
]


def _commit_synthetic(layout: Layout, video_id: str, frames: int = 3, seed: int = 0) -> dict:
    vc = VideoCommit(layout, video_id, RUN)
    vc.begin()
    for t in range(frames):
        vc.add(fake_result(t, seed=seed, with_u=True), f"{t:05d}")
    return vc.commit()


@pytest.fixture(scope="module")
def base_run(compact_ckpt, tmp_path_factory):  # noqa: F811
    import torch
    from vos_core import Segmenter, SegmenterConfig, load_model

    out = str(tmp_path_factory.mktemp("compact_run") / "out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seg = Segmenter(load_model(str(compact_ckpt)), SegmenterConfig(size=48, budget=20000, keep_probs=False))
        cfg = WorkerConfig(checkpoint=str(compact_ckpt), model_checksum="sha256:x", output=out, shards=SHARDS,
                           run_id=RUN, settings=seg.config.to_dict(), review_quality=0.5)
        layout = cfg.layout()
        open_run(layout, RUN, {"settings": cfg.settings, "checkpoint_uri": str(compact_ckpt)})
        for t in load_manifest(str(SAMPLE / "manifest.csv")):
            assert process_video(t, seg, cfg, layout)["status"] == "ok"
    finally:
        torch.set_num_threads(threads)
    for i in range(9):
        _commit_synthetic(layout, f"syn-{i:02d}", seed=i)
    write_failed(layout, "broken", RUN, "no such file", "VideoReadError")
    return out


@pytest.fixture
def run_copy(base_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(base_run, out)
    return str(out)


def _results(output: str, storage=None) -> dict:
    """Everything readers give: the SQL views, each video's labels (render, export), resume's view."""
    layout = open_layout(output, storage)
    return {"sql": [query(output, q, storage).to_pylist() for q in QUERIES],
            "labels": {v: load_labels(layout, v) for v in sorted(OK)},
            "committed": committed(layout, RUN)}


def _tree(root: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _per_video_files(output: str) -> list[Path]:
    return [p for t in ("masks", "frames", "videos") for p in Path(output, t).glob("shard=*/*.parquet")]


def test_readers_give_the_same_before_and_after_and_a_rerun_changes_nothing(run_copy, tmp_path, capsys):
    before = _results(run_copy)
    report_before = Path(write_report(run_copy, str(tmp_path / "rep_before"), thumbnails=1)).read_text()
    export_run(run_copy, str(tmp_path / "coco_before"), "coco", progress=False)
    export_run(run_copy, str(tmp_path / "davis_before"), "davis", progress=False)
    assert len(_per_video_files(run_copy)) == 3 * len(OK) + 1  # + the failed video's record

    assert vos_main(["compact", "--output", run_copy, "--target-mb", "0.02"]) == 0  # several parts per shard
    assert f"compacted {len(OK)} video(s)" in capsys.readouterr().out
    gens = read_generations(Layout(run_copy, st.Storage(), shards=SHARDS))
    assert sum(g["video_count"] for g in gens.values()) == len(OK)
    assert max(len(g["parts"]) for g in gens.values()) > 1
    # only the failed video's record is left as a per-video file (--retry-failed can replace it)
    assert [p.parent.parent.name + "/" + p.stem.rsplit("-", 1)[0] for p in _per_video_files(run_copy)] == \
        ["videos/broken"]

    assert _results(run_copy) == before
    assert Path(write_report(run_copy, str(tmp_path / "rep_after"), thumbnails=1)).read_text() == report_before
    export_run(run_copy, str(tmp_path / "coco_after"), "coco", progress=False)
    export_run(run_copy, str(tmp_path / "davis_after"), "davis", progress=False)
    coco = [json.loads((tmp_path / d / "annotations.json").read_text()) for d in ("coco_before", "coco_after")]
    for c in coco:
        c["info"].pop("date_created")  # when it was exported
    assert coco[0] == coco[1]
    assert _tree(str(tmp_path / "davis_after")) == _tree(str(tmp_path / "davis_before"))
    assert_exactly_once(run_copy, OK)  # a plain glob (pyarrow) sees every video once when at rest, too

    tree = _tree(run_copy)
    reports = compaction.compact(run_copy)
    assert sum(r.compacted + r.removed + r.leftovers for r in reports) == 0
    assert {k: v for k, v in _tree(run_copy).items() if "lease" not in k} == \
        {k: v for k, v in tree.items() if "lease" not in k}


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["written", "published", "removing"])
def test_a_compaction_killed_between_its_steps_loses_nothing_and_its_rerun_finishes(run_copy, step):
    before = _results(run_copy)
    seen = []

    def hook(at, shard):
        seen.append(shard)
        if at == step and len(seen) > 1:  # the first shards are done, this one dies
            raise Crash(f"killed after {at} in {shard}")

    with pytest.raises(Crash):
        compaction.compact(run_copy, target_mb=0.02, hook=hook)
    assert _results(run_copy) == before  # half compacted: every video still there, once
    reports = compaction.compact(run_copy, target_mb=0.02)
    assert sum(r.covered for r in reports) == len(OK)
    assert sum(r.leftovers for r in reports) > 0  # its unnamed compacted files, or the per-video files it covers
    assert _results(run_copy) == before
    assert_exactly_once(run_copy, OK)
    assert len(_per_video_files(run_copy)) == 1  # the failed record
    layout = Layout(run_copy, st.Storage(), shards=SHARDS)
    named = {p[t] for g in read_generations(layout).values() for p in g["parts"] for t in ("masks", "frames", "videos")}
    on_disk = {str(p.relative_to(run_copy)) for p in Path(run_copy).glob("*/shard=*/compacted/*.parquet")}
    assert on_disk == named  # no orphan compacted file


def _id_in_shard(shard: str, prefix: str) -> str:
    return next(f"{prefix}-{i}" for i in range(1000) if shard_dir(shard_of(f"{prefix}-{i}", SHARDS), SHARDS) == shard)


def test_a_video_committed_while_compacting_stays_visible(run_copy):
    layout = Layout(run_copy, st.Storage(), shards=SHARDS)
    added = []

    def hook(at, shard):  # the shard's parts are written, its generation not yet published
        if at == "written" and not added:
            vid = _id_in_shard(shard, "late")
            _commit_synthetic(layout, vid, seed=99)
            added.append(vid)

    compaction.compact(run_copy, hook=hook)
    (late,) = added
    assert query(run_copy, f"SELECT count(*) AS n FROM frames WHERE video_id = '{late}'").to_pylist() == [{"n": 3}]
    assert load_labels(open_layout(run_copy), late).frames
    assert Path(layout.data_path("videos", late)).exists()  # not compacted: committed after the listing
    assert committed(layout, RUN)[late] == "ok"
    assert_exactly_once(run_copy, OK | {late})
    reports = compaction.compact(run_copy)  # the next compaction takes it
    assert sum(r.compacted for r in reports) == 1 and not Path(layout.data_path("videos", late)).exists()
    assert_exactly_once(run_copy, OK | {late})


def test_one_compaction_at_a_time(run_copy):
    layout = Layout(run_copy, st.Storage(), shards=SHARDS)
    held = acquire(layout, compaction.LEASE)
    try:
        with pytest.raises(LeaseHeld, match="another `vos compact` is running"):
            compaction.compact(run_copy)
    finally:
        held.release()
    assert not (Path(run_copy) / COMPACTION).exists()
    assert vos_main(["compact", "--output", str(Path(run_copy) / "nothing")]) == 2


@pytest.mark.slow
def test_resume_after_compaction_skips_the_compacted_videos(ray_runtime, compact_ckpt, tmp_path, capsys):  # noqa: F811
    import csv

    manifest = tiny_corpus(tmp_path / "corpus", 3, frames=3)
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    first = tmp_path / "first.csv"
    with open(first, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:2])
    out = str(tmp_path / "out")
    args = ["--output", out, "--checkpoint", str(compact_ckpt), "--actors", "1", "--run-id", "res", "--shards", "2",
            *FAST]
    assert pseudo_label.main(["--manifest", str(first), *args]) == 0
    attempts = {r["video_id"]: r["attempt"] for r in query(out, "SELECT video_id, attempt FROM videos").to_pylist()}
    assert sum(r.compacted for r in compaction.compact(out)) == 2
    capsys.readouterr()
    assert pseudo_label.main(["--manifest", str(manifest), *args]) == 0
    assert "run res: 1 ok, 0 failed, 2 skipped (committed earlier)" in capsys.readouterr().out
    by_id = assert_exactly_once(out, {"vid00", "vid01", "vid02"})
    assert {v: by_id[v]["attempt"] for v in attempts} == attempts  # the compacted ones were not redone
    assert query(out, "SELECT count(*) AS n FROM videos").to_pylist() == [{"n": 3}]
    assert sum(r.compacted for r in compaction.compact(out)) == 1


@pytest.mark.slow
def test_on_s3_killed_then_rerun(base_run, moto_s3, tmp_path):  # noqa: F811
    fs = make_bucket(moto_s3, "compact")
    fs.put(base_run.rstrip("/") + "/", "compact/run/", recursive=True)
    out = "s3://compact/run"
    storage = st.Storage(endpoint_url=moto_s3)
    before = _results(base_run)
    assert _results(out, storage) == before

    def hook(at, shard):
        if at == "published":
            raise Crash(shard)

    with pytest.raises(Crash):
        compaction.compact(out, storage, target_mb=0.02, hook=hook)
    assert _results(out, storage) == before
    reports = compaction.compact(out, storage, target_mb=0.02)
    assert sum(r.covered for r in reports) == len(OK) and sum(r.leftovers for r in reports) > 0
    assert _results(out, storage) == before
    assert_exactly_once(out, OK, filesystem=s3fs_for(moto_s3))
    assert not fs.exists("compact/run/_compact_lease.json")  # released
    left = [p for t in ("masks", "frames", "videos") for p in fs.glob(f"compact/run/{t}/shard=*/*.parquet")]
    assert len(left) == 1  # the failed record


def test_benchmark_script_runs_small(tmp_path):
    """benchmarks/bench_compact.py's logic (its figures are in BENCHMARKS.md, not checked here)."""
    import subprocess
    import sys

    from job_helpers import ROOT

    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_compact.py"), "--videos", "24", "--shards", "4",
                        "--repeat", "1", "--no-s3"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| local |")]
    assert len(rows) == 2 and "| 72 |" in rows[0] and "| 12 |" in rows[1]  # 3 files a video, then 3 a shard
