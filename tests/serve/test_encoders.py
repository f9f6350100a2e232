"""Request decoding, the allowed-roots file check, the version cache and per-version batching."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from itemsage.config import ServeConfig
from itemsage.serve.bundle import VersionCache
from itemsage.serve.core import ServingSpec, load_state
from itemsage.serve.encoders import LocalEncoders
from itemsage.serve.errors import BadRequestError, ForbiddenPathError, InvalidImageError, PayloadTooLargeError
from itemsage.serve.uploads import decode_base64, read_allowed_file


def test_decode_base64() -> None:
    raw = os.urandom(300)
    s = base64.b64encode(raw).decode()
    assert decode_base64(s, 300) == raw
    assert decode_base64("data:image/jpeg;base64," + s, 300) == raw
    assert decode_base64("\n".join(s[i : i + 76] for i in range(0, len(s), 76)), 300) == raw
    with pytest.raises(PayloadTooLargeError):
        decode_base64(s, 299)
    with pytest.raises(PayloadTooLargeError):  # refused from the length alone, before decoding
        decode_base64("A" * 4000, 100)
    for bad in ("abc", "a b c !", "===="):
        with pytest.raises(InvalidImageError):
            decode_base64(bad, 100)
    with pytest.raises(InvalidImageError, match="empty"):
        decode_base64("", 100)


def test_read_allowed_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"12345")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"secret")
    (root / "link.jpg").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path)
    roots = [str(root)]
    assert read_allowed_file(str(root / "a" / "x.jpg"), roots, 10) == b"12345"
    for path in (
        str(outside),
        str(root / "a" / ".." / ".." / "outside.jpg"),
        str(root / "link.jpg"),
        str(root / "dirlink" / "outside.jpg"),
        "a/x.jpg",
        str(root) + "x/evil.jpg",  # a sibling whose name starts with the root's
        str(root / "a" / "x.jpg") + "\x00",
    ):
        with pytest.raises(ForbiddenPathError):
            read_allowed_file(path, roots, 10)
    with pytest.raises(ForbiddenPathError, match="disabled"):
        read_allowed_file(str(root / "a" / "x.jpg"), [], 10)
    with pytest.raises(PayloadTooLargeError):
        read_allowed_file(str(root / "a" / "x.jpg"), roots, 4)
    with pytest.raises(InvalidImageError):
        read_allowed_file(str(root / "a"), roots, 10)
    with pytest.raises(InvalidImageError):
        read_allowed_file(str(root / "nope.jpg"), roots, 10)


def test_version_cache_keeps_the_last_two() -> None:
    cache: VersionCache[str, int] = VersionCache(2)
    loads = []
    for key in ("a", "b", "a", "c"):
        cache.get_or_load(key, lambda k=key: loads.append(k) or len(loads))
    assert loads == ["a", "b", "c"]  # "a" came from the cache the second time
    assert cache.keys() == ["a", "c"]  # "b" was the least recently used
    assert cache.peek("b") is None


def test_mixed_version_batches_match_single_requests(tiny_serving: dict[str, Path]) -> None:
    """One batch holding requests of two versions answers each as its own version would."""
    enc = LocalEncoders(ServeConfig())
    b = {v: enc.bundle(load_state(ServingSpec(str(tiny_serving[f"model_{v}"]), str(tiny_serving[f"index_{v}"]))).model) for v in (1, 2)}
    texts = ["black shoe", "red top", "silver watch"]
    mixed = enc.text_batch([b[1], b[2], b[1]], texts)
    single = [enc.text_batch([b[v]], [t])[0] for v, t in zip((1, 2, 1), texts)]
    for m, s in zip(mixed, single):
        np.testing.assert_allclose(m, s, atol=1e-5)
    assert not np.allclose(enc.text_batch([b[1]], ["x"])[0], enc.text_batch([b[2]], ["x"])[0])
    prepared = [enc.prepare_item(b[v], {"title": t}) for v, t in zip((1, 2, 1), texts)]
    mixed_items = enc.item_batch([b[1], b[2], b[1]], prepared)
    for v, p, m in zip((1, 2, 1), prepared, mixed_items):
        np.testing.assert_allclose(enc.item_batch([b[v]], [p])[0], m, atol=1e-5)


def test_image_features_need_a_real_backbone(tiny_serving: dict[str, Path]) -> None:
    enc = LocalEncoders(ServeConfig())
    with pytest.raises(BadRequestError, match="no image backbone"):
        enc.backbones.image("synthetic")
    assert enc.backbones.image_feats([], "efficientnet-lite0").shape == (0, 1280)
    assert isinstance(enc.backbones.text_feats(["a"]), torch.Tensor)


def test_a_finetuned_text_encoder_serves_its_own_version(tiny_serving: dict[str, Path], tmp_path: Path) -> None:
    """A SearchSage-style version encodes search queries with its own MiniLM; a frozen version
    batched with it keeps the packaged one."""
    from tiny import write_finetuned_model

    from itemsage.serve.encoders import project

    tuned_dir = write_finetuned_model(tiny_serving["model_1"], tmp_path / "tuned")
    enc = LocalEncoders(ServeConfig())
    frozen = enc.bundle(load_state(ServingSpec(str(tiny_serving["model_1"]), str(tiny_serving["index_1"]))).model)
    tuned = enc.bundle(load_state(ServingSpec(str(tuned_dir), str(tiny_serving["index_1"]))).model)
    assert frozen.text_encoder is None and tuned.text_encoder is not None
    q = "black leather shoe"
    mixed = enc.text_batch([frozen, tuned], [q, q])
    assert not np.allclose(mixed[0], mixed[1], atol=1e-3)  # same towers, different MiniLM
    expected = project(tuned, "search", torch.from_numpy(tuned.text_encoder.encode([q])))[0]
    np.testing.assert_allclose(mixed[1], expected, atol=1e-5)
    np.testing.assert_allclose(mixed[0], enc.text_batch([frozen], [q])[0], atol=1e-5)


def test_an_empty_title_is_embedded_from_the_versions_title_fallback(
    tiny_serving: dict[str, Path], tmp_path: Path
) -> None:
    """A version trained on features with ``preprocess.title_fallback`` embeds a new item's empty
    title from those fields, as preprocessing did; a version without it keeps the zero vector."""
    import json
    import shutil

    fallback_dir = tmp_path / "fallback"
    shutil.copytree(tiny_serving["model_1"], fallback_dir)
    manifest = json.loads((fallback_dir / "manifest.json").read_text())
    manifest["title_fallback"] = ["brand", "description"]
    (fallback_dir / "manifest.json").write_text(json.dumps(manifest))
    enc = LocalEncoders(ServeConfig())
    plain = enc.bundle(load_state(ServingSpec(str(tiny_serving["model_1"]), str(tiny_serving["index_1"]))).model)
    with_fallback = enc.bundle(load_state(ServingSpec(str(fallback_dir), str(tiny_serving["index_1"]))).model)
    payload = {"title": "", "brand": "Acme", "description": "A red canvas shoe."}
    assert plain.title_fallback == () and with_fallback.title_fallback == ("brand", "description")
    assert enc.prepare_item(plain, payload).title == ""
    assert enc.prepare_item(with_fallback, payload).title == "Acme. A red canvas shoe."
    titled = {**payload, "title": "Canvas shoe"}
    assert enc.prepare_item(with_fallback, titled).title == "Canvas shoe"
    # Same weights: the two versions differ in the item embedding only through the title embedding.
    a, b = enc.item_batch([plain, with_fallback], [enc.prepare_item(plain, payload), enc.prepare_item(with_fallback, payload)])
    assert not np.allclose(a, b, atol=1e-4)
    a, b = enc.item_batch([plain, with_fallback], [enc.prepare_item(plain, titled), enc.prepare_item(with_fallback, titled)])
    np.testing.assert_allclose(a, b, atol=1e-5)
