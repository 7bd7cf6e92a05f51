"""Benchmark harness for rtdetr_fused (``python -m benchmarks --help``; ``make bench``).

Times our activations against eager torch.nn, the article's composed formulas and
torch.compile, as a share of a copy roofline measured in the same run; accounts the bytes
each saves for backward; and times RT-DETR-l and YOLO11n training steps. METHOD.md says how.
"""
