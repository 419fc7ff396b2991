"""docs/ir.md lists every dtype the text format reads and prints."""

import os

from minicomp.ir.dtypes import ALL_DTYPES

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "ir.md")


def test_the_ir_doc_lists_every_dtype_spelling():
    line = next(ln for ln in open(DOC, encoding="utf-8") if "DTYPE:" in ln)
    assert line.split("DTYPE:", 1)[1].split() == [d.short for d in ALL_DTYPES]
