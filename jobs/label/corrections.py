"""Corrections back into the job: ``--corrections URI --parent RUN`` re-segments only the videos
of the parent run that have corrected masks, into a new run (docs/review-loop.md).

The corrections are either a COCO instances JSON (what ``vos export --format review`` writes,
edited in CVAT, Label Studio or by hand: compressed or uncompressed RLE, or polygons), or a folder
``<video_id or video_key>/<frame>.png`` of id maps. Each image is tied to its video and frame by
its ``video_id``/``frame_index`` fields, else by its file name ``<video_key>__<frame_index>.jpg``
(also with a prefix, as Label Studio adds); each mask to its object by ``object_id``, its
``attributes.object_id``, else its category ``object_<id>``.

A corrected mask is one that differs from the parent's mask of that object at that frame: masks
handed back unchanged (a reviewer confirmed them) are not corrections, and a video whose masks all
came back unchanged is not re-run. Each corrected frame becomes an id map of its corrected objects,
staged under ``<new run>/_corrections/<video_key>/<frame>.png``; the worker hands them to
``Segmenter.run(..., corrections=...)``, which replaces those objects there and restarts their
memory from the correction (vos_core's protocol; nothing here pastes masks into the output).
The new run uses the parent's checkpoint and segmentation settings, and its ``_run.json`` names
the parent. A correction that cannot be used (not that frame's size, not valid RLE, an unknown
video, frame or object, the start frame) fails that video only, with ``error_type``
``CorrectionError``; the other videos go on.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field, replace

import numpy as np
from pycocotools import mask as mask_utils

from .. import storage as st
from ..errors import BadInput
from ..codec import decode_rle, encode_id_map_png
from ..layout import DEFAULT_SHARDS, Layout, read_run, read_video, read_videos, video_key
from .manifest import VideoTask

STAGED = "_corrections"
_FLAT_NAME = re.compile(r"__(\d+)\.[A-Za-z0-9]+$")
_CATEGORY = re.compile(r"(?:^|[^0-9])(\d+)$")  # object_<id> (or any name ending in the id)


class CorrectionError(Exception):
    """One video's corrections cannot be used; the video fails alone (``videos.error_type``)."""


class CorrectionsInputError(BadInput):
    """The corrections or the parent run cannot be used at all (exit 2)."""


# -- the parent run ----------------------------------------------------------------------------

class ParentRun:
    """What the corrections are checked against: the parent's committed videos, frames and masks."""

    def __init__(self, uri: str, storage: st.Storage):
        record = read_run(Layout(uri, storage))
        if record is None:
            raise CorrectionsInputError(f"--parent {uri}: no pseudo-label run there (no _run.json)")
        self.layout = Layout(uri, storage, shards=int(record.get("shards", DEFAULT_SHARDS)))
        self.record = record
        rows = read_videos(self.layout).to_pylist()
        self.videos = {r["video_id"]: r for r in rows if r["status"] == "ok"}
        self.failed = {r["video_id"] for r in rows if r["status"] != "ok"}
        self.by_key = {r["video_key"]: r["video_id"] for r in self.videos.values()}
        self._index: dict[str, tuple[dict, set]] = {}

    @property
    def url(self) -> str:
        return self.layout.url()

    def masks(self, video_id: str, frames) -> dict[int, dict[int, np.ndarray]]:
        """{frame: {object: 0/1 mask}} of the parent's committed masks at ``frames``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        v = self.videos[video_id]
        mt = read_video(self.layout, video_id, {"masks": ["frame_index", "object_id", "rle", "attempt"]})["masks"]
        keep = pc.and_(pc.equal(mt["attempt"], v["attempt"]),
                       pc.is_in(mt["frame_index"], value_set=pa.array(sorted(frames), pa.int32())))
        out: dict[int, dict[int, np.ndarray]] = {int(t): {} for t in frames}
        for t, oid, rle in zip(*(mt.filter(keep)[c].to_pylist() for c in ("frame_index", "object_id", "rle"))):
            out[t][oid] = decode_rle(rle, v["height"], v["width"])
        return out

    def index(self, video_id: str) -> tuple[dict[int, str], set[int]]:
        """({frame_index: frame_name}, tracked object ids) of a committed video (its files only, no scan)."""
        if video_id not in self._index:
            import pyarrow.compute as pc

            attempt = self.videos[video_id]["attempt"]
            # its own files or the compacted ones covering it (jobs/layout.py)
            rows = read_video(self.layout, video_id, {"frames": ["frame_index", "frame_name", "attempt"],
                                                      "masks": ["object_id", "attempt"]})
            ft, mt = rows["frames"], rows["masks"]
            ft, mt = ft.filter(pc.equal(ft["attempt"], attempt)), mt.filter(pc.equal(mt["attempt"], attempt))
            names = dict(zip(ft["frame_index"].to_pylist(), ft["frame_name"].to_pylist()))
            self._index[video_id] = (names, set(mt["object_id"].to_pylist()))
        return self._index[video_id]

    def resolve_name(self, name: str) -> str | None:
        """The video a folder or file-name part names: its id, its key, or a key after a prefix."""
        if name in self.videos:
            return name
        if name in self.by_key:
            return self.by_key[name]
        hits = [k for k in self.by_key if name.endswith(k)]
        return self.by_key[max(hits, key=len)] if hits else None


# -- masks: RLE checked before pycocotools decodes it -------------------------------------------

def rle_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString, in Python), or
    ValueError: pycocotools decodes without bounds checks, so a bad string must not reach it."""
    out, p, n = [], 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated run length")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} at {p} is not in the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_segmentation(seg, h: int, w: int) -> np.ndarray:
    """An H×W 0/1 mask from a COCO ``segmentation`` (compressed or uncompressed RLE, or polygons),
    checked against the frame's size; CorrectionError naming what is wrong."""
    if isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise CorrectionError(f"RLE without a valid size [height, width]: {size!r}")
        if list(size) != [h, w]:
            raise CorrectionError(f"mask is {size[1]}x{size[0]} but its frame is {w}x{h}")
        counts = seg.get("counts")
        try:
            if isinstance(counts, str):
                runs = rle_counts(counts)
            elif isinstance(counts, list) and all(isinstance(v, int) for v in counts):
                runs = counts
            else:
                raise ValueError("counts is neither an RLE string nor a list of run lengths")
            if any(r < 0 for r in runs) or sum(runs) != h * w:
                raise ValueError(f"its runs cover {sum(runs)} pixels, not {h}x{w} = {h * w}")
        except ValueError as e:
            raise CorrectionError(f"not valid RLE: {e}") from None
        rle = seg if isinstance(counts, str) else mask_utils.frPyObjects(seg, h, w)
        rle = {"size": [h, w], "counts": rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]}
        return mask_utils.decode(rle)
    if isinstance(seg, list) and seg and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
    raise CorrectionError(f"segmentation is neither RLE nor polygons: {str(seg)[:80]}")


# -- reading the corrections -------------------------------------------------------------------

@dataclass
class VideoCorrections:
    video_id: str
    masks: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict)  # frame -> [(object, bits)]
    error: str | None = None


def _coco_object_id(ann: dict, categories: dict) -> int:
    for v in (ann.get("object_id"), (ann.get("attributes") or {}).get("object_id")):
        if v is not None:
            return int(v)
    m = _CATEGORY.search(str(categories.get(ann.get("category_id"), "")))
    if m:
        return int(m.group(1))
    raise CorrectionError(f"annotation {ann.get('id')}: cannot tell its object (no object_id, category "
                          f"{categories.get(ann.get('category_id'))!r} is not object_<id>)")


def _image_target(img: dict, parent: ParentRun) -> tuple[str, int]:
    """(video_id, frame_index) of a COCO image: its fields, else its file name; the name for errors."""
    if img.get("video_id") is not None and img.get("frame_index") is not None:
        return str(img["video_id"]), int(img["frame_index"])
    name = posixpath.basename(str(img.get("file_name", "")).replace("\\", "/"))
    m = _FLAT_NAME.search(name)
    if not m:
        return name, -1
    stem = name[: m.start()]
    return parent.resolve_name(stem) or stem, int(m.group(1))


def read_coco(data: dict, parent: ParentRun) -> dict[str, VideoCorrections]:
    categories = {c.get("id"): c.get("name") for c in data.get("categories") or []}
    images = {img.get("id"): img for img in data.get("images") or []}
    out: dict[str, VideoCorrections] = {}
    for ann in data.get("annotations") or []:
        img = images.get(ann.get("image_id"))
        if img is None:
            raise CorrectionsInputError(f"annotation {ann.get('id')}: image_id {ann.get('image_id')} is not an image")
        vid, t = _image_target(img, parent)
        vc = out.setdefault(vid, VideoCorrections(vid))
        if vc.error:
            continue
        try:
            if t < 0:
                raise CorrectionError(f"image {img.get('file_name')!r}: cannot tell its video and frame (no "
                                      f"video_id/frame_index, name not <video_key>__<frame_index>.jpg)")
            h, w = _frame_size(parent, vid, t)
            if (img.get("height"), img.get("width")) not in ((None, None), (h, w)):
                raise CorrectionError(f"image {img.get('file_name')!r} is {img.get('width')}x{img.get('height')} "
                                      f"but frame {t} is {w}x{h}")
            oid = _coco_object_id(ann, categories)
            vc.masks.setdefault(t, []).append((oid, decode_segmentation(ann.get("segmentation"), h, w)))
        except CorrectionError as e:
            vc.error = f"{vid!r} frame {t}: {e}"
    return out


def read_png_folders(fs, root: str, parent: ParentRun) -> dict[str, VideoCorrections]:
    from vos_core.errors import AnnotationError
    from vos_core.io import read_id_map

    out: dict[str, VideoCorrections] = {}
    for folder in sorted(fs.ls(root, detail=False)):
        if not fs.isdir(folder):
            continue
        name = posixpath.basename(folder.rstrip("/"))
        vid = parent.resolve_name(name) if name not in parent.videos else name
        vid = vid or name
        vc = out.setdefault(vid, VideoCorrections(vid))
        try:
            if vid not in parent.videos:
                raise CorrectionError("not a committed video of the parent run")
            names = {n: i for i, n in parent.index(vid)[0].items()}
            for png in sorted(p for p in fs.ls(folder, detail=False) if p.lower().endswith(".png")):
                stem = posixpath.splitext(posixpath.basename(png))[0]
                t = names.get(stem, int(stem) if stem.isdigit() else -1)
                h, w = _frame_size(parent, vid, t)
                try:
                    ids = read_id_map(fs.cat_file(png))
                except AnnotationError as e:
                    raise CorrectionError(f"{st.display(fs, png)}: {e}") from None
                if ids.shape != (h, w):
                    raise CorrectionError(f"{st.display(fs, png)} is {ids.shape[1]}x{ids.shape[0]} but frame {t} "
                                          f"is {w}x{h}")
                vc.masks[t] = [(int(o), (ids == o).astype(np.uint8)) for o in np.unique(ids) if o != 0]
        except CorrectionError as e:
            vc.error = f"{vid!r}: {e}"
    return out


def _frame_size(parent: ParentRun, vid: str, t: int) -> tuple[int, int]:
    if vid not in parent.videos:
        why = "its labels failed there" if vid in parent.failed else "no such video"
        raise CorrectionError(f"not a committed video of the parent run {parent.url} ({why})")
    names, _ = parent.index(vid)
    if t not in names:
        raise CorrectionError(f"frame {t} has no labels in the parent run (labelled frames "
                              f"{min(names)}..{max(names)})")
    v = parent.videos[vid]
    return int(v["height"]), int(v["width"])


# -- what changed, and the run that re-segments it ----------------------------------------------

def changed_masks(parent: ParentRun, vc: VideoCorrections) -> dict[int, np.ndarray]:
    """{frame: id map of the objects whose corrected mask differs from the parent's}; CorrectionError
    for an object the video does not track, or a correction at the start frame."""
    _, tracked = parent.index(vc.video_id)
    v = parent.videos[vc.video_id]
    h, w = int(v["height"]), int(v["width"])
    before_all = parent.masks(vc.video_id, vc.masks)
    out = {}
    for t in sorted(vc.masks):
        before = before_all[t]
        ids = None
        for oid, bits in vc.masks[t]:
            if oid not in tracked:
                raise CorrectionError(f"frame {t}: object {oid} is not tracked in this video (tracked: "
                                      f"{sorted(tracked)}); a new object needs an annotation")
            if np.array_equal(bits.astype(bool), before.get(oid, np.zeros((h, w), np.uint8)).astype(bool)):
                continue  # handed back as it was: confirmed, not corrected
            if t == v.get("start_frame"):
                raise CorrectionError(f"frame {t} is the start frame, whose masks are the given annotation: "
                                      f"correct the annotation itself")
            if ids is None:
                ids = np.zeros((h, w), np.uint16 if max(tracked) > 255 else np.uint8)
            ids[bits.astype(bool)] = oid
        if ids is not None:
            out[t] = ids
    return out


def _stem(frame_name: str | None, frame_index: int) -> str:
    """A frame's file stem, as the worker names it: its name when that is a safe file name, else its index."""
    if frame_name and re.fullmatch(r"[A-Za-z0-9_.-]+", frame_name) and frame_name not in (".", ".."):
        return frame_name
    return f"{frame_index:05d}"


@dataclass
class Prepared:
    """A corrections run, before it starts: the parent, the options it runs with, its videos."""

    options: object  # JobOptions with the parent's checkpoint and settings
    parent: ParentRun
    tasks: list[VideoTask]  # the corrected videos (their corrections staged by ``stage``)
    fixes: dict[str, dict[int, np.ndarray]]
    rejected: dict[str, str]  # video_id -> why its corrections cannot be used
    unchanged: list[str]  # videos whose corrections equal the parent's masks: not re-run

    @property
    def record(self) -> dict:
        """What ``_run.json`` says of it."""
        return {"parent_run": self.parent.record.get("run_id"), "parent_output": self.parent.url,
                "corrections": self.options.corrections, "manifest": self.parent.record.get("manifest")}

    def stage(self, layout: Layout) -> list[VideoTask]:
        """Writes each corrected frame's id map under ``_corrections/`` of the new run; returns the
        tasks pointing at them."""
        tasks = []
        for t in self.tasks:
            names, _ = self.parent.index(t.video_id)
            folder = layout.path(STAGED, video_key(t.video_id))
            st.makedirs(layout.fs, folder)
            for i, ids in sorted(self.fixes[t.video_id].items()):
                st.put_atomic(layout.fs, posixpath.join(folder, f"{_stem(names[i], i)}.png"), encode_id_map_png(ids),
                              layout.staging)
            tasks.append(replace(t, corrections_uri=layout.url(STAGED, video_key(t.video_id))))
        return tasks


def _inherit(options, parent: ParentRun):
    """``options`` with the parent's checkpoint and segmentation settings; an option given on the
    command line that contradicts them is refused (the new run's labels must be comparable)."""
    from vos_core.inference import SegmenterConfig

    from .options import JobOptions

    rec = parent.record
    if not rec.get("settings") or not rec.get("checkpoint_uri"):
        raise CorrectionsInputError(f"--parent {parent.url}: its _run.json records no settings or checkpoint")
    default = JobOptions()
    if options.checkpoint not in (default.checkpoint, rec["checkpoint_uri"]):
        raise CorrectionsInputError(f"--checkpoint {options.checkpoint}: a corrections run uses its parent's "
                                    f"checkpoint ({rec['checkpoint_uri']})")
    settings = {k: v for k, v in rec["settings"].items() if k in SegmenterConfig.__dataclass_fields__}
    theirs = SegmenterConfig.from_dict(settings)
    given, d = options.segmenter.to_dict(), default.segmenter.to_dict()
    clash = [k for k, v in given.items() if v != d[k] and v != getattr(theirs, k)]
    if clash:
        raise CorrectionsInputError(f"a corrections run uses its parent's settings; "
                                    f"{', '.join(f'--{k.replace(chr(95), chr(45))} {given[k]}' for k in clash)} "
                                    f"differ from them ({', '.join(f'{k}={getattr(theirs, k)}' for k in clash)})")
    return replace(options, checkpoint=rec["checkpoint_uri"], segmenter=theirs)


def _read(uri: str, storage: st.Storage, parent_hint: list) -> tuple[object, str]:
    fs, path = storage.resolve(uri)
    if fs.isdir(path):
        return ("png", (fs, path)), uri
    if not fs.isfile(path):
        raise CorrectionsInputError(f"--corrections {uri}: no such file or folder")
    try:
        data = json.loads(fs.cat_file(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorrectionsInputError(f"--corrections {uri}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CorrectionsInputError(f"--corrections {uri}: not a COCO JSON (no annotations list)")
    parent_hint.append((data.get("info") or {}).get("vos_output"))
    return ("coco", data), uri


def prepare(options, storage: st.Storage) -> Prepared:
    """Reads and checks the corrections against the parent run (nothing is written)."""
    hint: list = []
    (kind, data), _ = _read(options.corrections, storage, hint)
    parent_uri = options.parent or (hint[0] if hint else None)
    if not parent_uri:
        raise CorrectionsInputError(f"--corrections {options.corrections}: pass --parent RUN (the output of the run "
                                    f"the corrections are for; this file does not name it)")
    parent = ParentRun(parent_uri, storage)
    if options.output and Layout(options.output, storage).url() == parent.url:
        raise CorrectionsInputError(f"--output {options.output} is the parent run: a corrections run writes a new "
                                    f"run and leaves its parent as it is")
    found = read_coco(data, parent) if kind == "coco" else read_png_folders(*data, parent)
    tasks, fixes, rejected, unchanged = [], {}, {}, []
    for vid, vc in sorted(found.items()):
        try:
            if vc.error:
                raise CorrectionError(vc.error)
            changed = changed_masks(parent, vc)
        except CorrectionError as e:
            rejected[vid] = str(e)
            continue
        if not changed:
            unchanged.append(vid)
            continue
        v = parent.videos[vid]
        fixes[vid] = changed
        tasks.append(VideoTask(vid, v["video_uri"], v["annotations_uri"], v.get("start_frame")))
    return Prepared(_inherit(options, parent), parent, tasks, fixes, rejected, unchanged)
