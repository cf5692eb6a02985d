"""`vos export`: every format round-trips the masks bit for bit through the library that reads it
(pycocotools for COCO and SA-V's RLE, vos_core.io.read_id_map for DAVIS palette PNGs, the Label
Studio brush RLE decoder), --where selects rows by DuckDB, the review set is the frames flagged by
quality, and an s3:// destination (moto on 127.0.0.1) works. The run is made without Ray: the
worker's process_video over the sample corpus (2 folders of frames, 1 mp4)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from jobs.cli import main as vos_main
from jobs.inspect.export import export_run
from jobs.inspect.export_labelstudio import decode_brush, encode_brush
from jobs.inspect.export_select import SelectionError
from jobs.inspect.read import connect
from jobs.label.manifest import load_manifest
from jobs.label.run_record import open_run
from jobs.label.worker import WorkerConfig, process_video
from job_helpers import SAMPLE, compact_ckpt, job_masks, make_bucket, moto_s3, s3fs_for  # noqa: F401 (fixtures)
from vos_core.io import read_id_map


@pytest.fixture(scope="module")
def run_output(compact_ckpt, tmp_path_factory):  # noqa: F811
    import torch
    from vos_core import Segmenter, SegmenterConfig, load_model

    out = str(tmp_path_factory.mktemp("export_run") / "out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seg = Segmenter(load_model(str(compact_ckpt)), SegmenterConfig(size=48, budget=20000, keep_probs=False))
        cfg = WorkerConfig(checkpoint=str(compact_ckpt), model_checksum="sha256:x", output=out, shards=4, run_id="exp",
                           settings=seg.config.to_dict(), review_quality=0.5)
        layout = cfg.layout()
        open_run(layout, "exp", {"settings": cfg.settings, "checkpoint_uri": str(compact_ckpt)})
        for t in load_manifest(str(SAMPLE / "manifest.csv")):
            assert process_video(t, seg, cfg, layout)["status"] == "ok"
    finally:
        torch.set_num_threads(threads)
    return out


def _rows(output, sql):
    return connect(output).sql(sql).to_arrow_table().to_pylist()


def _bits(row):
    return mask_utils.decode({"size": [row["height"], row["width"]], "counts": row["rle"].encode()})


def test_davis_png_round_trip_and_images(run_output, tmp_path):
    to = tmp_path / "davis"
    r = export_run(run_output, str(to), "davis", with_images=True, progress=False)
    assert (r.videos, r.frames) == (3, 8 + 11 + 16) and r.images == r.frames
    for vid in ("judo-a", "judo-b", "judo-mp4"):
        want = job_masks(run_output, vid)  # {frame: id map} decoded from the Parquet
        names = dict(connect(run_output).execute(
            "SELECT frame_index, frame_name FROM frames WHERE video_id = ?", [vid]).fetchall())
        pngs = sorted((to / "Annotations" / vid).glob("*.png"))
        assert len(pngs) == len(want)
        for t, ids in want.items():
            png = to / "Annotations" / vid / f"{names[t]}.png"
            assert Image.open(png).mode == "P"  # a palette PNG, as DAVIS ships
            assert np.array_equal(read_id_map(png), ids), (vid, t)
            jpg = to / "JPEGImages" / vid / f"{names[t]}.jpg"
            assert Image.open(jpg).size == (ids.shape[1], ids.shape[0])
    # a folder of JPEGs is copied as it is, not re-encoded
    src = SAMPLE / "davis" / "JPEGImages" / "judo-a" / "00003.jpg"
    assert (to / "JPEGImages" / "judo-a" / "00003.jpg").read_bytes() == src.read_bytes()


def test_coco_loads_in_pycocotools_and_decodes_to_the_parquet(run_output, tmp_path):
    to = tmp_path / "coco"
    export_run(run_output, str(to), "coco", progress=False)
    coco = COCO(str(to / "annotations.json"))
    rows = _rows(run_output, "SELECT * FROM masks")
    non_empty = [m for m in rows if m["area"]]
    assert len(coco.getImgIds()) == 35 and len(coco.getAnnIds()) == len(non_empty)
    by_key = {(m["video_id"], m["frame_index"], m["object_id"]): m for m in rows}
    for ann in coco.loadAnns(coco.getAnnIds()):
        m = by_key[(ann["video_id"], ann["frame_index"], ann["object_id"])]
        img = coco.loadImgs(ann["image_id"])[0]
        assert (img["video_id"], img["frame_index"]) == (m["video_id"], m["frame_index"])
        assert np.array_equal(coco.annToMask(ann), _bits(m))
        assert ann["score"] == pytest.approx(m["quality"]) and ann["area"] == m["area"] and ann["bbox"] == m["bbox"]


def test_where_selects_rows_by_duckdb(run_output, tmp_path):
    q = sorted(m["quality"] for m in _rows(run_output, "SELECT quality FROM masks WHERE area > 0"))
    cut = q[len(q) // 2]
    where = f"quality >= {cut} AND video_id IN ('judo-a', 'judo-b')"
    want = _rows(run_output, f"SELECT video_id, frame_index, object_id FROM masks WHERE {where} AND area > 0")
    assert 0 < len(want) < len(q)
    export_run(run_output, str(tmp_path / "c"), "coco", where=where, progress=False)
    coco = COCO(str(tmp_path / "c" / "annotations.json"))
    got = [(a["video_id"], a["frame_index"], a["object_id"]) for a in coco.loadAnns(coco.getAnnIds())]
    assert sorted(got) == sorted((w["video_id"], w["frame_index"], w["object_id"]) for w in want)
    # a frame written as DAVIS holds only the selected objects
    export_run(run_output, str(tmp_path / "d"), "davis", where="object_id = 4", progress=False)
    assert sorted(p.name for p in (tmp_path / "d" / "Annotations").iterdir()) == ["judo-b"]
    assert sorted(p.stem for p in (tmp_path / "d" / "Annotations" / "judo-b").iterdir()) == ["00008", "00009", "00010"]
    ids = read_id_map(tmp_path / "d" / "Annotations" / "judo-b" / "00009.png")
    assert np.array_equal(ids, np.where(job_masks(run_output, "judo-b")[9] == 4, 4, 0))
    with pytest.raises(SelectionError, match="nope"):
        export_run(run_output, str(tmp_path / "e"), "coco", where="nope > 1", progress=False)
    with pytest.raises(SelectionError, match="one expression|syntax error"):
        export_run(run_output, str(tmp_path / "e"), "coco", where="true; DROP VIEW masks", progress=False)
    with pytest.raises(SelectionError, match="(?i)permission|access|disabled"):  # the run's tables, no other file
        export_run(run_output, str(tmp_path / "e"), "coco", progress=False,
                   where=f"video_id IN (SELECT * FROM read_text('{SAMPLE / 'manifest.csv'}'))")


def test_sav_masklets_decode_like_sam2s_loader(run_output, tmp_path):
    export_run(run_output, str(tmp_path / "sav"), "sav", progress=False)
    for vid in ("judo-a", "judo-b", "judo-mp4"):
        sav = json.loads((tmp_path / "sav" / f"{vid}.json").read_text())
        want = job_masks(run_output, vid)
        assert sav["video_id"] == vid and sav["masklet_num"] == len(sav["masklet_id"])
        assert sav["masklet_frame_index"] == sorted(want) and len(sav["masklet"]) == len(want)
        for t, per_object in zip(sav["masklet_frame_index"], sav["masklet"]):
            assert len(per_object) == sav["masklet_num"]
            for oid, rle in zip(sav["masklet_id"], per_object):
                bits = mask_utils.decode(rle) > 0  # as sav_dataset/utils/sav_utils.py decodes them
                assert np.array_equal(bits, want[t] == oid), (vid, t, oid)
        if vid == "judo-b":  # objects 3 and 4 appear at frames 3 and 8 (absent before: empty RLE)
            first = dict(zip(sav["masklet_id"], sav["masklet_first_appeared_frame"]))
            assert first[3] >= 3 and first[4] >= 8


def test_review_set_is_the_low_quality_frames_with_their_pre_annotations(run_output, tmp_path):
    to = tmp_path / "review"
    r = export_run(run_output, str(to), "review", progress=False)
    want = {(f["video_id"], f["frame_index"]) for f in _rows(
        run_output, "SELECT f.video_id, f.frame_index FROM frames f JOIN videos v USING (video_id) "
                    "WHERE NOT f.annotated AND f.quality < v.review_quality")}
    assert want and r.frames == len(want)
    coco = COCO(str(to / "annotations.json"))
    imgs = coco.loadImgs(coco.getImgIds())
    assert {(i["video_id"], i["frame_index"]) for i in imgs} == want
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    rows = {(m["video_id"], m["frame_index"], m["object_id"]): m for m in _rows(run_output, "SELECT * FROM masks")}
    for img in imgs:
        assert Image.open(to / "images" / img["file_name"]).size == (img["width"], img["height"])
        frame_objects = {k[2] for k, m in rows.items() if k[:2] == (img["video_id"], img["frame_index"]) and m["area"]}
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert {a["object_id"] for a in anns} == frame_objects  # the whole frame, every object
        for a in anns:
            assert cats[a["category_id"]] == f"object_{a['object_id']}" and a["attributes"]["object_id"] == a["object_id"]
            assert np.array_equal(coco.annToMask(a), _bits(rows[(img["video_id"], img["frame_index"], a["object_id"])]))
    # Label Studio: one task per frame, brush masks decoding to the same bits
    tasks = json.loads((to / "label_studio_tasks.json").read_text())
    assert len(tasks) == len(imgs)
    for tk in tasks:
        for res in tk["predictions"][0]["result"]:
            oid = int(res["value"]["brushlabels"][0].split("_")[1])
            bits = decode_brush(res["value"]["rle"], res["original_height"], res["original_width"])
            assert np.array_equal(bits, _bits(rows[(tk["data"]["video_id"], tk["data"]["frame_index"], oid)]))
        assert tk["data"]["image"].startswith("/data/local-files/?d=images/")
    labels = json.loads((to / "cvat_labels.json").read_text())
    assert sorted(lb["name"] for lb in labels) == sorted(set(cats.values()))
    assert "<BrushLabels" in (to / "label_studio_config.xml").read_text()
    # --where picks other frames: every frame of judo-a with a mask above 0 px
    r2 = export_run(run_output, str(tmp_path / "r2"), "review", where="video_id = 'judo-a'", progress=False)
    assert r2.frames == 8


def test_label_studio_brush_rle_bitstream():
    # 1x2 mask [0, 1] -> RGBA values 0,0,0,0,255,255,255,255: two repeated runs of 4 (field of 3 bits)
    bits = ("{:032b}".format(8) + "00111" + "0010" + "0011" + "0111" + "1111"
            + "1" + "00" + "011" + "00000000" + "1" + "00" + "011" + "11111111")
    bits += "0" * (-len(bits) % 8)
    assert encode_brush(np.array([[0, 1]], np.uint8)) == list(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (7, 13), (300, 400)):
        m = (rng.random(shape) > 0.7).astype(np.uint8)
        m[: shape[0] // 2] = 1  # long runs too (> 2**16 values: split across fields)
        assert np.array_equal(decode_brush(encode_brush(m), *shape), m)


def test_export_to_s3_and_from_the_command_line(run_output, moto_s3, tmp_path, monkeypatch, capsys):  # noqa: F811
    fs = make_bucket(moto_s3, "exports")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3)
    assert vos_main(["export", "--output", run_output, "--to", "s3://exports/coco", "--format", "coco",
                     "--no-progress"]) == 0
    assert "wrote coco to s3://exports/coco: 3 video(s), 35 frame(s)" in capsys.readouterr().out
    local = tmp_path / "a.json"
    fs = s3fs_for(moto_s3)
    fs.get("exports/coco/annotations.json", str(local))
    coco = COCO(str(local))
    ann = coco.loadAnns(coco.getAnnIds())[0]
    row = _rows(run_output, f"SELECT * FROM masks WHERE video_id = '{ann['video_id']}' AND frame_index = "
                            f"{ann['frame_index']} AND object_id = {ann['object_id']}")[0]
    assert np.array_equal(coco.annToMask(ann), _bits(row))
    assert vos_main(["export", "--output", run_output, "--to", "s3://exports/d", "--format", "davis",
                     "--no-progress"]) == 0
    assert np.array_equal(read_id_map(fs.cat_file("exports/d/Annotations/judo-b/00004.png")),
                          job_masks(run_output, "judo-b")[4])
    assert vos_main(["export", "--output", run_output, "--to", str(tmp_path / "x"), "--format", "coco",
                     "--where", "no_such_column = 1"]) == 2
    assert "vos export: error: --where" in capsys.readouterr().err
    assert not Path(tmp_path / "x" / "annotations.json").exists()
