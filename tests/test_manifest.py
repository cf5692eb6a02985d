"""Manifest reading (Parquet, CSV, JSON Lines, DAVIS root, S3 endpoint handling), no Ray."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import storage as st
from jobs.label.manifest import ManifestError, VideoTask, load_manifest, write_manifest
from job_helpers import SAMPLE, make_bucket, moto_s3  # noqa: F401  (fixture)

ROWS = [
    {"video_id": "00012", "video_uri": "videos/a.mp4", "annotations_uri": "masks/a", "start_frame": 3},
    {"video_id": "b", "video_uri": "/abs/b", "annotations_uri": "s3://bucket/b.png", "start_frame": None},
]


def _expect(tmp_path):
    return [
        VideoTask("00012", os.path.join(str(tmp_path), "videos/a.mp4"), os.path.join(str(tmp_path), "masks/a"), 3),
        VideoTask("b", "/abs/b", "s3://bucket/b.png", None),
    ]


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl", "json"])
def test_formats_relative_uris_and_ids_kept_as_strings(tmp_path, ext):
    path = tmp_path / f"m.{ext}"
    if ext == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif ext == "csv":
        path.write_text("video_id,video_uri,annotations_uri,start_frame,extra\n"
                        "00012,videos/a.mp4,masks/a,3,x\nb,/abs/b,s3://bucket/b.png,,y\n")
    elif ext == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    else:
        path.write_text(json.dumps(ROWS))
    assert load_manifest(str(path)) == _expect(tmp_path)


def test_file_url_and_roundtrip(tmp_path):
    tasks = _expect(tmp_path)
    write_manifest(tasks, str(tmp_path / "out.parquet"))
    assert load_manifest("file://" + str(tmp_path / "out.parquet")) == tasks
    write_manifest(tasks, str(tmp_path / "out.csv"))
    assert load_manifest(str(tmp_path / "out.csv")) == tasks


@pytest.mark.parametrize("rows, match", [
    ([{"video_id": "", "video_uri": "a", "annotations_uri": "b"}], "row 1: empty video_id"),
    ([{"video_id": "  ", "video_uri": "a", "annotations_uri": "b"}], "row 1: empty video_id"),
    ([{"video_id": None, "video_uri": "a", "annotations_uri": "b"}], "row 1: empty video_id"),
    ([{"video_id": "x", "video_uri": "a", "annotations_uri": "b"}] * 2, "row 2: duplicate video_id 'x'"),
    ([{"video_id": "x", "video_uri": "a"}], "missing column.*annotations_uri"),
    ([{"video_id": "x", "video_uri": "a", "annotations_uri": "b", "start_frame": -1}], "start_frame"),
    ([{"video_id": "x", "video_uri": "a", "annotations_uri": "b", "start_frame": "two"}], "start_frame"),
    ([], "no rows"),
])
def test_bad_manifests_name_the_row(tmp_path, rows, match):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ManifestError, match=match):
        load_manifest(str(path))


def test_missing_unknown_and_folder(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(str(tmp_path / "nope.csv"))
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        load_manifest(str(tmp_path / "m.txt"))
    with pytest.raises(ManifestError, match="not a DAVIS-layout root"):
        load_manifest(str(tmp_path))


def test_unsafe_ids_are_accepted_and_kept(tmp_path):
    rows = [{"video_id": v, "video_uri": "a", "annotations_uri": "b"} for v in ("../x", "a/b", "x" * 5000, "é\n")]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [t.video_id for t in load_manifest(str(path))] == ["../x", "a/b", "x" * 5000, "é\n"]


def test_davis_root_becomes_a_manifest():
    tasks = load_manifest(str(SAMPLE / "davis"))
    assert [t.video_id for t in tasks] == ["judo-a", "judo-b"]
    assert tasks[0].video_uri.endswith("JPEGImages/judo-a") and tasks[0].annotations_uri.endswith("Annotations/judo-a")
    assert all(t.start_frame is None for t in tasks)


def test_shipped_sample_manifest():
    tasks = load_manifest(str(SAMPLE / "manifest.csv"))
    assert [t.video_id for t in tasks] == ["judo-a", "judo-b", "judo-mp4"]
    assert all(os.path.exists(t.video_uri) and os.path.exists(t.annotations_uri) for t in tasks)
    total = sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file())
    assert total < 2_000_000


def test_endpoint_precedence():
    env = {"AWS_ENDPOINT_URL": "http://aws", "AWS_ENDPOINT_URL_S3": "http://aws-s3", "FSSPEC_S3_ENDPOINT_URL": "http://fsspec"}
    assert st.Storage.from_env(environ=env).endpoint_url == "http://fsspec"
    assert st.Storage.from_env("http://explicit", environ=env).endpoint_url == "http://explicit"
    assert st.Storage.from_env(options={"endpoint_url": "http://opt"}, environ=env).endpoint_url == "http://opt"
    assert st.Storage.from_env(environ={"AWS_ENDPOINT_URL": "http://aws"}).endpoint_url == "http://aws"
    assert st.Storage.from_env(environ={}).endpoint_url is None
    s = st.Storage.from_env(options='{"anon": false}', environ={"AWS_ENDPOINT_URL": "http://aws"})
    assert s.options_for("s3://b/k") == {"anon": False, "client_kwargs": {"endpoint_url": "http://aws"}}
    assert s.options_for("/local/path") == {} and s.options_for("file:///x") == {}


@pytest.mark.parametrize("how", ["AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "explicit"])
def test_manifest_on_s3(moto_s3, tmp_path, how, monkeypatch):  # noqa: F811
    bucket = f"manifests-{how.lower().replace('_', '-')}"
    fs = make_bucket(moto_s3, bucket)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(ROWS), buf)
    fs.pipe(f"{bucket}/in/m.parquet", buf.getvalue().to_pybytes())
    for k in st.ENDPOINT_ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    if how == "explicit":
        storage = st.Storage.from_env(moto_s3)
    else:
        monkeypatch.setenv(how, moto_s3)
        storage = st.Storage.from_env()
    tasks = load_manifest(f"s3://{bucket}/in/m.parquet", storage)
    assert tasks[0] == VideoTask("00012", f"s3://{bucket}/in/videos/a.mp4", f"s3://{bucket}/in/masks/a", 3)


def _row(**kw):
    return {"video_id": "x", "video_uri": "a", "annotations_uri": "b", **kw}


@pytest.mark.parametrize("value", [True, False, 2**31, 2147483648.0, "2147483648", 1e300, "1e999", 1.5, "nan", -0.5,
                                   [3], {"f": 1}])
def test_start_frame_the_output_cannot_hold_is_refused(tmp_path, value):
    """Booleans are not frame numbers (JSON true was frame 1), and a frame index beyond int32 passed the
    check and then failed the video's record, leaving it without a row."""
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_row(start_frame=value)) + "\n")
    with pytest.raises(ManifestError, match=r"row 1: start_frame must be a frame index 0\.\.2147483647"):
        load_manifest(str(path))


@pytest.mark.parametrize("value, frame", [(0, 0), (2**31 - 1, 2**31 - 1), ("7", 7), (" 7 ", 7), (7.0, 7), ("7.0", 7),
                                          (None, None), ("", None)])
def test_start_frame_values_accepted(tmp_path, value, frame):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_row(start_frame=value)) + "\n")
    assert load_manifest(str(path))[0].start_frame == frame


def test_start_frame_in_parquet_bool_and_int64_columns(tmp_path):
    for values, ok in (([True], False), ([2**31], False), ([5], True)):
        path = tmp_path / "m.parquet"
        pq.write_table(pa.Table.from_pylist([_row(start_frame=v) for v in values]), path)
        if ok:
            assert load_manifest(str(path))[0].start_frame == values[0]
        else:
            with pytest.raises(ManifestError, match="start_frame"):
                load_manifest(str(path))


@pytest.mark.parametrize("column", ["video_id", "video_uri", "annotations_uri"])
def test_text_the_output_cannot_store_is_refused(tmp_path, column):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_row(**{column: "a\ud800b"})) + "\n")  # written as the escape \ud800
    assert "\\ud800" in path.read_text()
    with pytest.raises(ManifestError, match=f"row 1: {column} is not valid Unicode text"):
        load_manifest(str(path))


def test_davis_root_of_symlinked_sequences(tmp_path):
    """A DAVIS root assembled from links (sequence folders linked in, or the whole JPEGImages/) is read."""
    root = tmp_path / "davis"
    for sub in ("JPEGImages", "Annotations"):
        (root / sub).mkdir(parents=True)
        for seq in ("judo-a", "judo-b"):
            (root / sub / seq).symlink_to(SAMPLE / "davis" / sub / seq, target_is_directory=True)
    tasks = load_manifest(str(root))
    assert [t.video_id for t in tasks] == ["judo-a", "judo-b"]
    linked = tmp_path / "linked"
    linked.symlink_to(root, target_is_directory=True)
    assert [t.video_id for t in load_manifest(str(linked))] == ["judo-a", "judo-b"]
    (root / "JPEGImages" / "dangling").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    assert [t.video_id for t in load_manifest(str(root))] == ["judo-a", "judo-b"]  # a dangling link is no sequence


# -- manifests at scale: Parquet streamed and checked in batches, slices of a manifest -------------------------

def _parquet(path, rows, row_group_size=None):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return str(path)


def test_parquet_is_checked_batch_by_batch_with_rows_numbered_across_batches(tmp_path, monkeypatch):
    from jobs.label import manifest as m

    monkeypatch.setattr(m, "BATCH_ROWS", 7)  # 50 rows: 8 batches
    rows = [_row(video_id=f"v{i}", video_uri=f"/v/{i}", annotations_uri=f"/a/{i}.png", start_frame=None)
            for i in range(50)]  # from_pylist takes the columns from the first row
    dup = [*rows[:40], {**rows[40], "video_id": "v3"}, *rows[41:]]
    with pytest.raises(ManifestError, match=r"row 41: duplicate video_id 'v3' \(also row 4\)"):
        load_manifest(_parquet(tmp_path / "dup.parquet", dup, row_group_size=10))
    blank = [*rows[:33], {**rows[33], "video_id": " "}, *rows[34:]]
    with pytest.raises(ManifestError, match=r"row 34: empty video_id"):
        load_manifest(_parquet(tmp_path / "blank.parquet", blank))
    bad = [*rows[:22], {**rows[22], "start_frame": -2}, *rows[23:]]
    with pytest.raises(ManifestError, match=r"row 23: start_frame must be a frame index 0\.\.2147483647, got -2"):
        load_manifest(_parquet(tmp_path / "bad.parquet", bad))
    nul = [*rows[:9], {**rows[9], "video_id": "a\x00b"}, *rows[10:]]
    with pytest.raises(ManifestError, match=r"row 10: video_id contains a NUL"):
        load_manifest(_parquet(tmp_path / "nul.parquet", nul))
    assert [t.video_id for t in load_manifest(_parquet(tmp_path / "ok.parquet", rows))] == [f"v{i}" for i in range(50)]


def test_parquet_checks_agree_with_the_row_by_row_checks(tmp_path):
    """The Arrow path (text columns) and the row-by-row one (JSON Lines) give the same tasks."""
    rows = [_row(video_id="a", video_uri="rel/a.mp4", annotations_uri="  ", start_frame=0, corrections_uri=None),
            _row(video_id=" b ", video_uri="s3://x/b", annotations_uri="/abs/b.png", start_frame=None,
                 corrections_uri="fix/b"),
            _row(video_id="c", video_uri=None, annotations_uri="c.png", start_frame=2**31 - 1, corrections_uri="")]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_parquet = load_manifest(_parquet(tmp_path / "m.parquet", rows))
    assert from_parquet == load_manifest(str(jsonl))
    assert from_parquet[0] == VideoTask("a", str(tmp_path / "rel/a.mp4"), None, 0)
    assert from_parquet[1].corrections_uri == str(tmp_path / "fix/b") and from_parquet[2].corrections_uri is None


def test_a_large_parquet_manifest_makes_no_python_object_per_row(tmp_path):
    """10^5 rows are read into Arrow columns: Python's own allocations stay far below one object per row."""
    import tracemalloc

    from jobs.label.manifest import read_tasks

    n = 100_000
    table = pa.table({"video_id": [f"vid{i:07d}" for i in range(n)],
                      "video_uri": [f"/data/clips/c{i:07d}/frames" for i in range(n)],
                      "annotations_uri": [f"/data/clips/c{i:07d}/mask.png" for i in range(n)]})
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=20_000)
    del table
    tracemalloc.start()
    tasks = read_tasks(str(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(tasks) == n and tasks.table["video_id"][n - 1].as_py() == "vid0099999"
    assert peak < 5_000_000, f"{peak / 1e6:.1f} MB of Python objects for {n} rows"  # a dict per row: ~60 MB


def test_manifest_shards_are_disjoint_and_cover_it_and_limit_applies_within_one(tmp_path):
    from jobs.label.inputs import load_tasks

    rows = [_row(video_id=f"v{i:02d}", video_uri=f"/v/{i}", annotations_uri=f"/a/{i}") for i in range(10)]
    path = _parquet(tmp_path / "m.parquet", rows)
    storage = st.Storage()
    every = [t.video_id for t in load_tasks(path, storage)]
    for n in (1, 3, 4, 10, 11):
        shards = [[t.video_id for t in load_tasks(path, storage, shard=(i, n))] for i in range(n)]
        assert sum(shards, []) == every  # in order, each video once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [t.video_id for t in load_tasks(path, storage, limit=2, shard=(1, 3))] == ["v03", "v04"]
    assert [t.video_id for t in load_tasks(path, storage, limit=3)] == ["v00", "v01", "v02"]


def test_manifest_shard_option():
    from jobs import pseudo_label
    from jobs.label.options import JobOptions, parse_shard

    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3/4 ") == (3, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    args = pseudo_label.build_parser().parse_args(["--manifest-shard", "2/5", "--limit", "7", "--videos-per-task", "3"])
    o = pseudo_label.options_from_args(args)
    assert o.manifest_shard == (2, 5) and o.limit == 7 and o.videos_per_task == 3
    with pytest.raises(ValueError, match="videos-per-task"):
        JobOptions(videos_per_task=0)


def test_tasks_exclude_keeps_manifest_order(tmp_path):
    from jobs.label.manifest import read_tasks

    rows = [_row(video_id=f"v{i}", video_uri=f"/v/{i}", annotations_uri=f"/a/{i}") for i in range(6)]
    tasks = read_tasks(_parquet(tmp_path / "m.parquet", rows))
    left = tasks.exclude(pa.array(["v4", "v1", "nope"]))
    assert [t.video_id for t in left] == ["v0", "v2", "v3", "v5"]
    assert len(tasks.exclude(pa.array([], pa.string()))) == 6
    assert [len(s) for s in tasks.slices(4)] == [4, 2]
