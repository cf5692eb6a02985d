"""`python -m jobs.query` on a run committed without Ray: every format with list, struct and binary
columns, SQL errors as one line and exit 2, the table format's row limit, --decode-video."""
import base64
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from jobs import codec
from jobs import query as q
from jobs import storage as st
from jobs.label.commit import VideoCommit
from jobs.label.run_record import open_run
from jobs.layout import Layout
from job_helpers import ROOT, fake_result
from vos_core.io import read_id_map


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """Two committed videos of 6 frames and 2 objects each (masks: 24 rows), U maps stored."""
    out = str(tmp_path_factory.mktemp("query") / "out")
    layout = Layout(out, st.Storage())
    open_run(layout, "q", {"settings": {"size": 0}})
    for vid in ("a", "b"):
        vc = VideoCommit(layout, vid, "q")
        vc.begin()
        for t in range(6):
            vc.add(fake_result(t, seed=ord(vid), with_u=True), f"{t:05d}")
        vc.commit(video_uri=f"/videos/{vid}", settings={"size": 0})
    return out


def test_csv_writes_nested_columns_as_json_and_binary_as_base64(run_output, capsys):
    assert q.main(["--output", run_output, "--format", "csv", "SELECT * FROM masks ORDER BY video_id, frame_index, "
                   "object_id"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    want = q.query(run_output, "SELECT * FROM masks ORDER BY video_id, frame_index, object_id").to_pylist()
    assert len(rows) == len(want) == 24
    for got, row in zip(rows, want):
        assert json.loads(got["bbox"]) == row["bbox"] and got["rle"] == row["rle"]
    assert q.main(["--output", run_output, "--format", "csv", "SELECT * FROM frames ORDER BY video_id, frame_index"]) == 0
    frames = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    objects = json.loads(frames[0]["objects"])
    assert [o["object_id"] for o in objects] == [0, 1, 2] and set(objects[0]) >= {"area", "bbox", "bank_size"}
    u = codec.decode_u_map(base64.b64decode(frames[0]["u_map_png"]))
    assert u.shape == (24, 40) and 0 <= u.min() <= u.max() <= 1


def test_jsonl_writes_binary_as_base64(run_output, capsys):
    assert q.main(["--output", run_output, "--format", "jsonl", "SELECT u_map_png, objects FROM frames LIMIT 1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert base64.b64decode(row["u_map_png"]).startswith(b"\x89PNG") and row["objects"][0]["object_id"] == 0


def test_table_says_how_many_rows_were_cut(run_output, capsys):
    assert q.main(["--output", run_output, "SELECT video_id, frame_index, object_id FROM masks"]) == 0
    text = capsys.readouterr().out
    assert "24 rows" in text and "not shown" not in text  # under the default limit: all of them
    assert q.main(["--output", run_output, "--max-rows", "5", "SELECT frame_index FROM masks ORDER BY 1"]) == 0
    text = capsys.readouterr().out
    assert "19 more row(s) not shown: 24 in all, the first 5 above" in text and "--max-rows" in text
    assert q.main(["--output", run_output, "--max-rows", "0", "SELECT object_id FROM masks"]) == 0
    assert "not shown" not in capsys.readouterr().out
    assert q.main(["--output", run_output, "SELECT * FROM masks WHERE area < 0"]) == 0
    assert capsys.readouterr().out.startswith("(no rows; columns: video_id, frame_index")


@pytest.mark.parametrize("sql, words", [
    ("SELECT * FROM nope", ["Catalog Error", "nope"]),
    ("SELEKT 1", ["Parser Error", "SELEKT"]),
    ("SELECT missing_column FROM videos", ["Binder Error", "missing_column"]),
])
def test_sql_errors_are_one_line_and_exit_2(run_output, capsys, sql, words):
    assert q.main(["--output", run_output, sql]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vos query: error: ") and not captured.out
    assert all(w in err for w in words) and "Traceback" not in err


def test_bad_input_exits_2_like_the_other_commands(run_output, tmp_path, capsys):
    assert q.main(["--output", str(tmp_path / "nothing"), "SELECT 1"]) == 2
    assert "no pseudo-label output here" in capsys.readouterr().err
    assert q.main(["--output", run_output, "--decode-video", "nope", "--to", str(tmp_path / "png")]) == 2
    assert "'nope': no such video" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "jobs.query", "--output", run_output, "SELECT FROM WHERE"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_decode_video_writes_the_committed_masks(run_output, tmp_path, capsys):
    assert q.main(["--output", run_output, "--decode-video", "b", "--to", str(tmp_path / "png")]) == 0
    assert "wrote 6 PNG(s)" in capsys.readouterr().out
    masks = q.query(run_output, "SELECT frame_index, object_id, rle, height, width FROM masks WHERE video_id = 'b'")
    for t in range(6):
        want = np.zeros((24, 40), np.uint8)
        for r in masks.to_pylist():
            if r["frame_index"] == t:
                want[codec.decode_rle(r["rle"], r["height"], r["width"]).astype(bool)] = r["object_id"]
        assert np.array_equal(read_id_map(tmp_path / "png" / f"{t:05d}.png"), want)
