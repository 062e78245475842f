"""The shared core: cache keys, the HDF5 layer format, layer kinds, atomic writes, ragged arrays.

Everything here is imported by every stage, so it stays small and imports no framework."""
