"""Everything deepcomp knows about CompressAI, in one place.

Building an architecture by name and quality, which buffers ``update()``
rebuilds (and so are never stored), the rate-distortion lambdas of the zoo,
and turning a plain state_dict into a model ready for ``compress()``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Iterator, Mapping

import torch
from torch import nn

from .errors import DeepCompError

#: Buffers that ``CompressionModel.update(force=True)`` recomputes from the
#: parameters (EntropyBottleneck and GaussianConditional).  They are not stored.
DERIVED_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")

#: CompressAI's lambda per quality for the MSE models (quality 1..8).
MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}

#: CompressAI's published Kodak results (bpp, PSNR) for bmshj2018-factorized, MSE.
PUBLISHED_FACTORIZED_KODAK = {
    1: (0.1226, 26.91), 2: (0.1885, 28.22), 3: (0.2878, 29.62),
    4: (0.4404, 31.28), 5: (0.6481, 32.96), 6: (0.9670, 35.38),
}


def _image_models() -> dict:
    from compressai.zoo import image_models

    return image_models


def architectures() -> list[str]:
    """Names of the CompressAI image architectures deepcomp can build."""
    return sorted(_image_models())


@contextlib.contextmanager
def _no_conv_init() -> Iterator[None]:
    """Skip the random initialisation of conv weights (most of the build time)."""
    conv = nn.modules.conv._ConvNd
    saved = conv.reset_parameters
    conv.reset_parameters = lambda self: None
    try:
        yield
    finally:
        conv.reset_parameters = saved


def build(arch: str, quality: int, init_weights: bool = True) -> nn.Module:
    """A freshly initialised CompressAI model (never downloads weights).

    ``init_weights=False`` leaves conv weights uninitialised: for callers that
    overwrite every weight at once (``model_from_state_dict``).
    """
    models = _image_models()
    if arch not in models:
        raise DeepCompError(f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(models))}")
    from compressai.zoo.image import cfgs

    if quality not in cfgs.get(arch, {}):
        valid = ", ".join(str(q) for q in sorted(cfgs.get(arch, {})))
        raise DeepCompError(f"quality {quality} does not exist for {arch}; valid: {valid}")
    with contextlib.nullcontext() if init_weights else _no_conv_init():
        return models[arch](quality=quality, pretrained=False)


def is_derived(name: str) -> bool:
    """True for a buffer that ``update(force=True)`` rebuilds."""
    return name.rsplit(".", 1)[-1] in DERIVED_BUFFERS


def strip_derived(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict without the buffers ``update()`` rebuilds."""
    return OrderedDict((k, v) for k, v in state_dict.items() if not is_derived(k))


def canonical_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Today's key names for ``model``: official CompressAI checkpoints use older
    ones (``entropy_bottleneck._matrices.0``, ``_matrix0``, ``downsample``)."""
    from compressai.entropy_models import EntropyBottleneck
    from compressai.models.utils import remap_old_keys
    from compressai.zoo.pretrained import load_pretrained

    own = model.state_dict()
    if all(k in own for k in state_dict):
        return OrderedDict(state_dict)
    renamed = load_pretrained(dict(state_dict))
    for name, module in model.named_modules():
        if isinstance(module, EntropyBottleneck):
            renamed = remap_old_keys(name, renamed)
    return OrderedDict(renamed)


def assign_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> nn.Module:
    """Copy ``state_dict`` strictly into ``model``, derived buffers excepted.

    Every parameter and non-derived buffer of the model must be present with
    the right shape; derived buffers are ignored (``update()`` rebuilds them).
    """
    own = model.state_dict()
    given = strip_derived(canonical_state_dict(model, state_dict))
    missing = [k for k in own if not is_derived(k) and k not in given]
    unexpected = [k for k in given if k not in own]
    wrong = [k for k in given if k in own and tuple(own[k].shape) != tuple(given[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(given[k].shape)} vs {tuple(own[k].shape)})")
        raise DeepCompError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    full = OrderedDict()
    for k, v in own.items():
        full[k] = given[k].to(v.dtype) if k in given else v
    model.load_state_dict(full, strict=True)
    return model


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> nn.Module:
    """``assign_weights``, then ``update(force=True)``: ready for ``compress()``."""
    assign_weights(model, state_dict, source)
    model.update(force=True)
    return model.eval()


def model_from_state_dict(arch: str, quality: int, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> nn.Module:
    """Build ``arch`` at ``quality``, load the weights, update the entropy coders."""
    return load_weights(build(arch, quality, init_weights=False), state_dict, source)


def mse_lambda(quality: int) -> float:
    if quality not in MSE_LAMBDAS:
        raise DeepCompError(f"no MSE lambda for quality {quality}; valid: 1-8")
    return MSE_LAMBDAS[quality]


def output_channel_axes(model: nn.Module) -> dict[str, int]:
    """Axis of the output channels of each conv weight (1 for transposed convs)."""
    axes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            axes[f"{name}.weight"] = 1
        elif isinstance(module, nn.modules.conv._ConvNd):
            axes[f"{name}.weight"] = 0
    return axes
