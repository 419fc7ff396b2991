"""Saved models and shared libraries: what runs after loading or linking
equals what the compiler made, and files that cannot run here are refused."""

import hashlib
import io
import json
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

import minicomp as mc
from minicomp.cli import main


def dense():
    rng = np.random.default_rng(0)
    g = mc.GraphBuilder("dense")
    x = g.input("x", (3, 40))
    w = g.constant(rng.standard_normal((40, 24)).astype(np.float32))
    h = g.relu(x @ w)
    g.output(g.softmax(h, axis=-1), g.sum(h, axes=[1]))
    return g.build()


X = np.linspace(-1, 1, 120, dtype=np.float32).reshape(3, 40)


def test_save_and_load_give_the_same_outputs(tmp_path):
    model = mc.compile(dense())
    path = tmp_path / "dense.mcm"
    model.save(str(path))
    loaded = mc.load(str(path))
    for a, b in zip(model(X), loaded(X)):
        np.testing.assert_array_equal(a, b)
    assert loaded.input_names == ["x"] and "define" in loaded.stages["llvm_opt"]
    assert [name for name, _ in loaded.profile(X, repeat=1)] == [name for name, _ in model.profile(X, repeat=1)]


def test_a_scalar_constant_stays_a_scalar(tmp_path):
    # np.ascontiguousarray makes a 0-d array 1-d; the load then called the file damaged.
    g = mc.GraphBuilder("scaled")
    g.output(g.tanh(g.input("x", (4,))) * 0.5)
    model = mc.compile(g.build())
    assert any(a.ndim == 0 for a in model.graph.constants.values())
    model.save(str(tmp_path / "scaled.mcm"))
    x = np.linspace(-2, 2, 4, dtype=np.float32)
    np.testing.assert_array_equal(mc.load(str(tmp_path / "scaled.mcm"))(x)[0], model(x)[0])


def test_an_output_listed_twice_stays_one_value(tmp_path):
    # The load made a second value for the second listing, which no buffer held: the call failed.
    g = mc.GraphBuilder("twice")
    y = g.exp(g.input("x", (3,)))
    g.output(y)
    g.output(g.sum(y, axes=[0]))
    g.output(y)
    model = mc.compile(g.build(), cache=False)
    model.save(str(tmp_path / "twice.mcm"))
    x = np.array([0.0, 1.0, 2.0], np.float32)
    loaded = mc.load(str(tmp_path / "twice.mcm"))
    assert loaded.signature.outputs[0] is loaded.signature.outputs[2]
    for got, want in zip(loaded(x), model(x)):
        np.testing.assert_array_equal(got, want)


def rewrite_members(src, dst, edit):
    """Copy a saved model, ``edit(name, data) -> data`` applied to each member, its digests made again
    (as someone who edits a file on purpose would): what is left to catch it is the checks on load."""
    with zipfile.ZipFile(src) as zin:
        members = {name: edit(name, zin.read(name)) for name in zin.namelist() if name != "SHA256SUMS"}
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in members.items() if d is not None)
    with zipfile.ZipFile(dst, "w") as zout:
        for name, data in members.items():
            if data is not None:
                zout.writestr(name, data)
        zout.writestr("SHA256SUMS", sums)


def rewrite_meta(src, dst, **changes):
    def edit(name, data):
        if name != "meta.json":
            return data
        meta = json.loads(data)
        meta.update(changes)
        return json.dumps(meta).encode()

    rewrite_members(src, dst, edit)


def test_files_from_another_version_or_cpu_are_refused(tmp_path):
    path = tmp_path / "dense.mcm"
    mc.compile(dense()).save(str(path))
    rewrite_meta(path, tmp_path / "old.mcm", minicomp="0.0.1")
    with pytest.raises(mc.MinicompError, match="compile the model again"):
        mc.load(str(tmp_path / "old.mcm"))
    rewrite_meta(path, tmp_path / "alien.mcm", features="+avx512f,+quantum-ops")
    with pytest.raises(mc.MinicompError, match="quantum-ops"):
        mc.load(str(tmp_path / "alien.mcm"))
    (tmp_path / "junk.mcm").write_text("not a model")
    with pytest.raises(mc.MinicompError, match="not a saved minicomp model"):
        mc.load(str(tmp_path / "junk.mcm"))


C_PROGRAM = r"""
#include <stdio.h>
#include "dense.h"
int main(void) {
  static float x[3 * 40], probs[3 * 24], sums[3];
  for (int i = 0; i < 3 * 40; ++i) x[i] = -1.0f + 2.0f * i / 119.0f;
  const void* in[] = {x};
  void* out[] = {probs, sums};
  if (mc_run(in, out)) return 1;
  for (int i = 0; i < 3 * 24; ++i) printf("%.8g\n", probs[i]);
  for (int i = 0; i < 3; ++i) printf("%.8g\n", sums[i]);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_a_c_program_runs_the_shared_library(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    header = mc.compile(dense()).export_library(str(tmp_path / "libdense.so"))
    assert "mc_run" in open(header).read()
    (tmp_path / "main.c").write_text(C_PROGRAM)
    subprocess.run([cc, "main.c", "-I.", "-L.", "-ldense", "-Wl,-rpath,.", "-o", "main"], cwd=tmp_path, check=True)
    out = subprocess.run(["./main"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    got = np.array([float(v) for v in out.split()])
    want = np.concatenate([a.reshape(-1) for a in mc.run_reference(dense(), X)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cli_saves_runs_and_links(tmp_path, capsys):
    src = tmp_path / "dense.mcir"
    src.write_text(mc.print_graph(dense(), full_constants=True))
    saved = tmp_path / "dense.mcm"
    assert main(["compile", str(src), "-o", str(saved)]) == 0
    assert main(["run", str(saved)]) == 0
    assert "loaded for" in capsys.readouterr().out
    assert main(["compile", str(src), "--target", "cuda", "-o", str(saved)]) == 2
    assert main(["compile", str(saved)]) == 2  # compile takes the source, not the compiled file


def _saved(tmp_path):
    path = tmp_path / "dense.mcm"
    mc.compile(dense()).save(str(path))
    return path


def _meta_edit(**change):
    def edit(name, data):
        if name != "meta.json":
            return data
        meta = json.loads(data)
        for key, fn in change.items():
            meta[key] = fn(meta[key])
        return json.dumps(meta).encode()
    return edit


def _bigger_output(outputs):
    outputs[0]["shape"] = [512, 512]
    return outputs


@pytest.mark.parametrize("what, edit, message", [
    ("a lied output shape", _meta_edit(outputs=_bigger_output), "the code reads and writes"),
    ("offsets past the arena", _meta_edit(offsets=lambda offs: [[s, o + 10**6] for s, o in offs]),
     "arena entry|does not fit the arena"),
    ("no arena", _meta_edit(arena_bytes=lambda n: 0), "arena entry|does not fit the arena"),
    ("a shorter constant", lambda name, data: (
        data if not name.startswith("const/") else _npy(np.zeros((3, 24), np.float32))), "holds float32\\[3, 24\\]"),
    ("a slot outside the table", _meta_edit(calls=lambda calls: [[c[0], c[1], [9999] + c[2][1:]] for c in calls]),
     "kernel call"),
    ("a missing member", lambda name, data: None if name.startswith("const/") else data, "has no member"),
    ("a string for a number", _meta_edit(n_slots=lambda n: "three"), "not a whole number"),
    ("a pickled constant", lambda name, data: data if not name.startswith("const/") else _npy(
        np.array([{"x": 1}], dtype=object)), "damaged"),
])
def test_an_edited_saved_model_is_refused_before_it_runs(tmp_path, what, edit, message):
    path = _saved(tmp_path)
    rewrite_members(path, tmp_path / "edited.mcm", edit)
    with pytest.raises(mc.MinicompError, match=message):
        mc.load(str(tmp_path / "edited.mcm"))


def _npy(arr):

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_any_flipped_bit_or_missing_member_is_a_clear_error(tmp_path):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    rng = np.random.default_rng(0)
    for k, at in enumerate(sorted(rng.choice(len(raw), 40, replace=False))):
        flipped = bytearray(raw)
        flipped[at] ^= 1 << int(rng.integers(8))
        bad = tmp_path / f"flip{k}.mcm"
        bad.write_bytes(bytes(flipped))
        try:
            model = mc.load(str(bad))
        except mc.MinicompError:
            continue
        # A flip that changed nothing the archive holds (zip metadata such as a timestamp) loads intact.
        for a, b in zip(model(X), mc.compile(dense())(X)):
            np.testing.assert_array_equal(a, b)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    for name in names:
        rewrite = tmp_path / "without.mcm"
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(rewrite, "w") as zout:
            for other in names:
                if other != name:
                    zout.writestr(other, zin.read(other))
        with pytest.raises(mc.MinicompError):
            mc.load(str(rewrite))
