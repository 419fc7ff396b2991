"""dtype-aware comparison of results against the oracle."""

import numpy as np

TOL = {
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float64): (1e-9, 1e-10),
}


def assert_close(actual, expected, scale: float = 1.0, what: str = ""):
    """Equal for ints and bools; within dtype tolerance (times ``scale``) for floats."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.dtype.kind == "f":
        rtol, atol = TOL.get(actual.dtype, (1e-4, 1e-5))
        np.testing.assert_allclose(actual, expected.astype(np.float64), rtol=rtol * scale, atol=atol * scale,
                                   err_msg=what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
