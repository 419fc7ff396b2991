"""Real model code nobody here wrote, through both PyTorch entries
(mc.from_torch and torch.compile(backend="minicomp")) against torch eager:
one model of each torchvision classification family, and each transformers
family (benchmarks/zoo.py builds them from configs, with random weights;
nothing is downloaded). An eager fallback fails the test.

`python -m benchmarks.zoo` runs the whole matrix: all of torchvision's 80
classifiers, and each family with eager and SDPA attention at every length.
Here each torchvision family runs through one entry, in turns, and each
transformers family at one (attention, length) pair per entry, rotating over
the families, so that every pair is held by some family.
"""

from __future__ import annotations

import pytest

from tests.torch.conftest import require_torch

torch = require_torch()
zoo = pytest.importorskip("benchmarks.zoo")

pytestmark = pytest.mark.slow


def require(importer):
    try:
        return importer()
    except ImportError as exc:
        pytest.skip(f"needs the [zoo] extra: {exc}")


ENTRIES = {"from_torch": zoo.through_from_torch, "torch.compile": zoo.through_torch_compile}


@pytest.mark.parametrize("k,family", list(enumerate(sorted(zoo.TORCHVISION_FAMILIES))))
def test_torchvision_family_matches_eager(k, family):
    """Each family through one entry, the two entries taking turns (both cost a compile of the whole
    network; the full matrix is `python -m benchmarks.zoo`)."""
    require(zoo.import_torchvision)
    model, args = zoo.torchvision_case(zoo.TORCHVISION_FAMILIES[family])
    entry = list(ENTRIES)[k % 2]
    assert zoo.relative_error(ENTRIES[entry](model, args), zoo.eager(model, args)) <= zoo.TOLERANCE, entry


def _rotation(k: int, name: str):
    """The (attention, length) pairs family number ``k`` runs at: one for from_torch, one for torch.compile."""
    lengths = zoo.family_lengths(name)
    attns = ("eager", "sdpa") if zoo.FAMILIES[name].sdpa else ("eager", "eager")
    return [(attns[(k + j) % 2], lengths[(k + j) % len(lengths)]) for j in range(2)]


@pytest.mark.parametrize("k,name", list(enumerate(zoo.FAMILIES)))
def test_transformers_family_matches_eager(k, name):
    require(zoo.import_transformers)
    (attn_a, seq_a), (attn_b, seq_b) = _rotation(k, name)
    model, args, kwargs = zoo.family_case(name, attn_a, seq_a)
    want = zoo.eager(model, args, kwargs)
    assert zoo.relative_error(zoo.through_from_torch(model, args, kwargs), want) <= zoo.TOLERANCE
    model, args, kwargs = zoo.family_case(name, attn_b, seq_b)
    want = zoo.eager(model, args, kwargs)
    assert zoo.relative_error(zoo.through_torch_compile(model, args, kwargs), want) <= zoo.TOLERANCE


def test_the_rotation_holds_every_attention_and_length():
    """Over the families, each entry meets eager and SDPA attention at every length."""
    pairs = [_rotation(k, name) for k, name in enumerate(zoo.FAMILIES) if zoo.family_lengths(name) != (0,)]
    for entry in range(2):
        held = {pair[entry] for pair in pairs}
        assert held == {(a, s) for a in ("eager", "sdpa") for s in zoo.SEQUENCE_LENGTHS}, entry


def test_transformers_sdpa_refusals_are_transformers_own():
    """The two families checked without SDPA are the ones transformers refuses it for."""
    require(zoo.import_transformers)
    for name in [n for n, f in zoo.FAMILIES.items() if not f.sdpa]:
        with pytest.raises(ValueError, match="does not support an attention implementation"):
            zoo.family_case(name, "sdpa")
