"""The job against S3 (a moto server on 127.0.0.1): manifest, videos, masks, checkpoint and output
all on s3://, the endpoint given only by the standard environment variables; the output read back
with pyarrow, DuckDB (fsspec registration, offline) and jobs.query."""
import io

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import pseudo_label
from jobs import storage as st
from jobs.label.manifest import load_manifest
from jobs.query import connect
from jobs.query import main as query_main
from job_helpers import (FAST, S3_ENV, SAMPLE, assert_exactly_once, assert_same_masks, compact_ckpt,  # noqa: F401
                         job_masks, local_ray, make_bucket, moto_s3, reference_masks, s3fs_for)
from vos_core.io import read_id_map

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_s3(moto_s3, tmp_path_factory):  # noqa: F811
    """A local Ray whose workers have the dummy S3 credentials, but NOT the endpoint: the job
    must hand the endpoint it resolved on the driver to its actors."""
    with local_ray(tmp_path_factory, **S3_ENV, AWS_ENDPOINT_URL=None, FSSPEC_S3_ENDPOINT_URL=None,
                   AWS_ENDPOINT_URL_S3=None) as ray:
        yield ray


@pytest.fixture(scope="module")
def s3_corpus(moto_s3, compact_ckpt):  # noqa: F811
    fs = make_bucket(moto_s3, "corpus")
    make_bucket(moto_s3, "labels")
    fs.put(str(SAMPLE / "davis"), "corpus/sample/davis", recursive=True)
    fs.put(str(SAMPLE / "videos"), "corpus/sample/videos", recursive=True)
    fs.put(str(compact_ckpt), "corpus/models/compact.pth")
    rows = [{"video_id": t.video_id, "video_uri": t.video_uri.split("sample_corpus/")[1],
             "annotations_uri": t.annotations_uri.split("sample_corpus/")[1], "start_frame": t.start_frame}
            for t in load_manifest(str(SAMPLE / "manifest.csv"))]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    fs.pipe("corpus/sample/manifest.parquet", buf.getvalue())
    return fs


def test_job_on_s3(ray_s3, moto_s3, s3_corpus, compact_ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3)  # the only place the endpoint is given
    out = "s3://labels/runs/run1"
    rc = pseudo_label.main(["--manifest", "s3://corpus/sample/manifest.parquet", "--output", out,
                            "--checkpoint", "s3://corpus/models/compact.pth", "--actors", "2", "--run-id", "run1",
                            *FAST])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "run run1: 3 ok, 0 failed" in text and out in text
    fs = s3fs_for(moto_s3)
    videos = assert_exactly_once(out, {"judo-a", "judo-b", "judo-mp4"}, filesystem=fs)
    assert videos["judo-a"]["video_uri"] == "s3://corpus/sample/davis/JPEGImages/judo-a"
    assert videos["judo-a"]["checkpoint_uri"] == "s3://corpus/models/compact.pth"
    assert not fs.exists("labels/runs/run1/_staging")
    assert fs.exists("labels/runs/run1/_run.json")
    # the same masks as the segmenter alone on the (identical) local files
    for t in load_manifest(str(SAMPLE / "manifest.csv")):
        assert_same_masks(job_masks(out, t.video_id, filesystem=fs),
                          reference_masks(compact_ckpt, t.video_uri, t.annotations_uri), t.video_id)
    # DuckDB with the fsspec filesystem registered (no httpfs download), as README.md shows
    con = duckdb.connect()
    con.register_filesystem(s3fs_for(moto_s3))
    n = con.sql(f"SELECT count(*), count(DISTINCT video_id) FROM read_parquet('{out}/masks/**/*.parquet', "
                "hive_partitioning = true)").fetchall()[0]
    assert n == (sum(v["masks_rows"] for v in videos.values()), 3)
    q = connect(out)  # endpoint from AWS_ENDPOINT_URL
    assert q.sql("SELECT count(*) FROM frames WHERE video_id = 'judo-mp4'").fetchall()[0][0] == 16
    assert query_main(["--output", out, "--decode-video", "judo-b", "--to", str(tmp_path / "png")]) == 0
    ref = job_masks(out, "judo-b", filesystem=fs)
    for i in range(11):
        assert np.array_equal(read_id_map(tmp_path / "png" / f"{i:05d}.png"), ref[i])


def test_davis_root_on_s3_with_fsspec_variable(ray_s3, moto_s3, s3_corpus, compact_ckpt, monkeypatch):  # noqa: F811
    for k in st.ENDPOINT_ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", moto_s3)
    out = "s3://labels/runs/davis"
    assert pseudo_label.main(["--manifest", "s3://corpus/sample/davis", "--output", out, "--checkpoint",
                              str(compact_ckpt), "--actors", "1", *FAST]) == 0
    assert_exactly_once(out, {"judo-a", "judo-b"}, filesystem=s3fs_for(moto_s3))


def test_unreachable_endpoint_is_a_clear_error(tmp_path, capsys, compact_ckpt):  # noqa: F811
    rc = pseudo_label.main(["--manifest", "s3://corpus/m.parquet", "--output", str(tmp_path / "o"),
                            "--checkpoint", str(compact_ckpt), "--endpoint-url", "http://127.0.0.1:9", *FAST])
    assert rc == 2
    assert "s3://corpus/m.parquet" in capsys.readouterr().err
