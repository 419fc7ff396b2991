"""Every ONNX test-data case that the conformance run does not expect to pass,
with the reason. This is the one place where exclusions are listed."""

SEQUENCES = "uses ONNX sequence types; minicomp compiles tensors only"
STRINGS = "works on strings; minicomp compiles numeric tensors only"
TRAINING = "Gradient is a training operator; minicomp compiles inference graphs"

EXCLUDED = {
    "simple/test_gradient_of_add": TRAINING,
    "simple/test_gradient_of_add_and_mul": TRAINING,
    **{f"simple/test_sequence_model{k}": SEQUENCES for k in range(1, 9)},
    **{f"simple/{name}": STRINGS for name in (
        "test_strnorm_model_monday_casesensintive_lower", "test_strnorm_model_monday_casesensintive_nochangecase",
        "test_strnorm_model_monday_casesensintive_upper", "test_strnorm_model_monday_empty_output",
        "test_strnorm_model_monday_insensintive_upper_twodim", "test_strnorm_model_nostopwords_nochangecase")},
}

# Cases whose output shape depends on an input's value: that input is bound as
# a constant at import (from_onnx(..., constants=...)), with the value stored
# in the test data, so that shapes are static.
BIND_AS_CONSTANTS = {
    f"simple/test_expand_shape_model{k}": ("shape",) for k in range(1, 5)
}
