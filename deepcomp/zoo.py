"""Everything deepcomp knows about CompressAI, in one place.

Building an architecture by name and quality, which buffers ``update()``
rebuilds or the constructor sets (and so are never stored), the
rate-distortion lambdas of the zoo,
and turning a plain state_dict into a model ready for ``compress()``.

Channel pruning (``deepcomp.channel_pruning``) needs three more things from
here: the channel groups of an architecture (:func:`channel_groups`), a
thinner model rebuilt from recorded per-group widths (``build(...,
widths=...)``), and the MACs per pixel of each weight (:func:`mac_weights`).
Per-part pruning (``deepcomp.part_pruning``) needs the part of the model each
tensor belongs to (:data:`MODEL_PARTS`, :func:`part_of`, :func:`is_part_weight`).
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

#: Constant buffers that the architecture's constructor sets and training never
#: changes: the lower bounds of ``LowerBound`` (the likelihood bound 1e-9, GDN's
#: beta and gamma bounds, the scale bound), GDN's ``pedestal`` (2**-36), the
#: entropy bottleneck's ``target`` and the masks of masked convolutions.  They
#: are not stored either: a file that stored them raw in fp16 would turn the
#: likelihood bound and the pedestal into 0 (a likelihood of 0 then makes the
#: training loss infinite), so the built model's own values are always used.
CONSTANT_BUFFERS = ("bound", "pedestal", "target", "scale_bound", "mask")

#: CompressAI's lambda per quality for the MSE models (quality 1..8).
MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}

#: CompressAI's published Kodak results (bpp, PSNR) per architecture and quality, MSE models
#: (CompressAI's results/image/kodak/compressai-<arch>_mse_cuda.json).
PUBLISHED_KODAK = {
    "bmshj2018-factorized": {
        1: (0.1226, 26.91), 2: (0.1885, 28.22), 3: (0.2878, 29.62),
        4: (0.4404, 31.28), 5: (0.6481, 32.96), 6: (0.9670, 35.38),
    },
    "bmshj2018-hyperprior": {
        1: (0.1313, 27.58), 2: (0.2089, 29.20), 3: (0.3199, 30.97), 4: (0.4784, 32.84),
        5: (0.6687, 34.53), 6: (0.9388, 36.74), 7: (1.2592, 38.58), 8: (1.6602, 40.56),
    },
}
PUBLISHED_FACTORIZED_KODAK = PUBLISHED_KODAK["bmshj2018-factorized"]


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


def build(arch: str, quality: int, init_weights: bool = True, widths: Mapping[str, int] | None = None) -> nn.Module:
    """A freshly initialised CompressAI model (never downloads weights).

    ``init_weights=False`` leaves conv weights uninitialised: for callers that
    overwrite every weight at once (``model_from_state_dict``).  ``widths``
    (channel group -> number of channels, see :func:`channel_groups`) makes a
    channel-pruned, thinner model: each group's convs, GDNs and entropy
    bottleneck are cut to that many channels (the first ones of the
    initialisation); the architecture is otherwise unchanged.
    """
    model = _build(arch, quality, init_weights)
    if widths:
        thin(model, widths)
    return model


def _build(arch: str, quality: int, init_weights: bool) -> nn.Module:
    models = _image_models()
    if arch not in models:
        raise DeepCompError(f"unknown architecture {arch!r}; choose one of: {', '.join(sorted(models))}")
    from compressai.zoo.image import cfgs

    if quality not in cfgs.get(arch, {}):
        valid = ", ".join(str(q) for q in sorted(cfgs.get(arch, {})))
        raise DeepCompError(f"quality {quality} does not exist for {arch}; valid: {valid}")
    with contextlib.nullcontext() if init_weights else _no_conv_init():
        return models[arch](quality=quality, pretrained=False)


@contextlib.contextmanager
def mixed_precision(model: nn.Module, dtype: torch.dtype, device_type: str) -> Iterator[None]:
    """Run ``model``'s forward passes in ``dtype`` under autocast, but its entropy models in fp32.

    The transforms (convolutions, GDN) are what bf16 speeds up (on the CPU
    with AMX, about 2.2x a training step); the entropy models' likelihoods are
    differences of two sigmoids or CDFs, which bf16's 8-bit mantissa would
    round to 0, so EntropyBottleneck and GaussianConditional get fp32 inputs
    and no autocast.  The parameters stay fp32 (autocast casts copies), so
    the optimiser and the saved weights are unchanged.
    """
    from compressai.entropy_models import EntropyModel

    patched = []

    def fp32(forward):
        def run(*args, **kwargs):
            with torch.autocast(device_type, enabled=False):
                args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
                return forward(*args, **kwargs)

        return run

    for m in model.modules():
        if isinstance(m, EntropyModel):
            m.forward = fp32(m.forward)
            patched.append(m)
    try:
        with torch.autocast(device_type, dtype=dtype):
            yield
    finally:
        for m in patched:
            del m.forward


#: The transforms of CompressAI's image models: convolutions and GDN, what a training step spends its time on
#: (their hyperprior counterparts included); the entropy models are not among them.
TRANSFORMS = ("g_a", "g_s", "h_a", "h_s")


def compile_transforms(model: nn.Module) -> list[str]:
    """``torch.compile`` the model's transforms in place (``nn.Module.compile``), and return their names.

    Compiled, GDN's elementwise operations and their backward run as fewer fused kernels (the speed-up:
    tools/bench_training.py); the parameters, the state_dict keys and the computation (up to float rounding) stay
    the eager model's, so checkpoints and exports do not change. The first step compiles (seconds), and a new input
    shape or the switch to eval (validation) compiles once more. The entropy models stay eager (their custom
    autograd functions and CDF tables).
    """
    names = [n for n in TRANSFORMS if isinstance(getattr(model, n, None), nn.Module)]
    for n in names:
        getattr(model, n).compile()
    return names


def is_derived(name: str) -> bool:
    """True for a buffer that the model rebuilds itself: ``update(force=True)``
    (:data:`DERIVED_BUFFERS`) or its constructor (:data:`CONSTANT_BUFFERS`)."""
    return name.rsplit(".", 1)[-1] in DERIVED_BUFFERS + CONSTANT_BUFFERS


def strip_derived(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict without the buffers the model rebuilds (:func:`is_derived`)."""
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
            thinner = all(len(given[k].shape) == len(own[k].shape) and all(a <= b for a, b in zip(given[k].shape, own[k].shape)) for k in wrong)
            if thinner and not missing and not unexpected:
                parts.append("if it is channel-pruned, its channel widths must be recorded (config \"widths\")")
        raise DeepCompError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    _load_over_own(model, own, given)
    return model


def _load_over_own(model: nn.Module, own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> None:
    """Load ``given`` (in the model's dtypes) into ``model``, its own tensors ``own`` where ``given`` has none."""
    model.load_state_dict(OrderedDict((k, given[k].to(v.dtype) if k in given else v) for k, v in own.items()), strict=True)


def assign_matching_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> dict:
    """Copy the tensors of ``state_dict`` whose name and shape match ``model``'s; leave the rest as built.

    Seeds one architecture with another's parts, e.g. a factorized model's
    ``g_a``/``g_s`` into a hyperprior of the same N and M (its entropy
    bottleneck sits on z, with other shapes, and stays freshly initialised).
    Derived buffers are never copied.  Returns ``{"copied": [...], "kept": [...]}``
    (the model's own names); raises when nothing matches.
    """
    own = model.state_dict()
    given = strip_derived(canonical_state_dict(model, state_dict))
    matching = {k: given[k] for k, v in own.items() if not is_derived(k) and k in given and tuple(given[k].shape) == tuple(v.shape)}
    if not matching:
        raise DeepCompError(f"{source} shares no tensor (same name and shape) with {type(model).__name__}")
    _load_over_own(model, own, matching)
    return {"copied": list(matching), "kept": [k for k in own if not is_derived(k) and k not in matching]}


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> nn.Module:
    """``assign_weights``, then ``update(force=True)``: ready for ``compress()``."""
    assign_weights(model, state_dict, source)
    model.update(force=True)
    return model.eval()


def model_from_state_dict(arch: str, quality: int, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict",
                          widths: Mapping[str, int] | None = None) -> nn.Module:
    """Build ``arch`` at ``quality`` (thinner with ``widths``), load the weights, update the entropy coders."""
    return load_weights(build(arch, quality, init_weights=False, widths=widths), state_dict, source)


def mse_lambda(quality: int) -> float:
    if quality not in MSE_LAMBDAS:
        raise DeepCompError(f"no MSE lambda for quality {quality}; valid: 1-8")
    return MSE_LAMBDAS[quality]


def config_lambda(config: Mapping, quality: int) -> float:
    """The λ a checkpoint's ``config`` records, else CompressAI's MSE λ for ``quality``."""
    v = config.get("lmbda")
    return float(v) if isinstance(v, (int, float)) else mse_lambda(int(quality))


def output_channel_axes(model: nn.Module) -> dict[str, int]:
    """Axis of the output channels of each conv weight (1 for transposed convs)."""
    axes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            axes[f"{name}.weight"] = 1
        elif isinstance(module, nn.modules.conv._ConvNd):
            axes[f"{name}.weight"] = 0
    return axes


# ---------------------------------------------------------------- the parts of a model
#: The parts of a CompressAI image model, by the top-level module a tensor
#: belongs to: the analysis transform, the synthesis transform, and the
#: probability model (the entropy bottleneck; with a hyperprior also ``h_a``,
#: ``h_s`` and the Gaussian conditional, which has no parameters; with a
#: context model also ``context_prediction`` and ``entropy_parameters``).
MODEL_PARTS = {
    "encoder": ("g_a",),
    "decoder": ("g_s",),
    "probability": ("entropy_bottleneck", "h_a", "h_s", "gaussian_conditional", "context_prediction", "entropy_parameters"),
}

#: Parameters of the entropy bottleneck's density model that per-part pruning
#: may zero (``matrices.i``/``factors.i``; ``_matrices.i`` in older
#: CompressAI).  Never ``quantiles`` (the CDF tables' range) or ``biases``.
DENSITY_WEIGHTS = ("matrices", "factors")


def part_of(name: str) -> str:
    """The part (a key of :data:`MODEL_PARTS`) that the state_dict key ``name`` belongs to."""
    top = name.split(".", 1)[0]
    for part, modules in MODEL_PARTS.items():
        if top in modules:
            return part
    raise DeepCompError(f"{name}: no part of the model is known for the module {top!r} (known: "
                        + ", ".join(f"{p}: {'/'.join(m)}" for p, m in MODEL_PARTS.items()) + ")")


def is_part_weight(name: str, shape) -> bool:
    """True for the tensors per-part pruning zeroes: conv and linear weights
    (``*.weight`` with two or more dimensions) and the entropy bottleneck's
    density ``matrices``/``factors``.  Biases, GDN ``beta``/``gamma``,
    ``quantiles`` and buffers are never pruned."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "entropy_bottleneck" and parts[1].lstrip("_") in DENSITY_WEIGHTS and parts[2].isdigit():
        return True
    return parts[-1] == "weight" and len(shape) >= 2


# ---------------------------------------------------------------- channel pruning
#: Architectures whose channel groups :func:`channel_groups` knows.
CHANNEL_PRUNABLE = ("bmshj2018-factorized", "bmshj2018-factorized-relu", "bmshj2018-hyperprior", "mbt2018-mean")


def _conv_axes(m: nn.Module) -> tuple[int, int]:
    """(output axis, input axis) of a conv weight."""
    return (1, 0) if isinstance(m, nn.modules.conv._ConvTransposeNd) else (0, 1)


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd)


def _producer_slots(name: str, m: nn.Module) -> list:
    from .channel_pruning import Slot

    if m.groups != 1:
        raise DeepCompError(f"channel pruning does not support grouped convolutions ({name})")
    slots = [Slot(f"{name}.weight", _conv_axes(m)[0], "producer")]
    if m.bias is not None:
        slots.append(Slot(f"{name}.bias", 0, "producer"))
    return slots


def _sequence_groups(model: nn.Module, seq: str) -> tuple[list, str, str]:
    """The groups inside one ``nn.Sequential`` (conv -> GDN/activation -> conv), and its first and last conv."""
    from compressai.layers import GDN

    from .channel_pruning import ChannelGroup, Slot

    mods = [(f"{seq}.{n}", m) for n, m in getattr(model, seq).named_children()]
    convs = [i for i, (_, m) in enumerate(mods) if _is_conv(m)]
    groups = []
    for a, b in zip(convs, convs[1:]):
        name, prod = mods[a]
        slots = _producer_slots(name, prod)
        point = name
        for n, m in mods[a + 1 : b]:
            if isinstance(m, GDN):
                slots += [Slot(f"{n}.beta", 0), Slot(f"{n}.gamma", 0), Slot(f"{n}.gamma", 1)]
            elif any(True for _ in m.parameters()):
                raise DeepCompError(f"channel pruning does not know the layer {n} ({type(m).__name__})")
            point = n
        cname, cons = mods[b]
        slots.append(Slot(f"{cname}.weight", _conv_axes(cons)[1], "consumer"))
        groups.append(ChannelGroup(name, tuple(slots), point))
    return groups, mods[convs[0]][0], mods[convs[-1]][0]


def channel_groups(model: nn.Module) -> list:
    """The prunable channel groups of a CompressAI model (:class:`deepcomp.channel_pruning.ChannelGroup`).

    Inside ``g_a``, ``g_s``, ``h_a``, ``h_s``: each conv's output channels,
    with the GDN that follows (``beta``, both axes of ``gamma``) and the next
    conv's input channels; named after the producing conv (``g_a.0``).  The
    latents, where the sequences meet: ``y`` (``g_a``'s last conv, ``g_s``'s
    first deconv, and the factorized model's entropy bottleneck or, with a
    hyperprior, ``h_a``'s first conv and the rows of ``h_s``'s last conv that
    predict the scales (and means) of each channel) and ``z`` (``h_a``'s last
    conv, the entropy bottleneck, ``h_s``'s first deconv).  The image
    channels (``g_a``'s input, ``g_s``'s output) are never pruned.
    """
    from compressai.models.google import FactorizedPrior, FactorizedPriorReLU, MeanScaleHyperprior, ScaleHyperprior

    from .channel_pruning import ChannelGroup, Slot

    if type(model) not in (FactorizedPrior, FactorizedPriorReLU, ScaleHyperprior, MeanScaleHyperprior):
        raise DeepCompError(f"channel pruning supports {', '.join(CHANNEL_PRUNABLE)}, not {type(model).__name__}")
    ga, ga_first, ga_last = _sequence_groups(model, "g_a")
    gs, gs_first, _ = _sequence_groups(model, "g_s")
    mods = dict(model.named_modules())
    eb = [Slot(f"entropy_bottleneck.{n}", 0) for n, _ in model.entropy_bottleneck.named_parameters()]
    y = _producer_slots(ga_last, mods[ga_last]) + [Slot(f"{gs_first}.weight", _conv_axes(mods[gs_first])[1], "consumer")]
    if not hasattr(model, "h_a"):
        return ga + [ChannelGroup("y", tuple(y + eb), ga_last)] + gs
    ha, ha_first, ha_last = _sequence_groups(model, "h_a")
    hs, hs_first, hs_last = _sequence_groups(model, "h_s")
    y.append(Slot(f"{ha_first}.weight", _conv_axes(mods[ha_first])[1], "consumer"))
    m_y = model.state_dict()[f"{ga_last}.weight"].shape[_conv_axes(mods[ga_last])[0]]
    out = mods[hs_last]
    blocks = out.out_channels // m_y
    if blocks * m_y != out.out_channels:
        raise DeepCompError(f"{hs_last} predicts {out.out_channels} parameters for {m_y} latent channels")
    y += [Slot(s.key, s.axis, "param", blocks) for s in _producer_slots(hs_last, out)]
    z = _producer_slots(ha_last, mods[ha_last]) + eb + [Slot(f"{hs_first}.weight", _conv_axes(mods[hs_first])[1], "consumer")]
    return ga + [ChannelGroup("y", tuple(y), ga_last)] + gs + ha + [ChannelGroup("z", tuple(z), ha_last)] + hs


def _check_widths(widths) -> dict[str, int]:
    if not isinstance(widths, Mapping) or not all(isinstance(k, str) for k in widths):
        raise DeepCompError("channel widths must map group names to channel counts")
    out = {}
    for k, v in widths.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise DeepCompError(f"channel width of {k} must be an integer, got {v!r}")
        out[k] = int(v)
    return out


def thin(model: nn.Module, widths: Mapping[str, int]) -> nn.Module:
    """Cut ``model`` in place to ``widths`` channels per group (each at most the current width).

    Each affected parameter is replaced by its leading slice; conv
    ``in_channels``/``out_channels`` and the entropy bottleneck's
    ``channels`` follow.  Strides, kernels, paddings and GDN's ``inverse``
    stay.  The derived buffers must be rebuilt (``update(force=True)``).
    """
    from compressai.entropy_models import EntropyBottleneck

    from .channel_pruning import pruned_shapes, shapes_of

    widths = _check_widths(widths)
    groups = channel_groups(model)
    old = shapes_of(model.state_dict())
    new = pruned_shapes(old, groups, widths)
    for key, shape in new.items():
        if shape == old[key]:
            continue
        mod_name, attr = key.rsplit(".", 1)
        owner = model.get_submodule(mod_name)
        p = owner._parameters.get(attr)
        if p is None:
            raise DeepCompError(f"cannot thin {key}: not a parameter")
        with torch.no_grad():
            cut = p[tuple(slice(0, n) for n in shape)].clone()
        owner._parameters[attr] = nn.Parameter(cut, requires_grad=p.requires_grad)
    for m in model.modules():
        if _is_conv(m):
            out_axis, in_axis = _conv_axes(m)
            m.out_channels = int(m.weight.shape[out_axis]) * (m.groups if out_axis == 1 else 1)
            m.in_channels = int(m.weight.shape[in_axis]) * (m.groups if in_axis == 1 else 1)
        elif isinstance(m, EntropyBottleneck):
            m.channels = int(m.quantiles.shape[0])
    return model


def channel_widths(model: nn.Module) -> dict[str, int]:
    """Group name -> number of channels of ``model`` (checked for consistency)."""
    from .channel_pruning import shapes_of, widths

    return dict(widths(shapes_of(model.state_dict()), channel_groups(model)))


def mac_weights(arch: str, quality: int, size: int = 64) -> dict[str, dict[str, float]]:
    """Multiply-accumulates per image pixel of each weight element, measured on ``compress()``/``decompress()``.

    ``{"encode": {key: w}, "decode": {key: w}}``: a conv weight's elements
    times ``w`` is its MACs per pixel of the input image (``w`` = the conv's
    output positions per pixel; a transposed conv's input positions); a
    GDN's ``gamma`` counts once per position.  The weights do not depend on
    the channel widths, so ``channel_pruning.cost(shapes, w)`` gives the
    MACs of any thinner model.  Biases, nonlinearities and the entropy
    coder are not counted.
    """
    from compressai.layers import GDN

    model = build(arch, quality)
    model.update(force=True)
    model.eval()
    acc: dict[str, dict[str, float]] = {"encode": {}, "decode": {}}
    side = ["encode"]
    pixels = float(size * size)

    def hook(name: str, m: nn.Module):
        def f(_mod, inp, out):
            x = inp[0]
            if isinstance(m, GDN):
                key, pos = f"{name}.gamma", x.shape[0] * x.shape[-2] * x.shape[-1]
            elif isinstance(m, nn.modules.conv._ConvTransposeNd):
                key, pos = f"{name}.weight", x.shape[0] * x.shape[-2] * x.shape[-1]
            else:
                key, pos = f"{name}.weight", out.shape[0] * out.shape[-2] * out.shape[-1]
            d = acc[side[0]]
            d[key] = d.get(key, 0.0) + pos / pixels
        return f

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules() if _is_conv(m) or isinstance(m, GDN)]
    try:
        with torch.no_grad():
            enc = model.compress(torch.rand(1, 3, size, size))
            side[0] = "decode"
            model.decompress(enc["strings"], enc["shape"])
    finally:
        for h in handles:
            h.remove()
    return acc
