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
    assert "ret" in second.assembly()  # assembled again from the cached optimized IR
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


def _fresh_process_compiles(cache_dir) -> None:
    """Compile and check graph() in a new process (a crash there fails the test, not pytest)."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np, minicomp as mc\n"
            "from tests.test_cache import graph, X\n"
            "m = mc.compile(graph())\n"
            "np.testing.assert_allclose(m(X)[0], mc.run_reference(graph(), X)[0], rtol=1e-6)\n"
            "print('ok')")
    env = dict(os.environ, MINICOMP_CACHE_DIR=str(cache_dir))
    root = os.path.join(os.path.dirname(__file__), "..")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, f"exit {proc.returncode}: {proc.stderr[-2000:]}"


@pytest.mark.parametrize("suffix, junk", [(".ll.z", b"not zlib data at all"), (".o", b"\x7fELF junk"),
                                          (".o", b"x" * 4096), (".ir.z", None), ("host-", b"\xff\xfe\n;;")])
def test_entries_with_a_good_checksum_but_junk_inside_are_compiled_again(cache_dir, suffix, junk):
    import zlib

    from minicomp import cache, host_cpu

    mc.compile(graph())  # fills the cache
    if suffix == "host-":  # made by a process that has not loaded LLVM (this one has): name it here
        fingerprint = host_cpu._cpu_fingerprint()
        if fingerprint is None:
            pytest.skip("no /proc/cpuinfo: the host CPU is never cached")
        cache.write("llvm", "host-" + cache.key(fingerprint, host_cpu.llvm_version()), b"x")
    names = [p.name for p in (cache_dir / "llvm").iterdir()
             if (p.name.startswith(suffix) if suffix == "host-" else p.name.endswith(suffix))]
    assert names, f"no {suffix} entry"
    data = junk if junk is not None else zlib.compress(b"this is not LLVM IR")
    for name in names:
        assert cache.write("llvm", name, data)  # junk, with a valid checksum
    _fresh_process_compiles(cache_dir)


def test_a_cache_folder_others_can_write_is_not_used(tmp_path, monkeypatch):
    from minicomp import cache

    shared = tmp_path / "shared"
    (shared / "llvm").mkdir(parents=True)
    shared.chmod(0o777)
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(shared))
    monkeypatch.delenv("MINICOMP_CACHE", raising=False)
    cache._warned.clear()
    with pytest.warns(RuntimeWarning, match="may be written by other users"):
        model = mc.compile(graph())
    assert not model.cache_hit and not any((shared / "llvm").iterdir())  # nothing read, nothing written
    shared.chmod(0o755)
    (shared / "llvm").chmod(0o775)  # the kind's folder is checked too
    cache._warned.clear()
    with pytest.warns(RuntimeWarning):
        mc.compile(graph())
    (shared / "llvm").chmod(0o755)
    mc.compile(graph())
    assert mc.compile(graph()).cache_hit  # a folder of its owner alone is used


def test_new_cache_folders_are_private(cache_dir):
    mc.compile(graph())
    assert (cache_dir.stat().st_mode & 0o077) == 0 and ((cache_dir / "llvm").stat().st_mode & 0o077) == 0
