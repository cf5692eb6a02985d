"""`vos query` runs sandboxed: one read-only statement over the run's own tables. Writing files
(COPY ... TO, ATTACH), reading other files, URLs and extension installs are refused with one line and
exit status 2, locally and on S3 (moto); normal queries still work; --unsafe-sql lifts the sandbox."""
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from jobs import query as q
from jobs import storage as st
from jobs.label.commit import VideoCommit
from jobs.label.run_record import open_run
from jobs.layout import Layout
from job_helpers import ROOT, fake_result, make_bucket, moto_s3  # noqa: F401  (fixture)


def _commit_run(out: str, storage: st.Storage) -> str:
    layout = Layout(out, storage)
    open_run(layout, "safe", {"settings": {"size": 0}})
    for vid in ("a", "b"):
        vc = VideoCommit(layout, vid, "safe")
        vc.begin()
        for t in range(3):
            vc.add(fake_result(t, seed=ord(vid)), f"{t:05d}")
        vc.commit(video_uri=f"/videos/{vid}", settings={"size": 0})
    return out


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    return _commit_run(str(tmp_path_factory.mktemp("safe") / "out"), st.Storage())


@pytest.fixture(scope="module")
def http_server():
    """A web server on 127.0.0.1 that records every request: a refused URL must not be fetched."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def _refused(argv, capsys, *words):
    assert q.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert not captured.out and len(err.splitlines()) == 1 and err.startswith("vos query: error: "), err
    assert all(w in err for w in words), err
    return err


def test_writes_other_files_urls_and_extensions_are_refused(run_output, tmp_path, http_server, capsys):
    url, requests = http_server
    inside = os.path.join(run_output, "videos", "copied.csv")
    outside = str(tmp_path / "copied.csv")
    for sql, words in [
        (f"COPY videos TO '{outside}'", ["not COPY", "--unsafe-sql"]),
        (f"COPY videos TO '{inside}'", ["COPY"]),  # inside the run's own folders: still no writes
        (f"COPY (SELECT * FROM masks) TO '{outside}' (FORMAT parquet)", ["COPY"]),
        (f"ATTACH '{tmp_path / 'x.duckdb'}' AS x", ["ATTACH"]),
        ("INSTALL httpfs", ["not INSTALL/LOAD"]),
        ("FORCE INSTALL httpfs FROM 'http://127.0.0.1:9'", ["INSTALL/LOAD"]),
        ("LOAD httpfs", ["INSTALL/LOAD"]),
        ("SET enable_external_access = true", ["SET"]),
        ("CREATE TABLE t AS SELECT * FROM videos", ["CREATE"]),
        ("SELECT 1; SELECT 2", ["exactly one SQL statement, got 2"]),
        (f"SELECT count(*) FROM videos; COPY videos TO '{outside}'", ["exactly one SQL statement, got 2"]),
        ("SELECT * FROM read_csv('/etc/passwd')", ["Permission Error", "/etc/passwd", "run's tables only"]),
        ("SELECT * FROM read_text('/etc/hostname')", ["Permission Error"]),
        (f"SELECT * FROM read_text('{run_output}/_run.json')", ["Permission Error"]),  # not a table
        ("SELECT * FROM glob('/etc/*')", ["Permission Error"]),
        (f"SELECT * FROM read_parquet('{url}/x.parquet')", ["Permission Error", url]),
        (f"SELECT * FROM read_csv('{url}/x.csv')", ["Permission Error"]),
    ]:
        _refused(["--output", run_output, sql], capsys, *words)
    assert not os.path.exists(inside) and not os.path.exists(outside) and not (tmp_path / "x.duckdb").exists()
    assert requests == []  # nothing was fetched


def test_the_python_api_is_sandboxed_too(run_output, tmp_path):
    from jobs.inspect.read import UnsafeQuery

    with pytest.raises(UnsafeQuery, match="not COPY"):
        q.query(run_output, f"COPY videos TO '{tmp_path / 'x.csv'}'")
    assert not (tmp_path / "x.csv").exists()
    q.query(run_output, f"COPY videos TO '{tmp_path / 'x.csv'}'", unsafe=True)  # the caller asked for it
    assert (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("sql, check", [
    ("SELECT video_id, status FROM videos ORDER BY 1", lambda t: t.column("video_id").to_pylist() == ["a", "b"]),
    ("SELECT count(*) AS n FROM masks", lambda t: t.column("n").to_pylist() == [12]),
    ("SELECT count(*) AS n FROM frames_all JOIN masks_all USING (video_id, frame_index)",
     lambda t: t.column("n").to_pylist() == [12]),
    ("WITH v AS (SELECT * FROM videos) SELECT json_extract_string(settings, '$.size') AS s FROM v LIMIT 1",
     lambda t: t.column("s").to_pylist() == ["0"]),
    ("SELECT o.object_id FROM frames, UNNEST(objects) AS t(o) WHERE video_id = 'a' AND frame_index = 0",
     lambda t: t.column("object_id").to_pylist() == [0, 1, 2]),
    ("DESCRIBE masks", lambda t: "rle" in t.column("column_name").to_pylist()),
    ("SHOW TABLES", lambda t: {"videos", "masks", "frames"} <= set(t.column("name").to_pylist())),
    ("EXPLAIN SELECT * FROM masks", lambda t: t.num_rows >= 1),
    ("SELECT 1 AS one;", lambda t: t.column("one").to_pylist() == [1]),  # a trailing semicolon is one statement
])
def test_reads_still_work(run_output, sql, check):
    assert check(q.query(run_output, sql))


def test_unsafe_sql_lifts_the_sandbox(run_output, tmp_path, capsys):
    out = tmp_path / "all.csv"
    assert q.main(["--output", run_output, "--unsafe-sql", f"COPY videos TO '{out}'"]) == 0
    assert out.read_text().startswith("video_id,")
    assert q.main(["--output", run_output, "--unsafe-sql", "--format", "jsonl",
                   "SELECT count(*) AS n FROM read_csv('/etc/passwd', header = false)"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] > 0


def test_an_empty_run_is_queryable_in_the_sandbox(tmp_path):
    out = str(tmp_path / "empty")
    open_run(Layout(out, st.Storage()), "e", {})
    assert q.query(out, "SELECT count(*) AS n FROM masks").column("n").to_pylist() == [0]


def test_the_command_line_refuses_in_one_line(run_output, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.query", "--output", run_output,
                           f"COPY videos TO '{tmp_path / 'x.csv'}'"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.csv").exists()


def test_on_s3_reads_work_and_the_rest_is_refused(moto_s3, capsys, monkeypatch):  # noqa: F811
    fs = make_bucket(moto_s3, "safe-runs")
    make_bucket(moto_s3, "safe-other")
    fs.pipe("safe-other/secret.csv", b"a,b\n1,2\n")
    storage = st.Storage(endpoint_url=moto_s3)
    out = _commit_run("s3://safe-runs/out", storage)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3)
    for k in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    assert q.main(["--output", out, "--format", "jsonl", "SELECT count(*) AS n FROM masks"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 12}
    _refused(["--output", out, "SELECT * FROM read_csv('s3://safe-other/secret.csv')"], capsys, "Permission Error")
    _refused(["--output", out, "SELECT * FROM read_text('s3://safe-runs/out/_run.json')"], capsys, "Permission Error")
    _refused(["--output", out, "COPY videos TO 's3://safe-runs/out/videos/x.parquet'"], capsys, "COPY")
    assert not fs.exists("safe-runs/out/videos/x.parquet")
