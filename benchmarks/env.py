"""Where the numbers came from: device, driver, versions and git commit, for results.json."""

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

import rtdetr_fused

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "triton", "numpy", "ultralytics", "matplotlib", "rich")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(*cmd: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # no NVML: ask nvidia-smi
        out = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
        return out.splitlines()[0] if out else None


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    cpu = {"cpu": _cpu_name(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type != "cuda":
        return {"device_label": "CPU", "device_name": cpu["cpu"], **cpu}
    props = torch.cuda.get_device_properties(device)
    return {
        "device_label": props.name,
        "device_name": props.name,
        "driver": _driver(),
        "cuda_runtime": torch.version.cuda,
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        **cpu,
    }


def environment(device: torch.device, argv: list[str]) -> dict:
    """Everything results.json needs to say where and with what its numbers were measured."""
    now = datetime.datetime.now(datetime.timezone.utc)
    info = device_info(device)
    # A copy of the tree run elsewhere (the lent GPU machine) may carry a stale .git: the
    # caller then names the commit it sent.
    commit = os.environ.get("RTDETR_FUSED_COMMIT") or _run("git", "rev-parse", "HEAD")
    dirty = (
        None if os.environ.get("RTDETR_FUSED_COMMIT") else _run("git", "status", "--porcelain", "--untracked-files=no")
    )
    slug = re.sub(r"[^a-z0-9]+", "-", info["device_label"].lower()).strip("-")
    return {
        "created": now.isoformat(timespec="seconds"),
        "device": str(device),
        **info,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {"rtdetr_fused": rtdetr_fused.__version__, **{p: _version(p) for p in PACKAGES}},
        "git_commit": commit,
        "git_dirty": None if dirty is None else bool(dirty),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "command": " ".join(["python -m benchmarks", *argv]),
        "results_dir_name": f"{slug}-{now.date().isoformat()}",
    }
