"""The compile cache on disk: a second compile reuses the machine code, any
damage or a folder that cannot be written only costs a compile."""

import numpy as np
import pytest

import minicomp as mc


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINICOMP_CACHE", raising=False)
    return tmp_path / "cache"


def graph(scale=2.0):
    g = mc.GraphBuilder()
    x = g.input("x", (4, 8))
    g.output(g.softmax(g.relu(x) * scale, axis=-1))
    return g.build()


X = np.linspace(-2, 2, 32, dtype=np.float32).reshape(4, 8)


def test_second_compile_hits_and_gives_the_same_answer(cache_dir):
    first = mc.compile(graph())
    second = mc.compile(graph())
    assert (first.cache_hit, second.cache_hit) == (False, True)
    np.testing.assert_array_equal(first(X)[0], second(X)[0])
    assert second.stages["llvm"] == first.stages["llvm"] and "define" in second.stages["llvm_opt"]
    assert "ret" in second._jit.assembly()  # assembled again from the cached optimized IR
    assert mc.compile(graph(scale=3.0)).cache_hit is False  # another constant in the code: another entry


def test_cache_off_writes_nothing(cache_dir, monkeypatch):
    assert mc.compile(graph(), cache=False).cache_hit is False
    monkeypatch.setenv("MINICOMP_CACHE", "0")
    assert mc.compile(graph()).cache_hit is False
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.o"))


def test_a_damaged_entry_is_compiled_again(cache_dir):
    mc.compile(graph())
    for f in [f for f in (cache_dir / "llvm").iterdir() if f.suffix in (".o", ".so")]:  # both code forms
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    again = mc.compile(graph())
    assert again.cache_hit is False
    np.testing.assert_allclose(again(X)[0], mc.run_reference(graph(), X)[0], rtol=1e-5)
    assert mc.compile(graph()).cache_hit is True  # rewritten


def test_a_cache_folder_that_cannot_be_written_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(blocker / "cache"))
    model = mc.compile(graph())
    assert model.cache_hit is False
    np.testing.assert_allclose(model(X)[0], mc.run_reference(graph(), X)[0], rtol=1e-5)


def test_cli_cache_reports_and_clears(cache_dir, capsys):
    from minicomp.cli import main

    mc.compile(graph())
    assert main(["cache"]) == 0
    assert str(cache_dir) in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert not cache_dir.exists()
