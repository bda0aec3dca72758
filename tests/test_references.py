from __future__ import annotations

from pathlib import Path

import torch

from autotune.model.references import ReferenceStore, decode_png, encode_png
from autotune.space.settings import Settings
from autotune.store.reference_table import reference_key

REF = Settings("dpmpp_2m_karras", 12, 7.5)


def test_png_round_trip_is_lossless_for_8_bit_images() -> None:
    image = (torch.rand(3, 16, 24) * 255).round() / 255
    assert torch.equal(decode_png(encode_png(image)), image)


def test_key_changes_with_everything_that_changes_pixels() -> None:
    base = reference_key("tiny", "a cat", 0, 32, 32, REF, "float32", "cpu")
    assert base == reference_key("tiny", "a cat", 0, 32, 32, REF, "float32", "cpu")
    others = [
        reference_key("other", "a cat", 0, 32, 32, REF, "float32", "cpu"),
        reference_key("tiny", "a dog", 0, 32, 32, REF, "float32", "cpu"),
        reference_key("tiny", "a cat", 1, 32, 32, REF, "float32", "cpu"),
        reference_key("tiny", "a cat", 0, 64, 32, REF, "float32", "cpu"),
        reference_key("tiny", "a cat", 0, 32, 32, Settings("dpmpp_2m_karras", 13, 7.5), "float32", "cpu"),
        reference_key("tiny", "a cat", 0, 32, 32, REF, "float16", "cpu"),
        reference_key("tiny", "a cat", 0, 32, 32, REF, "float32", "cuda"),  # other noise for the same seed
    ]
    assert len({base, *others}) == 8


def test_second_store_renders_zero_references(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'refs.db'}"
    first = ReferenceStore(url)
    a = first.images(tiny, REF, ["a cat", "a dog"], [0, 1], 32, 32)
    assert first.rendered == 4 and a.shape == (4, 3, 32, 32)
    second = ReferenceStore(url)  # a new process resuming the study
    b = second.images(tiny, REF, ["a dog", "a cat"], [1, 0], 32, 32)
    assert second.rendered == 0
    assert torch.equal(b[0], a[3]) and torch.equal(b[3], a[0])
    third = ReferenceStore(url)
    third.images(tiny, REF, ["a cat", "a bird"], [0], 32, 32)
    assert third.rendered == 1  # only the new prompt
