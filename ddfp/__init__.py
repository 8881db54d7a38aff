"""DDFP: density-descending feature perturbation for semi-supervised semantic segmentation.

The method as a library: pure, typed, device-agnostic (the device follows the inputs).
"""
