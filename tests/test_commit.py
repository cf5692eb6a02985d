"""The commit protocol (jobs/label/commit.py) without Ray: names (jobs/layout.py), the cell codecs,
atomic publication (local and S3), retries, failures, resume records (jobs/label/run_record.py),
what plain readers and the query views see."""
import json
import posixpath
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import codec
from jobs import layout as lo
from jobs import storage as st
from jobs.label import commit as cm
from jobs.label import parquet
from jobs.label import run_record as rr
from jobs.inspect.read import connect
from job_helpers import assert_exactly_once, fake_result, make_bucket, moto_s3, read_table, s3fs_for  # noqa: F401

UNSAFE = ["../x", "a/b", "", "..", ".", "/abs", "x" * 10_000, "é/../\n\x01", "shard=01", "a b", "a-b", "a_b"]


def commit_video(layout, vid, run="r1", frames=3, **kw):
    vc = cm.VideoCommit(layout, vid, run)
    vc.begin()
    results = [fake_result(t, seed=len(vid), **kw) for t in range(frames)]
    for r in results:
        vc.add(r, f"{r.index:05d}")
    return vc.commit(video_uri="v", settings={"size": 1}), results


@pytest.mark.parametrize("vid", UNSAFE, ids=range(len(UNSAFE)))
def test_video_keys_never_escape(tmp_path, vid):
    key = lo.video_key(vid)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,61}", key) and len(key) <= 61
    layout = lo.Layout(str(tmp_path / "out"), st.Storage())
    for table in ("masks", "frames", "videos"):
        p = layout.data_path(table, vid)
        assert posixpath.normpath(p) == p and p.startswith(layout.root + f"/{table}/shard=")
        assert p.count("/") == layout.root.count("/") + 3


def test_video_keys_are_unique_and_stable():
    keys = {lo.video_key(v) for v in UNSAFE}
    assert len(keys) == len(UNSAFE)
    assert lo.video_key("judo-a") == lo.video_key("judo-a") and lo.video_key("judo-a").startswith("judo-a-")
    assert {lo.shard_of(f"v{i}", 16) for i in range(200)} == set(range(16))


def test_rle_roundtrip_including_wide_ids():
    mask = np.zeros((7, 9), np.uint16)
    mask[1:4, 2:5] = 300
    mask[5:, :] = 2
    rles = codec.encode_rles(mask, [2, 300, 7])
    for oid, rle in zip([2, 300, 7], rles):
        assert np.array_equal(codec.decode_rle(rle, 7, 9), (mask == oid).astype(np.uint8))


def test_commit_writes_three_tables(tmp_path):
    layout = lo.Layout(str(tmp_path / "out"), st.Storage())
    row, results = commit_video(layout, "../evil", frames=4)
    out = str(tmp_path / "out")
    by_id = assert_exactly_once(out, {"../evil"})
    assert by_id["../evil"]["masks_rows"] == 8 and by_id["../evil"]["attempts"] == 1
    masks = read_table(out, "masks").to_pylist()
    assert [(m["frame_index"], m["object_id"]) for m in masks] == [(t, o) for t in range(4) for o in (1, 2)]
    for m in masks:
        r = results[m["frame_index"]]
        assert np.array_equal(codec.decode_rle(m["rle"], m["height"], m["width"]), (r.mask == m["object_id"]))
        o = r.stats.object(m["object_id"])
        assert m["area"] == o.area and m["bbox"] == o.bbox
        assert m["mean_prob"] == pytest.approx(o.mean_prob, rel=1e-6)
    frames = read_table(out, "frames").to_pylist()
    assert [f["objects"][0]["object_id"] for f in frames] == [0] * 4 and frames[0]["frame_name"] == "00000"
    # files: zstd, sorted, one per table under shard=NN, nothing left in staging
    f = pq.ParquetFile(layout.data_path("masks", "../evil"))
    assert f.metadata.row_group(0).column(0).compression == "ZSTD"
    assert [c.column_index for c in f.metadata.row_group(0).sorting_columns] == [0, 1, 2]
    assert not list((tmp_path / "out" / "_staging").glob("*"))
    assert json.loads(row["settings"]) == {"size": 1}


def test_row_groups_bound_memory(tmp_path, monkeypatch):
    monkeypatch.setitem(parquet.ROW_GROUP_ROWS, "masks", 3)
    layout = lo.Layout(str(tmp_path / "out"), st.Storage())
    commit_video(layout, "long", frames=5)
    md = pq.ParquetFile(layout.data_path("masks", "long")).metadata
    assert md.num_rows == 10 and md.num_row_groups == 4


def test_retry_overwrites_and_crash_before_record_is_invisible_to_views(tmp_path):
    out = str(tmp_path / "out")
    layout = lo.Layout(out, st.Storage())
    vc = _crashed_attempt(layout, "v")  # attempt 1 publishes its data files, then "dies" before its record
    con = connect(out)
    assert con.sql("select count(*) from masks").fetchall()[0][0] == 0  # not committed: views hide it
    assert con.sql("select count(*) from masks_all").fetchall()[0][0] == 6  # a plain glob sees the whole file
    assert rr.committed(layout, "r1") == {}
    # attempt 2 (the retry) commits: same file names, rows once, attempt 2's rows
    row, _ = commit_video(layout, "v", frames=3)
    assert row["attempts"] == 2
    by_id = assert_exactly_once(out, {"v"})
    assert by_id["v"]["attempt"] == row["attempt"] != vc.attempt
    assert connect(out).sql("select count(*) from masks").fetchall()[0][0] == 6
    assert rr.committed(layout, "r1") == {"v": "ok"}


def _crashed_attempt(layout, vid, frames=3):
    """An attempt that published its data files and died before its commit record."""
    vc = cm.VideoCommit(layout, vid, "r1")
    vc.begin()
    for t in range(frames):
        vc.add(fake_result(t))
    for table in ("frames", "masks"):
        vc._files[table].publish()
    return vc


def test_failure_removes_earlier_rows_and_records_reason(tmp_path):
    out = str(tmp_path / "out")
    layout = lo.Layout(out, st.Storage())
    _crashed_attempt(layout, "v")  # a previous crashed attempt's files, no record
    assert read_table(out, "masks").num_rows == 6
    vc = cm.VideoCommit(layout, "v", "r1")
    vc.begin()
    vc.add(fake_result(0))
    row = vc.fail("x.png: cannot decode", "AnnotationError", video_uri="v")
    assert row["status"] == "failed" and row["frames"] == 0
    by_id = assert_exactly_once(out, set())
    assert by_id["v"]["error"] == "x.png: cannot decode" and by_id["v"]["error_type"] == "AnnotationError"
    assert rr.committed(layout, "r1") == {"v": "failed"}
    assert not list((tmp_path / "out" / "_staging").glob("*"))
    # a failed video that fails again (--retry-failed) gets the new reason
    cm.write_failed(layout, "v", "r1", "still bad", "AnnotationError")
    assert assert_exactly_once(out, set())["v"]["error"] == "still bad"


def test_a_failure_never_deletes_what_another_attempt_committed(tmp_path):
    """E.g. an actor that committed and died before reporting it, then the driver's WorkerDied record;
    or any other attempt failing after one committed: the committed rows and their record stay."""
    out = str(tmp_path / "out")
    layout = lo.Layout(out, st.Storage())
    ok, _ = commit_video(layout, "v")
    late = cm.VideoCommit(layout, "v", "r1")
    late.begin()
    late.add(fake_result(0))
    kept = late.fail("its actor died", "WorkerDied")
    assert kept["status"] == "ok" and kept["attempt"] == ok["attempt"]
    assert cm.write_failed(layout, "v", "r1", "no result", "WorkerDied")["attempt"] == ok["attempt"]
    by_id = assert_exactly_once(out, {"v"})
    assert by_id["v"]["attempt"] == ok["attempt"] and by_id["v"]["masks_rows"] == 6
    # the record of another run at this output is no reason to keep anything (resume rules refuse that run anyway)
    assert cm.write_failed(layout, "v", "r2", "bad", "VideoReadError")["status"] == "failed"


def test_a_failed_record_with_a_field_the_schema_cannot_hold_is_still_written(tmp_path):
    out = str(tmp_path / "out")
    layout = lo.Layout(out, st.Storage())
    row = cm.write_failed(layout, "v", "r1", "video.mp4: cannot decode", "VideoReadError", start_frame=2**31,
                          video_uri="v.mp4")
    rec, = read_table(out, "videos").to_pylist()
    assert rec["status"] == "failed" and rec["error_type"] == "VideoReadError" and rec["start_frame"] is None
    assert rec["error"].startswith("video.mp4: cannot decode (the record's other fields could not be stored")
    assert row["error"] == rec["error"] and rr.committed(layout, "r1") == {"v": "failed"}


def test_abort_publishes_nothing_locally(tmp_path):
    fs, _ = st.Storage().resolve(str(tmp_path))
    target = str(tmp_path / "t" / "x.parquet")
    with pytest.raises(RuntimeError):
        with st.atomic_open(fs, target, str(tmp_path / "_staging")) as f:
            f.write(b"half")
            raise RuntimeError("worker error")
    assert not fs.exists(target) and not list((tmp_path / "_staging").glob("*"))


def test_run_record_resume_rules(tmp_path):
    layout = lo.Layout(str(tmp_path / "out"), st.Storage())
    run_id, resumed = rr.open_run(layout, None, {"settings": {"size": 1}, "model_checksum": "sha256:a"})
    assert not resumed and run_id
    assert rr.open_run(layout, None, {"settings": {"size": 1}, "model_checksum": "sha256:a"}) == (run_id, True)
    assert rr.open_run(layout, run_id, {"settings": {"size": 1}, "model_checksum": "sha256:a"}) == (run_id, True)
    with pytest.raises(rr.OutputError, match="already holds run"):
        rr.open_run(layout, "other", {})
    with pytest.raises(rr.OutputError, match="settings"):
        rr.open_run(layout, run_id, {"settings": {"size": 2}, "model_checksum": "sha256:a"})
    with pytest.raises(rr.OutputError, match="model_checksum"):
        rr.open_run(layout, run_id, {"settings": {"size": 1}, "model_checksum": "sha256:b"})
    with pytest.raises(rr.OutputError, match="shards"):
        rr.open_run(lo.Layout(layout.uri, st.Storage(), shards=4), run_id, {})


def test_commit_on_s3_is_atomic(moto_s3):  # noqa: F811
    fs = make_bucket(moto_s3, "commit-test")
    storage = st.Storage(endpoint_url=moto_s3)
    layout = lo.Layout("s3://commit-test/out", storage)
    commit_video(layout, "a/b", frames=2)
    # an aborted multipart upload (> 1 part) leaves no object behind
    af = st.AtomicFile(fs, "commit-test/out/masks/shard=00/big.parquet", "unused", block_size=5 * 2**20)
    af.file.write(b"x" * (6 * 2**20))
    af.file.flush()
    assert af.file.mpu is not None  # the upload has started...
    af.abort()
    fs.invalidate_cache()
    assert not fs.exists("commit-test/out/masks/shard=00/big.parquet")  # ...and nothing was published
    assert_exactly_once("s3://commit-test/out", {"a/b"}, filesystem=s3fs_for(moto_s3))
    assert rr.committed(layout, "r1") == {"a/b": "ok"}
    assert not fs.exists("commit-test/out/_staging")


def test_every_column_is_documented():
    """docs/output-tables.md's column tables are the ones jobs.schema generates (`python -m jobs.schema`)."""
    from jobs.schema import COLUMNS, markdown
    from job_helpers import ROOT

    docs = (ROOT / "docs" / "output-tables.md").read_text()
    for table, cols in COLUMNS.items():
        assert markdown(table) in docs, f"the {table} column table in the docs is not jobs.schema's (python -m jobs.schema)"
        for name, _, doc in cols:
            assert doc.strip()
