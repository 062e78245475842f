"""The evaluate, compare and robustness stages: metrics, concentration, significance, comparison, the grid."""
