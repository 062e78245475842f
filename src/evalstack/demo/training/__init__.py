"""Demo models: Keras/TFLite and PyTorch networks, the PLS fit, ONNX export, the demo detector."""
