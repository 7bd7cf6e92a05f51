"""Integrations with training frameworks, one module each.

``rtdetr_fused.integrations.ultralytics`` swaps the fused activations into Ultralytics models; it imports
ultralytics only when one of its functions runs, so importing this package costs nothing.
"""
