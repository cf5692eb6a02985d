"""Loading and saving checkpoints in the authors' format.

Official files are ``{'model': state_dict, 'epoch': .., 'loss': .., 'seed': ..}``
with no configuration (so they are the ``official`` architecture). Ours add
``'config'``. A bare state_dict is accepted too. Everything goes through
``torch.load(weights_only=True)``: a pickle that is not weights is refused.
"""
from __future__ import annotations

import io
import os

import fsspec
import torch

from .config import OFFICIAL, ModelConfig
from .network import AFBURR

_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file named in the message."""


def _read_bytes(uri: str | os.PathLike, storage_options: dict | None = None) -> bytes:
    try:
        with fsspec.open(str(uri), "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError as e:
        raise CheckpointError(f"{uri}: checkpoint not found") from e
    except Exception as e:  # unreachable bucket, permissions ...
        raise CheckpointError(f"{uri}: cannot read checkpoint: {type(e).__name__}: {e}") from e


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _short(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_checkpoint(uri: str | os.PathLike, storage_options: dict | None = None) -> tuple[dict, ModelConfig, dict]:
    """Returns (state_dict, config, metadata) without building a model."""
    raw = _read_bytes(uri, storage_options)
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{uri}: not a weights file that can be loaded safely (torch.load weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{uri}: expected a dict of weights, got {type(obj).__name__}")
    meta: dict = {}
    if "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
        meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "config")}
        cfg_dict = obj.get("config")
    else:
        state, cfg_dict = obj, None
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise CheckpointError(f"{uri}: not a state_dict (non-tensor entries: {_listing(bad) or 'none, it is empty'})")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        config = OFFICIAL if cfg_dict is None else ModelConfig.from_dict(cfg_dict)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{uri}: bad model config {_short(cfg_dict)}: {e}") from e
    return state, config, meta


def load_model(
    uri: str | os.PathLike,
    device: str | torch.device = "cpu",
    storage_options: dict | None = None,
) -> AFBURR:
    """Builds the network the checkpoint describes and loads it with a strict key check."""
    state, config, meta = read_checkpoint(uri, storage_options)
    model = AFBURR(config)
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    if missing or unexpected:
        parts = [f"{uri}: checkpoint keys do not match the {config.trunk} AFB-URR network"]
        if missing:
            parts.append(f"missing {len(missing)}: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
        raise CheckpointError("; ".join(parts))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{uri}: tensor shapes do not match: {_listing(wrong)}")
    _check_values(state, expected, uri)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    model.working_size = _working_size(meta, uri)
    model.quality_model = _quality_model(meta, uri)
    return model.to(device).eval()


def _check_values(state: dict, expected: dict, uri) -> None:
    """Refuses weights that would load but segment nothing: integer (or bool, complex) tensors where
    the network has floating-point ones (casting them silently truncates), and NaN or infinite
    values (every probability becomes NaN, every mask empty)."""
    not_float = [f"{k} ({str(state[k].dtype).replace('torch.', '')})" for k, v in expected.items()
                 if v.is_floating_point() and not state[k].is_floating_point()]
    if not_float:
        raise CheckpointError(f"{uri}: not floating-point weights where the network needs them: {_listing(not_float)}")
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise CheckpointError(f"{uri}: weights with NaN or infinite values (a diverged or corrupted training run?): "
                              f"{_listing(non_finite)}")


def _quality_model(meta: dict, uri):
    """The fitted quality estimator stored with the weights (``vos calibrate``), if any."""
    state = meta.get("quality")
    if state is None:
        return None
    from ..inference.quality import quality_model_from_state

    try:
        return quality_model_from_state(state)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{uri}: its quality calibration cannot be used: {e}") from e


def _working_size(meta: dict, uri) -> int | None:
    """The shorter side the weights were trained for (``working_size`` in our checkpoints), if recorded."""
    size = meta.get("working_size")
    if size is None:
        return None
    if isinstance(size, torch.Tensor) and size.numel() == 1:
        size = size.item()
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CheckpointError(f"{uri}: working_size must be a positive integer, got {size!r}")
    return size


def save_checkpoint(model: AFBURR, uri: str | os.PathLike, *, epoch: int = 0, loss: float = 0.0, seed: int = 0,
                    half: bool = False, extra: dict | None = None, storage_options: dict | None = None) -> None:
    """Saves in the official layout plus our ``config``. ``half`` stores floating
    tensors as fp16 (they are cast back to fp32 on load)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in model.state_dict().items()}
    write_checkpoint(uri, state, model.config, {"epoch": epoch, "loss": float(loss), "seed": seed, **(extra or {})},
                     storage_options)


def write_checkpoint(uri: str | os.PathLike, state: dict, config: ModelConfig, meta: dict,
                     storage_options: dict | None = None) -> None:
    """Writes ``{'model': state, 'config': ..., **meta}`` (what :func:`read_checkpoint` returns, back)."""
    ckpt = {**meta, "model": state, "config": config.to_dict()}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    with fsspec.open(str(uri), "wb", **(storage_options or {})) as f:
        f.write(buf.getvalue())
