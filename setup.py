from setuptools import setup

setup(
    name="rtdetr-fused",
    version="0.1.0",
    description="Fused Triton activation kernels (forward and backward) for Ultralytics RT-DETR and YOLO",
    python_requires=">=3.10",
    # kernels/ installs as rtdetr_fused.kernels: nothing named `kernels` at the top level.
    packages=[
        "rtdetr_fused",
        "rtdetr_fused.ops",
        "rtdetr_fused.integrations",
        "rtdetr_fused.integrations.ultralytics",
        "rtdetr_fused.kernels",
    ],
    package_dir={"rtdetr_fused.kernels": "kernels"},
    entry_points={"console_scripts": ["rtdetr-fused=rtdetr_fused.cli:main"]},
    install_requires=["torch>=2.11", 'triton>=3.6; platform_system == "Linux"'],
    extras_require={
        # The releases checked, as rtdetr_fused/integrations/fuse_bn.py's ULTRALYTICS (tests/test_upstream.py).
        "ultralytics": ["ultralytics>=8.4.190,<8.5"],
        "dev": ["pytest", "hypothesis", "ruff", "rich", "matplotlib", "onnx", "onnxruntime", "onnxscript"],
    },
)
