"""Side-by-side measurements of minicomp against numpy, PyTorch and ONNX Runtime."""
