"""Integrations with training frameworks.

``rtdetr_fused.integrations.ultralytics`` (a package, one file per concern) swaps the fused activations into
Ultralytics models and imports ultralytics only when one of its functions runs; ``fuse_bn`` runs their Conv
blocks with BatchNorm and activation fused and never imports it. Importing this package costs nothing.
"""
