"""What a benchmark ran on: CPU model and cores, library versions, GPU, process memory.

Nothing here imports torch, onnxruntime or tensorrt: versions come from the installed
distributions' metadata, so an ONNX Runtime measurement is not inflated by a torch import. The GPU
is named through torch only when torch is already imported, else through ``nvidia-smi``.
"""
from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Dict, Optional

__all__ = [
    "LIBRARIES",
    "available_cores",
    "cpu_model",
    "current_rss_mb",
    "gpu_name",
    "library_versions",
    "machine_info",
    "peak_rss_mb",
]

# distribution names whose versions a report names ("none" when not installed)
LIBRARIES = (
    "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy", "Pillow",
    "pycocotools", "faster-coco-eval",
)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask), the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` "model name"), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def library_versions() -> Dict[str, str]:
    """``{distribution: version or "none"}`` for :data:`LIBRARIES`."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "none"
    return out


def gpu_name() -> Optional[str]:
    """Name of GPU 0, or None when there is none (torch if already imported, else nvidia-smi)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return str(torch.cuda.get_device_name(0))
            return None
        except Exception:  # a broken CUDA install is "no GPU" for a report
            return None
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def machine_info() -> dict:
    """``{cpu, cores_logical, cores_available, platform, python, gpu ("none" when absent), versions}``."""
    return {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_available": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu_name() or "none",
        "versions": library_versions(),
    }


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """The process's resident-memory high-water mark in MiB (``VmHWM``, else ``ru_maxrss``)."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = raw // 1024 if sys.platform == "darwin" else raw  # bytes on macOS, KiB on Linux
    return round(kb / 1024.0, 1)


def current_rss_mb() -> Optional[float]:
    """The process's resident memory now in MiB (``VmRSS``; psutil when installed), or None."""
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return round(kb / 1024.0, 1)
    try:
        import psutil  # optional, not a dependency
    except ImportError:
        return None
    return round(psutil.Process().memory_info().rss / 2**20, 1)
