"""The wording helpers of user-facing messages."""

from minicomp.wording import byte_unit, count


def test_counts_read_as_english():
    assert [count(n, "kernel") for n in (0, 1, 2)] == ["0 kernels", "1 kernel", "2 kernels"]
    assert count(1, "match", "matches") == "1 match" and count(3, "match", "matches") == "3 matches"


def test_a_plan_picture_picks_a_byte_unit_its_figures_read_in():
    assert byte_unit(384) == ("B", 1)
    assert byte_unit(3 * 1024) == ("KiB", 1024)
    assert byte_unit(5 << 20) == ("MiB", 1 << 20)
    assert byte_unit(0) == ("B", 1)
