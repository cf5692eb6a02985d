"""Shared helpers and fixtures for the jobs/ tests: a moto S3 server on 127.0.0.1, Ray
authentication for throwaway clusters, a Ray runtime shared by a test module, tiny
random checkpoints and tiny corpora, and readers that check what landed."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "jobs" / "sample_corpus"

#: Small settings that keep a video to a fraction of a second on one CPU core.
FAST = ["--size", "48", "--budget", "20000", "--progress-interval", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Ray authentication ------------------------------------------------------------------

def ray_token_env(tmp_dir: Path) -> dict:
    """Environment for a throwaway Ray cluster with token authentication (the flow Ray
    documents): a token of our own in a file under ``tmp_dir`` (so ~/.ray is not touched),
    ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``. The same variables must be seen
    by `ray start`, by `ray job submit` (which then sends the token) and by drivers."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / "auth_token"
    if not path.exists():
        path.write_text(generate_new_authentication_token())
        path.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


@contextlib.contextmanager
def patched_env(**env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if v is not None})
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_SESSION_TOKEN_DIR: list[Path] = []


def session_token_env(tmp_path_factory) -> dict:
    """One token for the whole test session: Ray's C++ token loader caches the first token a
    process reads, so every cluster a test process talks to must use the same one."""
    if not _SESSION_TOKEN_DIR:
        _SESSION_TOKEN_DIR.append(tmp_path_factory.getbasetemp() / "ray_auth")
    return ray_token_env(_SESSION_TOKEN_DIR[0])


@contextlib.contextmanager
def local_ray(tmp_path_factory, num_cpus: int = 2, **env):
    """An in-process local Ray (no dashboard, token auth); ``env`` is set first, so the
    workers it spawns inherit it (e.g. S3 credentials)."""
    import ray

    token_path = session_token_env(tmp_path_factory)["RAY_AUTH_TOKEN_PATH"]
    # RAY_AUTH_MODE unset: ray.init() enables token auth for the new local cluster itself (and refreshes
    # this process's cached config, which setting the variable after `import ray` would not) and uses
    # the token at RAY_AUTH_TOKEN_PATH.
    with patched_env(RAY_AUTH_TOKEN_PATH=token_path, RAY_AUTH_MODE=None, RAY_ADDRESS=None, **env):
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    """One in-process local Ray (2 CPUs) shared by the tests of a module."""
    with local_ray(tmp_path_factory) as ray:
        yield ray


# -- S3 on moto -----------------------------------------------------------------------------

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def moto_s3():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL. Dummy credentials are set for the module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with patched_env(**S3_ENV):
        try:
            yield endpoint
        finally:
            server.stop()


def s3fs_for(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def make_bucket(endpoint: str, name: str):
    fs = s3fs_for(endpoint)
    fs.mkdir(name)
    return fs


# -- checkpoints and corpora -----------------------------------------------------------------

def random_compact_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch
    from vos_core.model import AFBURR, COMPACT, save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(AFBURR(COMPACT), str(path), seed=seed)
    return path


@pytest.fixture(scope="session")
def compact_ckpt(tmp_path_factory) -> Path:
    return random_compact_checkpoint(tmp_path_factory.mktemp("ckpt") / "compact_random.pth")


def write_video_folder(folder: Path, frames: int, h: int = 36, w: int = 64, seed: int = 0) -> Path:
    """A folder of ``frames`` small JPEG frames (a bright square moving over noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    for i in range(frames):
        img = base.copy()
        x = (4 + 2 * i) % (w - 12)
        img[8:20, x:x + 12] = (230, 200, 40)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def write_mask(path: Path, h: int = 36, w: int = 64, box=(8, 20, 4, 16), oid: int = 1) -> Path:
    """A rectangle id map (y0, y1, x0, x1) as a greyscale PNG."""
    from PIL import Image

    ids = np.zeros((h, w), dtype=np.uint8)
    y0, y1, x0, x1 = box
    ids[y0:y1, x0:x1] = oid
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids, mode="L").save(path)
    return path


def tiny_corpus(root: Path, n: int, frames: int = 4, ids: list[str] | None = None) -> Path:
    """``n`` small videos (folders of frames + a first-frame PNG) and a CSV manifest of them."""
    import csv

    ids = ids or [f"vid{i:02d}" for i in range(n)]
    rows = []
    for i, vid in enumerate(ids):
        d = root / f"v{i:02d}"
        write_video_folder(d / "frames", frames, seed=i)
        write_mask(d / "mask.png")
        rows.append({"video_id": vid, "video_uri": str(d / "frames"), "annotations_uri": str(d / "mask.png")})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video_id", "video_uri", "annotations_uri"])
        w.writeheader()
        w.writerows(rows)
    return manifest


# -- reading what landed ------------------------------------------------------------------------

def read_table(output: str, table: str, filesystem=None):
    """A table as a plain glob reader sees it (every file under <table>/, hive partitioning)."""
    import pyarrow.dataset as ds

    if filesystem is not None:
        from pyarrow.fs import FSSpecHandler, PyFileSystem
        filesystem = PyFileSystem(FSSpecHandler(filesystem))
        output = output.split("://", 1)[1] if "://" in output else output
    from jobs.schema import SCHEMAS

    d = ds.dataset(f"{output.rstrip('/')}/{table}", format="parquet", partitioning="hive", filesystem=filesystem)
    if not d.files:
        return SCHEMAS[table].empty_table()
    return d.to_table()


def assert_exactly_once(output: str, expected_ok: set[str], filesystem=None) -> dict:
    """Every committed video's rows are there once: no duplicate keys, per-video row counts equal
    the commit record's, and the ok videos are exactly ``expected_ok``. Returns the videos by id."""
    videos = read_table(output, "videos", filesystem).to_pylist()
    by_id = {v["video_id"]: v for v in videos}
    assert len(by_id) == len(videos), "a video has two commit records"
    ok = {v for v, r in by_id.items() if r["status"] == "ok"}
    assert ok == expected_ok
    masks = read_table(output, "masks", filesystem)
    frames = read_table(output, "frames", filesystem)
    mkeys = list(zip(masks["video_id"].to_pylist(), masks["frame_index"].to_pylist(), masks["object_id"].to_pylist()))
    fkeys = list(zip(frames["video_id"].to_pylist(), frames["frame_index"].to_pylist()))
    dup_m = [k for k, c in Counter(mkeys).items() if c > 1]
    dup_f = [k for k, c in Counter(fkeys).items() if c > 1]
    assert not dup_m, f"duplicate mask rows: {dup_m[:5]}"
    assert not dup_f, f"duplicate frame rows: {dup_f[:5]}"
    per_video_m = Counter(k[0] for k in mkeys)
    per_video_f = Counter(k[0] for k in fkeys)
    for vid in ok:
        assert per_video_m[vid] == by_id[vid]["masks_rows"] > 0, vid
        assert per_video_f[vid] == by_id[vid]["frames"] > 0, vid
    for vid, r in by_id.items():
        if r["status"] == "failed":
            assert per_video_m[vid] == 0 and per_video_f[vid] == 0, f"failed video {vid} has rows"
    attempts_m = {(v, a) for v, a in zip(masks["video_id"].to_pylist(), masks["attempt"].to_pylist())}
    for vid, a in attempts_m:
        if vid in ok:
            assert a == by_id[vid]["attempt"], f"{vid}: mask rows of attempt {a}, committed {by_id[vid]['attempt']}"
    return by_id


def run_job_subprocess(args: list[str], env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m jobs.pseudo_label ARGS`` in a child process (own local Ray unless RAY_ADDRESS)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "jobs.pseudo_label", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def ray_cli() -> str:
    exe = shutil.which("ray", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    assert exe, "the ray CLI is not installed"
    return exe


def wait_for(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- comparing with the segmenter alone ----------------------------------------------------------

def reference_masks(ckpt, frames_uri: str, annotations, size=48, budget=20000, resize_annotations=False,
                    storage_options=None) -> dict[int, np.ndarray]:
    """{frame index: id map} from running vos_core.Segmenter directly (1 torch thread, like a
    1-CPU actor). ``annotations``: a dict {frame: id map} or an annotation folder URI."""
    import torch
    from vos_core import Segmenter, load_model
    from vos_core.io import load_annotations, open_frames

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model(str(ckpt))
        seg = Segmenter(model, size=size, budget=budget, resize_annotations=resize_annotations, keep_probs=False)
        frames = open_frames(frames_uri, storage_options=storage_options)
        if not isinstance(annotations, dict):
            annotations = load_annotations(annotations, frame_names=frames.names, storage_options=storage_options)
        return {r.index: r.mask for r in seg.run(frames, annotations)}
    finally:
        torch.set_num_threads(threads)


def job_masks(output: str, video_id: str, filesystem=None) -> dict[int, np.ndarray]:
    """{frame index: id map} rebuilt from a video's committed ``masks`` rows (pycocotools decode)."""
    from pycocotools import mask as mask_utils

    masks = read_table(output, "masks", filesystem).to_pylist()
    frames = read_table(output, "frames", filesystem).to_pylist()
    out = {}
    for f in frames:
        if f["video_id"] == video_id:
            out[f["frame_index"]] = np.zeros((f["height"], f["width"]), np.uint16)
    for m in masks:
        if m["video_id"] == video_id:
            bits = mask_utils.decode({"size": [m["height"], m["width"]], "counts": m["rle"].encode()})
            assert bits.sum() == m["area"]
            out[m["frame_index"]][bits.astype(bool)] = m["object_id"]
    return out


def assert_same_masks(got: dict, want: dict, what: str = "") -> None:
    assert sorted(got) == sorted(want), f"{what}: frames {sorted(got)} != {sorted(want)}"
    for t in want:
        assert got[t].shape == want[t].shape, f"{what} frame {t}: shape"
        diff = int((got[t] != want[t]).sum())
        assert diff == 0, f"{what} frame {t}: {diff} pixels differ from the segmenter's mask"


# -- results without a model ------------------------------------------------------------------

def fake_result(t: int, object_ids=(0, 1, 2), h=24, w=40, seed=0, annotated=False, with_u=False):
    """A ``vos_core.FrameResult`` of random probabilities (statistics computed as the segmenter does);
    ``with_u``: with its U map (stored as ``frames.u_map_png``)."""
    import torch
    from vos_core.inference.segmenter import FrameResult
    from vos_core.inference.stats import compute_stats

    g = torch.Generator().manual_seed(seed * 1000 + t)
    probs = torch.softmax(torch.randn(len(object_ids), h, w, generator=g) * 3, 0)
    labels = probs.argmax(0)
    u = torch.rand(h, w, generator=g)
    stats = compute_stats(probs, labels, u, list(object_ids), [10] * len(object_ids), [0] * len(object_ids))
    mask = np.asarray(object_ids, dtype=np.uint16 if max(object_ids) > 255 else np.uint8)[labels.numpy()]
    return FrameResult(index=t, object_ids=list(object_ids), mask=mask, probs=None,
                       uncertainty=u.numpy() if with_u else None, stats=stats, annotated=annotated)


def pids_under(temp_dir: str) -> list[int]:
    """Processes whose command line names a throwaway cluster's private temp dir (Linux /proc)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            with contextlib.suppress(OSError), open(f"/proc/{d}/cmdline", "rb") as f:
                if temp_dir.encode() in f.read():
                    pids.append(int(d))
    return pids


def stop_cluster(head: subprocess.Popen, temp_dir: str) -> None:
    """Ends exactly the processes of a `ray start --head --block` cluster: its process group (SIGTERM, then
    SIGKILL), then anything still running under its --temp-dir. Not `ray stop --force`, which would kill every
    Ray on the machine."""
    for sig, grace in [(signal.SIGTERM, 20), (signal.SIGKILL, 10)]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, sig)
        try:
            head.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    if not sigkill_until_gone(lambda: pids_under(temp_dir), timeout=15, interval=0.5):
        raise AssertionError(f"Ray processes left running: {pids_under(temp_dir)}")


def sigkill_until_gone(find, timeout: float, interval: float) -> bool:
    """SIGKILLs the pids ``find()`` returns until it returns none (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = find()
        if not left:
            return True
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(interval)
    return False
