"""The review loop end to end on a real local Ray (run -> review export -> an edited COCO JSON ->
corrections run), corrections that cannot be used failing their video only, PNG-folder corrections,
the merged view of a run with its parent, and the annotation protocol: a folder holding every
frame's ground truth gives, to the bit, what the first frame's mask alone gives (DAVIS-2016 val,
through the segmenter and through the job given a DAVIS root)."""
import hashlib
import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import require_shared
from jobs import pseudo_label
from jobs.inspect.export import export_run
from jobs.inspect.lineage import connect_lineage
from jobs.inspect.read import connect
from jobs.label import corrections
from jobs.label.corrections import CorrectionError, decode_segmentation, rle_counts
from jobs.label.options import JobOptions
from job_helpers import SAMPLE, compact_ckpt, job_masks, ray_runtime, read_table  # noqa: F401 (fixtures)
from vos_core.io import write_palette_png

#: At the input size (size 0): a given or corrected mask then comes back exactly as given.
EXACT = ["--size", "0", "--budget", "20000", "--progress-interval", "0", "--actors", "1"]
FAST = ["--size", "48", "--budget", "20000", "--progress-interval", "0", "--actors", "1"]


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _rle(bits):
    return mask_utils.encode(np.asfortranarray(bits.astype(np.uint8)))["counts"].decode("ascii")


@pytest.fixture(scope="module")
def parent_run(ray_runtime, compact_ckpt, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("loop") / "parent"
    assert pseudo_label.main(["--manifest", str(SAMPLE / "manifest.csv"), "--output", str(out), "--checkpoint",
                              str(compact_ckpt), "--run-id", "parent", *EXACT]) == 0
    return out


def _edited_review(parent, tmp_path, video="judo-b", frame=5, object_id=2):
    """The review set of the parent, and its COCO JSON with one mask replaced (a rectangle)."""
    review = tmp_path / "review"
    export_run(str(parent), str(review), "review", progress=False)
    coco = json.loads((review / "annotations.json").read_text())
    image = next(i for i in coco["images"] if (i["video_id"], i["frame_index"]) == (video, frame))
    ann = next(a for a in coco["annotations"] if a["image_id"] == image["id"] and a["object_id"] == object_id)
    fixed = np.zeros((image["height"], image["width"]), np.uint8)
    fixed[40:120, 60:200] = 1
    ann["segmentation"] = {"size": [image["height"], image["width"]], "counts": _rle(fixed)}
    for k in ("video_id", "frame_index", "object_id", "attributes"):  # as a tool may hand it back: names only
        ann.pop(k, None)
    for k in ("video_id", "frame_index"):
        image.pop(k, None)
    image["file_name"] = "3f2a9c-" + image["file_name"]  # a prefix, as Label Studio's upload adds
    return coco, fixed, image


@pytest.mark.slow
def test_the_review_loop(parent_run, compact_ckpt, tmp_path, capsys):  # noqa: F811
    before = _snapshot(parent_run)
    coco, fixed, image = _edited_review(parent_run, tmp_path)
    assert {i["video_id"] for i in coco["images"] if "video_id" in i} >= {"judo-a", "judo-mp4"}  # others reviewed too
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(coco))
    child = tmp_path / "child"
    capsys.readouterr()
    rc = pseudo_label.main(["--corrections", str(edited), "--output", str(child), "--run-id", "fix1",
                            "--progress-interval", "0", "--actors", "1"])  # parent named by the COCO's info
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "1 video(s) to re-segment, 0 refused, 2 handed back unchanged" in text
    # only the corrected video was re-run, and the parent is untouched
    videos = read_table(str(child), "videos").to_pylist()
    assert [(v["video_id"], v["status"], v["correction_frames"]) for v in videos] == [("judo-b", "ok", 1)]
    assert _snapshot(parent_run) == before
    run = json.loads((child / "_run.json").read_text())
    assert run["parent_run"] == "parent" and run["parent_output"] == str(parent_run)
    assert run["settings"] == json.loads((parent_run / "_run.json").read_text())["settings"]
    # the corrected frame's mask is the correction, bit for bit; earlier frames as before, later ones changed
    old, new = job_masks(str(parent_run), "judo-b"), job_masks(str(child), "judo-b")
    assert np.array_equal(new[5] == 2, fixed.astype(bool))
    assert all(np.array_equal(old[t], new[t]) for t in range(5))
    assert sum(int((old[t] != new[t]).sum()) for t in range(6, 11)) > 0
    frames = {f["frame_index"]: f for f in read_table(str(child), "frames").to_pylist()}
    assert frames[5]["annotated"] and not frames[6]["annotated"]
    # queried alone, or with the parent: the corrected video from the new run, the others from the parent
    assert connect(str(child)).sql("SELECT DISTINCT video_id FROM masks").fetchall() == [("judo-b",)]
    merged = connect_lineage(str(child))
    got = dict(merged.sql("SELECT video_id, any_value(run_id) FROM masks GROUP BY 1").fetchall())
    assert got == {"judo-a": "parent", "judo-b": "fix1", "judo-mp4": "parent"}
    n = merged.sql("SELECT count(*) FROM frames").fetchall()[0][0]
    assert n == 8 + 11 + 16
    # the documented plain-DuckDB view gives the same rows
    import duckdb

    con = duckdb.connect()
    sql = open("docs/review-loop.md").read().split("```sql merged-view\n")[1].split("```")[0]
    con.execute(sql.replace("PARENT", str(parent_run)).replace("CHILD", str(child)))
    assert dict(con.sql("SELECT video_id, any_value(run_id) FROM merged_masks GROUP BY 1").fetchall()) == got


@pytest.mark.slow
def test_bad_corrections_fail_their_video_only(parent_run, tmp_path, capsys):
    coco, fixed, image = _edited_review(parent_run, tmp_path)
    first = {}
    for img in coco["images"]:
        first.setdefault(img.get("video_id") or "judo-b", img)
    a_img, mp4_img = first["judo-a"], first["judo-mp4"]
    a_ann = next(a for a in coco["annotations"] if a["image_id"] == a_img["id"])
    a_ann["segmentation"] = {"size": [90, 160], "counts": _rle(np.ones((90, 160), np.uint8))}  # not the frame's size
    m_ann = next(a for a in coco["annotations"] if a["image_id"] == mp4_img["id"])
    m_ann["segmentation"] = {"size": m_ann["segmentation"]["size"], "counts": "0Z~~~~"}  # not valid RLE
    coco["images"].append({"id": 999, "file_name": "x.jpg", "height": 180, "width": 320, "video_id": "nope",
                           "frame_index": 2})
    coco["annotations"].append({"id": 999, "image_id": 999, "category_id": 1, "object_id": 1, "iscrowd": 0,
                                "segmentation": {"size": [180, 320], "counts": _rle(fixed)}, "bbox": [0, 0, 1, 1]})
    edited = tmp_path / "bad.json"
    edited.write_text(json.dumps(coco))
    child = tmp_path / "child2"
    capsys.readouterr()
    assert pseudo_label.main(["--corrections", str(edited), "--parent", str(parent_run), "--output", str(child),
                              "--progress-interval", "0", "--actors", "1"]) == 0
    text = capsys.readouterr().out
    videos = {v["video_id"]: v for v in read_table(str(child), "videos").to_pylist()}
    assert videos["judo-b"]["status"] == "ok"
    for vid, why in (("judo-a", "is 160x90 but its frame is 320x180"), ("judo-mp4", "not valid RLE"),
                     ("nope", "not a committed video of the parent run")):
        assert videos[vid]["status"] == "failed" and videos[vid]["error_type"] == "CorrectionError", vid
        assert why in videos[vid]["error"] and why in text, (vid, videos[vid]["error"])
    assert np.array_equal(job_masks(str(child), "judo-b")[5] == 2, fixed.astype(bool))


@pytest.fixture(scope="module")
def small_parent(compact_ckpt, tmp_path_factory):  # noqa: F811
    """The sample corpus labelled by the worker's process_video (no Ray)."""
    from vos_core import Segmenter, SegmenterConfig, load_model

    from jobs.label.manifest import load_manifest
    from jobs.label.run_record import open_run
    from jobs.label.worker import WorkerConfig, process_video

    out = str(tmp_path_factory.mktemp("png_parent") / "out")
    seg = Segmenter(load_model(str(compact_ckpt)), SegmenterConfig(size=48, budget=20000, keep_probs=False))
    cfg = WorkerConfig(checkpoint=str(compact_ckpt), model_checksum="sha256:x", output=out, shards=4, run_id="p",
                       settings=seg.config.to_dict())
    open_run(cfg.layout(), "p", {"settings": cfg.settings, "checkpoint_uri": str(compact_ckpt)})
    for t in load_manifest(str(SAMPLE / "manifest.csv")):
        assert process_video(t, seg, cfg, cfg.layout())["status"] == "ok"
    return out


@pytest.mark.slow
def test_png_folder_corrections_and_unchanged_masks(small_parent, compact_ckpt, tmp_path):  # noqa: F811
    old_b, old_a = job_masks(small_parent, "judo-b"), job_masks(small_parent, "judo-a")
    corr = tmp_path / "corr"
    fixed = old_b[5].copy()
    fixed[10:60, 20:120] = 3  # object 3 grows over part of the frame
    (corr / "judo-b").mkdir(parents=True)
    write_palette_png(corr / "judo-b" / "00005.png", fixed.astype(np.uint8))
    key = connect(small_parent).sql("SELECT video_key FROM videos WHERE video_id = 'judo-a'").fetchall()[0][0]
    (corr / key).mkdir()  # by video_key, and handed back unchanged
    write_palette_png(corr / key / "00002.png", old_a[2].astype(np.uint8))
    (corr / "unknown").mkdir()
    write_palette_png(corr / "unknown" / "00001.png", old_a[2].astype(np.uint8))
    opts = JobOptions(corrections=str(corr), parent=small_parent, output=str(tmp_path / "child"))
    p = corrections.prepare(opts, opts.storage())
    assert [t.video_id for t in p.tasks] == ["judo-b"] and p.unchanged == ["judo-a"]
    assert list(p.rejected) == ["unknown"] and "not a committed video" in p.rejected["unknown"]
    # only what changed is a correction: object 3's new mask, and object 2 where 3 took its pixels
    changed = [o for o in (2, 3, 4) if not np.array_equal(fixed == o, old_b[5] == o)]
    assert 3 in changed and len(changed) < 3
    assert list(p.fixes["judo-b"]) == [5]
    assert np.array_equal(p.fixes["judo-b"][5], np.where(np.isin(fixed, changed), fixed, 0))
    assert p.options.checkpoint == str(compact_ckpt) and p.options.segmenter.size == 48
    with pytest.raises(corrections.CorrectionsInputError, match="parent's settings"):
        corrections.prepare(JobOptions(corrections=str(corr), parent=small_parent,
                                       segmenter=JobOptions().segmenter.replace(size=96)), opts.storage())
    with pytest.raises(corrections.CorrectionsInputError, match="is the parent run"):
        corrections.prepare(JobOptions(corrections=str(corr), parent=small_parent, output=small_parent),
                            opts.storage())
    start = old_b[0].copy()
    start[:30, :30] = 2
    assert not np.array_equal(start, old_b[0])
    write_palette_png(corr / "judo-b" / "00000.png", start.astype(np.uint8))
    p = corrections.prepare(opts, opts.storage())
    assert "start frame" in p.rejected["judo-b"]


def test_rle_checks():
    bits = np.zeros((6, 5), np.uint8)
    bits[1:4, 2:4] = 1
    rle = _rle(bits)
    assert sum(rle_counts(rle)) == 30
    assert np.array_equal(decode_segmentation({"size": [6, 5], "counts": rle}, 6, 5), bits)
    unc = {"size": [6, 5], "counts": [7, 3, 3, 3, 14]}
    assert decode_segmentation(unc, 6, 5).sum() == 6
    poly = [[1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0]]
    assert decode_segmentation(poly, 6, 5).sum() > 0
    for bad, why in (({"size": [6, 5], "counts": "~~~~"}, "not valid RLE"),  # runs past the frame
                     ({"size": [6, 5], "counts": rle + "5"}, "not valid RLE"),
                     ({"size": [6, 5], "counts": "a b"}, "alphabet"),
                     ({"size": [5, 6], "counts": rle}, "mask is 6x5 but its frame is 5x6"),
                     ({"size": [6, 5], "counts": [7, 3, 3]}, "cover 13 pixels"),
                     ({"counts": rle}, "size"), ("nonsense", "neither RLE nor polygons")):
        with pytest.raises(CorrectionError, match=why):
            decode_segmentation(bad, 6, 5)


# -- the annotation protocol ----------------------------------------------------------------------

def _davis_root(tmp_path, name, every_frame: bool, frames=4):
    src = require_shared("davis16-val-public")
    root = tmp_path / name
    seqs = sorted(p.name for p in (src / "Annotations").iterdir() if p.is_dir())
    for seq in seqs:
        (root / "JPEGImages" / seq).mkdir(parents=True)
        (root / "Annotations" / seq).mkdir(parents=True)
        for i in range(frames):
            shutil.copy(src / "JPEGImages" / seq / f"{i:05d}.jpg", root / "JPEGImages" / seq / f"{i:05d}.jpg")
            if every_frame or i == 0:
                shutil.copy(src / "Annotations" / seq / f"{i:05d}.png", root / "Annotations" / seq / f"{i:05d}.png")
    return root, seqs


@pytest.mark.slow
def test_every_frames_ground_truth_gives_what_the_first_mask_gives(compact_ckpt, tmp_path):  # noqa: F811
    """The segmenter alone, on DAVIS-2016 val (a few frames each)."""
    from vos_core import Segmenter, load_model
    from vos_core.io import load_annotations, open_frames

    full, seqs = _davis_root(tmp_path, "full", True)
    first, _ = _davis_root(tmp_path, "first", False)
    seg = Segmenter(load_model(str(compact_ckpt)), size=48, budget=20000, keep_probs=False)
    for seq in seqs:
        out = {}
        for root in (full, first):
            frames = open_frames(root / "JPEGImages" / seq)
            ann = load_annotations(root / "Annotations" / seq, frame_names=frames.names)
            session = seg.start()
            out[root.name] = [r.mask for r in seg.run(frames, ann, session=session)]
            assert session.annotation_frames == [0]
        assert len(out["full"]) == 4 and all(np.array_equal(a, b) for a, b in zip(out["full"], out["first"])), seq


@pytest.mark.slow
def test_job_on_a_davis_root_uses_the_first_mask_only(ray_runtime, compact_ckpt, tmp_path):  # noqa: F811
    full, seqs = _davis_root(tmp_path, "full", True)
    first, _ = _davis_root(tmp_path, "first", False)
    for root in (full, first):
        assert pseudo_label.main(["--manifest", str(root), "--output", str(tmp_path / f"out_{root.name}"),
                                  "--checkpoint", str(compact_ckpt), "--run-id", "p", *FAST]) == 0
    cols = ["video_id", "frame_index", "object_id", "rle", "area", "bbox", "mean_prob", "u_mean", "u_p95", "quality",
            "annotated"]
    a = read_table(str(tmp_path / "out_full"), "masks").select(cols).sort_by([("video_id", "ascending"),
                                                                           ("frame_index", "ascending")])
    b = read_table(str(tmp_path / "out_first"), "masks").select(cols).sort_by([("video_id", "ascending"),
                                                                             ("frame_index", "ascending")])
    assert a.num_rows == 4 * len(seqs) and a.equals(b)
    for out in ("out_full", "out_first"):
        v = {r["video_id"]: r for r in read_table(str(tmp_path / out), "videos").to_pylist()}
        assert all((v[s]["annotation_frames"], v[s]["annotation_objects"]) == (1, 1) for s in seqs), v
        frames = read_table(str(tmp_path / out), "frames").to_pylist()
        assert [f["frame_index"] for f in frames if f["annotated"]] == [0] * len(seqs)


def test_manifest_column_corrections_uri(tmp_path):
    from jobs.label.manifest import load_manifest

    (tmp_path / "m.csv").write_text("video_id,video_uri,annotations_uri,corrections_uri\n"
                                    "a,frames,ann.png,fixes/a\nb,frames,ann.png,\n")
    a, b = load_manifest(str(tmp_path / "m.csv"))
    assert a.corrections_uri == str(tmp_path / "fixes" / "a") and b.corrections_uri is None
    assert a.to_dict()["corrections_uri"] == a.corrections_uri
