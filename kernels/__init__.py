"""Triton kernels for rtdetr_fused, installed as ``rtdetr_fused.kernels``.

Importing this package imports triton; ``rtdetr_fused`` imports it only when a kernel is
launched, so the package still works (with PyTorch ops) where triton is missing.
"""
