"""How a mask and a U map are stored in a table cell, both ways: COCO compressed RLE strings
(``masks.rle``) and small greyscale PNGs (``frames.u_map_png``). The job encodes, the readers
decode; both import this module and nothing of each other."""
from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

#: Longest side of the stored U map: enough to see where the model hesitates, a few kB per frame.
U_MAP_MAX_SIDE = 128


def encode_rles(mask: np.ndarray, object_ids: list[int]) -> list[str]:
    """COCO compressed RLE of ``mask == id`` for each id (pycocotools, column-major)."""
    if not object_ids:
        return []
    ids = np.asarray(object_ids, dtype=mask.dtype)
    stack = np.asfortranarray((mask[:, :, None] == ids[None, None, :]).astype(np.uint8))
    return [r["counts"].decode("ascii") for r in mask_utils.encode(stack)]


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """H×W uint8 0/1 mask of one ``masks`` row."""
    return mask_utils.decode({"size": [int(height), int(width)], "counts": rle.encode("ascii")})


def encode_id_map_png(ids: np.ndarray) -> bytes:
    """An id map as PNG bytes: a DAVIS-palette PNG (what DAVIS, YouTube-VOS, XMem, Cutie read) when
    every id fits in 8 bits, else 16-bit greyscale; ``vos_core.io.read_id_map`` reads both."""
    if ids.size and int(ids.max()) > 255:
        ok, png = cv2.imencode(".png", ids.astype(np.uint16))
        if not ok:
            raise ValueError("cannot encode a 16-bit id map")
        return png.tobytes()
    import io

    from PIL import Image
    from vos_core.io import davis_palette

    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(davis_palette().astype(np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode_u_map(u: np.ndarray, max_side: int = U_MAP_MAX_SIDE) -> bytes:
    """The H×W U map (values in (0, 1]) as an 8-bit grey PNG whose longest side is at most
    ``max_side`` (area-averaged: a thin uncertain band stays visible as a fainter line)."""
    u = np.nan_to_num(np.asarray(u, dtype=np.float32), nan=1.0)
    h, w = u.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        u = cv2.resize(u, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    grey = np.clip(np.rint(u * 255.0), 0, 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError("cannot encode the U map as PNG")
    return png.tobytes()


def decode_u_map(png: bytes) -> np.ndarray:
    """The stored U map as float32 in [0, 1], at its stored (small) size."""
    grey = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ValueError("u_map_png is not a readable PNG")
    return grey.astype(np.float32) / 255.0
