"""Seeing the pseudo-labels: the flag rules on hand-made series, `vos render` and `vos report` on
the real job's output over the sample corpus (plus a video that fails), the stored U map
(``frames.u_map_png``), the unified `vos` command, and the report in a headless browser."""
import csv
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from jobs import pseudo_label
from jobs import storage as st
from jobs.cli import main as vos_main
from jobs.codec import decode_u_map
from jobs.inspect.draw import FILL_ALPHA, heatmap, object_colour
from jobs.inspect.flags import (RULE_JUMP, RULE_LOST, RULE_QUALITY, RULE_SPIKE, VideoSeries, flag_frames,
                                flag_quality, review_frames, robust_z)
from jobs.inspect.report import VideoEntry
from jobs.inspect.read import ReadError, connect
from jobs.inspect.render import RenderError, render_video
from jobs.inspect.report import write_report
from jobs.label.commit import VideoCommit
from jobs.label.run_record import open_run
from jobs.layout import Layout
from job_helpers import FAST, ROOT, SAMPLE, compact_ckpt, job_masks, ray_runtime  # noqa: F401 (fixtures)
from vos_core.io import open_frames

CHROMIUM = "/usr/bin/chromium"
BROKEN = "broken <b>&amp; video"  # fails (no such folder); its id must come out escaped in the HTML


# -- the flag rules -------------------------------------------------------------------------

def _rules(flags):
    return [(f.frame_index, f.rule, f.object_id) for f in flags]


def test_uncertainty_spike_is_flagged_but_not_on_annotated_frames():
    rng = np.random.default_rng(0)
    u = 0.2 + rng.normal(0, 0.01, 20)
    u[7] = 0.6
    u[12] = 0.7
    annotated = np.zeros(20, bool)
    annotated[12] = True  # a given label: never flagged, and not part of the baseline
    flags = flag_frames(np.arange(100, 120), u, {}, annotated)
    assert _rules(flags) == [(107, RULE_SPIKE, None)]
    assert flags[0].value > 3.5


def test_spike_needs_a_real_rise_and_enough_frames():
    flat = np.full(10, 0.3)
    flat[4] = 0.31  # MAD = 0 and a tiny rise: not a spike
    assert flag_frames(range(10), flat, {}) == []
    flat[4] = 0.8  # MAD = 0 but a clear rise: the mean-deviation fallback catches it
    assert _rules(flag_frames(range(10), flat, {})) == [(4, RULE_SPIKE, None)]
    assert flag_frames(range(4), [0.1, 0.1, 0.9, 0.1], {}) == []  # too few frames for a baseline
    assert flag_frames(range(6), [np.nan] * 6, {}) == []
    z = robust_z(np.array([1.0, 2.0, 3.0, np.nan, 100.0]))
    assert np.isnan(z[3]) and z[4] > 10 and abs(z[1]) < 1


def test_area_jumps_and_lost_objects():
    nan = np.nan
    areas = {
        1: [1000, 1000, 1100, 300, 320, 700],  # -73 % at frame 3, +54 % at frame 5
        2: [500, 500, 0, 0, 400, 0],  # lost at 2 (once, not again at 3), back at 4, lost again at 5
        3: [nan, nan, 50, 200, 210, 200],  # appears at 2 (not a jump), 50 -> 200 is a jump at 3
        4: [20, 5, 20, 5, 20, 5],  # too small to judge jumps
    }
    flags = flag_frames(np.arange(6), np.full(6, 0.2), areas)
    assert _rules(flags) == [(2, RULE_LOST, 2), (3, RULE_JUMP, 1), (3, RULE_JUMP, 3), (5, RULE_LOST, 2),
                             (5, RULE_JUMP, 1)]
    jump = {(f.frame_index, f.object_id): f.value for f in flags if f.rule == RULE_JUMP}
    assert jump[(3, 1)] == pytest.approx(-800 / 1100) and jump[(5, 1)] == pytest.approx(380 / 700)
    annotated = [False, False, True, True, False, False]
    assert _rules(flag_frames(np.arange(6), np.full(6, 0.2), areas, annotated)) == [(5, RULE_LOST, 2),
                                                                                     (5, RULE_JUMP, 1)]


def test_quality_flags_the_weakest_object_below_the_threshold():
    nan = np.nan
    q = {1: [1.0, 0.9, 0.3, 0.9, 0.7], 2: [1.0, nan, 0.95, 0.4, nan]}
    flags = flag_quality(np.arange(10, 15), q, [True, False, False, False, False], review_quality=0.5)
    assert [(f.frame_index, f.rule, f.object_id, f.value) for f in flags] == [(12, RULE_QUALITY, 1, 0.3),
                                                                              (13, RULE_QUALITY, 2, 0.4)]
    assert flags[0].primary and "predicted J 0.30" in flags[0].describe()
    assert flag_quality(np.arange(5), q, review_quality=0.25) == []


def _rows(n, quality, area=1000, u=0.2):
    return [{"frame_index": t, "annotated": t == 0, "u_mean": u, "u_max_object": u,
             "objects": [{"object_id": 0, "area": 5000, "quality": None},
                         {"object_id": 1, "area": area, "quality": 1.0 if t == 0 else quality}]} for t in range(n)]


def test_a_video_wrong_throughout_is_flagged_for_review():
    """Steady masks, steady U: no relative rule fires, but every predicted frame's quality is low."""
    steady = VideoSeries.from_rows(_rows(12, quality=0.2))
    assert flag_frames(steady.frame_index, steady.uncertainty, steady.areas, steady.annotated) == []
    e = VideoEntry({"status": "ok", "video_id": "v", "quality_mean": 0.2}, steady, steady.flags())
    assert e.review and e.flagged_frames == list(range(1, 12))
    good = VideoSeries.from_rows(_rows(12, quality=0.9))
    assert not VideoEntry({"status": "ok", "video_id": "w"}, good, good.flags()).review
    # a relative rule alone is a secondary reason where quality exists, the deciding one where it does not
    rows = _rows(12, quality=0.9)
    rows[6]["objects"][1]["area"] = 100  # the area collapses at frame 6
    jump = VideoSeries.from_rows(rows)
    assert [f.rule for f in jump.flags()] == [RULE_JUMP, RULE_JUMP] and review_frames(jump.flags(), True) == []
    for r in rows:
        r["objects"][1].pop("quality")
    old = VideoSeries.from_rows(rows)
    assert not old.has_quality and review_frames(old.flags(), False) == [6, 7]


# -- the real job over the sample corpus -------------------------------------------------------

@pytest.fixture(scope="module")
def job_output(ray_runtime, compact_ckpt, tmp_path_factory):
    """The job's output for the sample corpus (2 folders, 1 mp4) and one video that fails."""
    root = tmp_path_factory.mktemp("render_job")
    manifest = root / "manifest.csv"
    with open(SAMPLE / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["video_uri"], r["annotations_uri"] = str(SAMPLE / r["video_uri"]), str(SAMPLE / r["annotations_uri"])
    rows.append({"video_id": BROKEN, "video_uri": str(root / "missing"), "annotations_uri": str(root / "missing.png"),
                 "start_frame": ""})
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = root / "out"
    assert pseudo_label.main(["--manifest", str(manifest), "--output", str(out), "--checkpoint", str(compact_ckpt),
                              "--actors", "1", "--run-id", "viz", *FAST]) == 0
    return str(out)


def _frame_count(output: str, video_id: str) -> int:
    return connect(output).execute("SELECT count(*) FROM frames WHERE video_id = ?", [video_id]).fetchall()[0][0]


@pytest.mark.slow
def test_render_dir_draws_each_object_where_its_mask_is(job_output, tmp_path):
    to = tmp_path / "judo-a"
    result = render_video(job_output, "judo-a", f"{to}/", uncertainty="none")
    pngs = sorted(to.glob("*.png"))
    assert result.frames == len(pngs) == _frame_count(job_output, "judo-a") == 8
    masks = job_masks(job_output, "judo-a")  # {frame: id map} decoded from the Parquet RLE
    source = open_frames(SAMPLE / "davis" / "JPEGImages" / "judo-a")
    kernel = np.ones((3, 3), np.uint8)
    checked_inside = 0
    for png in pngs:
        t = int(png.stem)
        drawn = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB).astype(int)
        rgb = source.read(t).astype(int)
        ids = masks[t]
        assert drawn.shape == rgb.shape
        for oid in np.unique(ids[ids > 0]):
            inside = cv2.erode((ids == oid).astype(np.uint8), kernel, iterations=2, borderType=cv2.BORDER_CONSTANT,
                               borderValue=0).astype(bool)  # off the contour, also along the frame's edge
            want = rgb[inside] * (1 - FILL_ALPHA) + np.array(object_colour(oid)) * FILL_ALPHA
            assert np.abs(drawn[inside] - want).max() <= 1, f"frame {t} object {oid}: not filled in its colour"
            checked_inside += int(inside.sum())
        far = ~cv2.dilate((ids > 0).astype(np.uint8), kernel, iterations=2).astype(bool)
        assert np.array_equal(drawn[far], rgb[far]), f"frame {t}: pixels away from every mask were changed"
    assert checked_inside > 1000


@pytest.mark.slow
def test_render_mp4_and_gif(job_output, tmp_path):
    has_u = connect(job_output).execute(
        "SELECT count(*) FROM frames WHERE video_id = 'judo-mp4' AND u_map_png IS NOT NULL").fetchall()[0][0] > 0
    mp4 = tmp_path / "judo.mp4"
    result = render_video(job_output, "judo-mp4", str(mp4))  # frames decoded from the corpus's mp4
    assert result.uncertainty == ("beside" if has_u else "none")
    cap = cv2.VideoCapture(str(mp4))
    assert cap.isOpened()
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    assert len(frames) == _frame_count(job_output, "judo-mp4") == 16
    assert frames[0].shape[:2] == (180, 320 * (2 if has_u else 1))
    from PIL import Image

    gif = tmp_path / "judo-b.gif"
    render_video(job_output, "judo-b", str(gif), uncertainty="none", max_side=160)
    with Image.open(gif) as im:
        assert im.n_frames == 11 and im.size == (160, 90)


@pytest.mark.slow
def test_render_refuses_what_it_cannot_draw(job_output, tmp_path):
    with pytest.raises(ReadError, match="failed"):
        render_video(job_output, BROKEN, str(tmp_path / "x.mp4"))
    with pytest.raises(ReadError, match="no such video"):
        render_video(job_output, "nope", str(tmp_path / "x.mp4"))
    with pytest.raises(RenderError, match=r"\.mp4 or \.gif"):
        render_video(job_output, "judo-a", str(tmp_path / "x.avi"))


@pytest.mark.slow
def test_report_names_every_video_and_has_the_plots(job_output, tmp_path):
    index = write_report(job_output, str(tmp_path / "report"))
    text = open(index, encoding="utf-8").read()
    videos = connect(job_output).sql("SELECT video_id, video_key, status FROM videos").fetchall()
    assert len(videos) == 4
    for vid, key, status in videos:
        assert f">{vid.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}<" in text
        if status == "ok":
            for kind in ("plot", "strip"):
                img = tmp_path / "report" / "img" / f"{key}-{kind}.png"
                assert f"img/{key}-{kind}.png" in text and img.stat().st_size > 1000
                assert cv2.imread(str(img)) is not None
    assert "<b>" not in text  # the failing video's id is escaped
    assert "flagged frames" in text and "mean quality" in text and "quality estimate" in text
    # review is decided by quality: an ok video is marked when a predicted frame is below its threshold
    below = dict(connect(job_output).sql("SELECT video_id, frames_below_quality FROM videos "
                                         "WHERE status = 'ok'").fetchall())
    rows_html = text.split("<h2>Videos</h2>")[1].split("</table>")[0]
    for vid, n in below.items():
        row = next(r for r in rows_html.split("<tr>") if f">{vid}<" in r)
        assert ('class="review"' in row) == (n > 0), (vid, n)
    rows = text.split("<h2>Videos</h2>")[1].split("</table>")[0]
    assert rows.index("broken &lt;b&gt;") < rows.index(">judo-a<")  # failed first
    assert "vos run viz" in text and "&quot;size&quot;: 48" in text  # run id and settings


@pytest.mark.slow
def test_report_opens_in_headless_chromium(job_output, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    index = write_report(job_output, str(tmp_path / "report"))
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={shot}", "--window-size=1200,900",
           f"file://{os.path.abspath(index)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 0, proc.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1200)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10, "the screenshot is blank"


@pytest.mark.slow
def test_vos_command_line(job_output, tmp_path, capsys):
    out = tmp_path / "frames"
    assert vos_main(["render", "--output", job_output, "--video", "judo-b", "--to", f"{out}/",
                     "--uncertainty", "blend"]) == 0
    assert len(list(out.glob("*.png"))) == 11 and "wrote 11 frame(s)" in capsys.readouterr().out
    assert vos_main(["render", "--output", job_output, "--video", "nope"]) == 2
    assert "vos render: error: 'nope': no such video" in capsys.readouterr().err
    assert vos_main(["report", "--output", job_output, "--to", str(tmp_path / "r"), "--thumbnails", "0"]) == 0
    assert (tmp_path / "r" / "index.html").exists() and not list((tmp_path / "r" / "img").glob("*-strip.png"))
    capsys.readouterr()
    assert vos_main(["query", "--output", job_output, "--format", "csv",
                     "SELECT count(*) AS n FROM videos WHERE status = 'ok'"]) == 0
    assert capsys.readouterr().out.replace('"', "").split() == ["n", "3"]
    # the module entry points, and vos_core still free of the jobs stack
    proc = subprocess.run([sys.executable, "-m", "jobs.report", "--output", job_output, "--to",
                           str(tmp_path / "r2"), "--thumbnails", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and (tmp_path / "r2" / "index.html").exists(), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "jobs.render", "--output", job_output, "--video", BROKEN],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "failed" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    probe = ("import sys, vos_core, vos_core.cli; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'jobs', 'ray', 'duckdb', 'pyarrow'}))")
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=300).stdout.strip() == "[]"


# -- the stored U map -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def u_output(compact_ckpt, tmp_path_factory):
    """judo-b committed through VideoCommit from a Segmenter that keeps its U maps (no Ray);
    returns (output, {frame: full-size U map})."""
    import torch
    from vos_core import Segmenter, load_model
    from vos_core.io import load_annotations

    out = str(tmp_path_factory.mktemp("u_out") / "out")
    layout = Layout(out, st.Storage())
    open_run(layout, "u", {"settings": {"size": 48}})
    frames_uri = str(SAMPLE / "davis" / "JPEGImages" / "judo-b")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seg = Segmenter(load_model(str(compact_ckpt)), size=48, budget=20000, keep_probs=True)
        frames = open_frames(frames_uri)
        ann = load_annotations(str(SAMPLE / "davis" / "Annotations" / "judo-b"), frame_names=frames.names)
        vc = VideoCommit(layout, "judo-b", "u")
        vc.begin()
        u_maps = {}
        for r in seg.run(frames, ann):
            vc.add(r, frames.name(r.index))
            u_maps[r.index] = r.uncertainty
        vc.commit(video_uri=frames_uri, settings={"size": 48})
    finally:
        torch.set_num_threads(threads)
    return out, u_maps


def test_u_map_column_and_heatmap(u_output, tmp_path):
    out, u_maps = u_output
    rows = connect(out).execute("SELECT frame_index, u_map_png FROM frames ORDER BY frame_index").fetchall()
    assert [t for t, _ in rows] == sorted(u_maps) and all(png for _, png in rows)
    for t, png in rows:
        small = decode_u_map(png)
        assert small.shape == (72, 128)  # 180x320 frames: longest side 128
        want = cv2.resize(u_maps[t], (128, 72), interpolation=cv2.INTER_AREA)
        assert np.abs(small - want).max() <= 1 / 255 + 1e-6
    result = render_video(out, "judo-b", str(tmp_path / "beside") + "/", uncertainty="beside")
    assert result.uncertainty == "beside" and result.frames == len(rows)
    drawn = cv2.cvtColor(cv2.imread(str(tmp_path / "beside" / "00004.png")), cv2.COLOR_BGR2RGB)
    assert drawn.shape == (180, 640, 3)
    assert np.array_equal(drawn[:, 320:], heatmap(decode_u_map(dict(rows)[4]), 180, 320))
    write_report(out, str(tmp_path / "report"))  # a run with U maps reports too
    assert (tmp_path / "report" / "index.html").exists()


def test_frames_rows_without_a_u_map_store_null(tmp_path):
    """A segmenter that keeps no U map (keep_probs=False) gives null, not an error."""
    import torch
    from vos_core.inference.segmenter import FrameResult
    from vos_core.inference.stats import compute_stats

    probs = torch.softmax(torch.randn(2, 12, 20, generator=torch.Generator().manual_seed(0)), 0)
    labels = probs.argmax(0)
    stats = compute_stats(probs, labels, torch.rand(12, 20), [0, 1], [10, 10], [0, 0])
    vc = VideoCommit(Layout(str(tmp_path / "out"), st.Storage()), "v", "r")
    vc.begin()
    vc.add(FrameResult(index=0, object_ids=[0, 1], mask=labels.numpy().astype(np.uint8), probs=None,
                       uncertainty=None, stats=stats, annotated=True), "00000")
    vc.commit(video_uri="v")
    assert connect(str(tmp_path / "out")).sql("SELECT u_map_png FROM frames").fetchall() == [(None,)]


def test_sample_picture_script(compact_ckpt, tmp_path):
    out = tmp_path / "sample.png"
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "make_picture.py"), "--checkpoint", str(compact_ckpt),
                           "--out", str(out), "--count", "3", "--size", "48"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    img = cv2.imread(str(out))
    assert img.shape == (180 * 2 + 4, 320 * 3 + 8, 3)  # 3 overlays above their 3 U maps
