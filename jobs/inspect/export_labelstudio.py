"""Label Studio pre-annotations: brush masks in Label Studio's own RLE.

Label Studio's COCO importer (label-studio-converter) takes polygons and boxes only, so masks go
in as ``brushlabels`` results, whose ``rle`` is the bit-packed run-length code of thi.ng's
rle-pack that Label Studio's brush tool decodes: a header (value count: 32 bits, word size - 1:
5 bits, four run-length field sizes - 1: 4 bits each), then runs; a repeated run is bit 1, a 2-bit
index into the field sizes, the run length - 1 in that many bits, then the value in one word. The
values are the mask as an RGBA image, row-major (H × W × 4 bytes, 255 inside), as Label Studio's
converter writes and reads them (``brush.decode_rle``, reshaped to [height, width, 4]).
"""
from __future__ import annotations

import numpy as np

WORD_BITS = 8
RUN_FIELDS = (3, 4, 8, 16)  # bits of a run length field (the sizes Label Studio's converter uses)


def _runs(values: np.ndarray):
    """(lengths, values) of the runs of a 1-D array."""
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(values)]])
    return ends - starts, values[starts]


def encode_brush(mask: np.ndarray) -> list[int]:
    """An H×W 0/1 mask as a Label Studio brush ``rle`` (a list of byte values)."""
    values = np.repeat((np.asarray(mask) > 0).astype(np.uint8).ravel() * 255, 4)
    bits = [f"{len(values):032b}", f"{WORD_BITS - 1:05b}", "".join(f"{s - 1:04b}" for s in RUN_FIELDS)]
    limit = 1 << RUN_FIELDS[-1]
    for length, value in zip(*_runs(values)):
        length = int(length)
        while length > 0:
            n = min(length, limit)
            k = next(i for i, s in enumerate(RUN_FIELDS) if n - 1 < (1 << s))
            bits.append(f"1{k:02b}{n - 1:0{RUN_FIELDS[k]}b}{int(value):0{WORD_BITS}b}")
            length -= n
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def decode_brush(rle: list[int], height: int, width: int) -> np.ndarray:
    """The inverse of :func:`encode_brush` (any rle-pack stream): the H×W 0/1 mask of its alpha channel."""
    stream = "".join(f"{b:08b}" for b in rle)
    pos = 0

    def read(n):
        nonlocal pos
        v = int(stream[pos:pos + n], 2) if n else 0
        pos += n
        return v

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeated = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeated:
            out[i:j] = read(word)
        else:
            for t in range(i, j):
                out[t] = read(word)
        i = j
    return (out.reshape(height, width, 4)[..., 3] > 0).astype(np.uint8)


def label_config(labels: list[str], colours: list[str]) -> str:
    """A labeling config for the review set: the image and one brush label per object."""
    items = "".join(f'    <Label value="{n}" background="{c}"/>\n' for n, c in zip(labels, colours))
    return ('<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="label" toName="image">\n{items}  </BrushLabels>\n</View>\n')


def task(image_url: str, masks: list[tuple[str, np.ndarray, float | None]], model_version: str,
         score: float | None, data: dict) -> dict:
    """One Label Studio task: the image and its pre-annotations as a prediction."""
    result = []
    for i, (label, bits, quality) in enumerate(masks):
        h, w = bits.shape
        result.append({"id": f"m{i}", "type": "brushlabels", "from_name": "label", "to_name": "image",
                       "original_width": int(w), "original_height": int(h), "image_rotation": 0,
                       "value": {"format": "rle", "rle": encode_brush(bits), "brushlabels": [label]},
                       **({} if quality is None else {"score": float(quality)})})
    prediction = {"model_version": model_version, "result": result}
    if score is not None:
        prediction["score"] = float(score)
    return {"data": {"image": image_url, **data}, "predictions": [prediction]}
