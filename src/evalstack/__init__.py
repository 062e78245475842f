"""evalstack: cached, versioned evaluation of image models on DVC + HDF5 layers.

The version is the installed distribution's (`importlib.metadata.version("evalstack")`): this file
holds no code, so it is part of no stage's code fingerprint.
"""
