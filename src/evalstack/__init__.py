"""evalstack: cached, versioned evaluation of image models on DVC + HDF5 layers."""

__version__ = "0.1.0"
