import os
from pathlib import Path

# Triton kernels run under the interpreter when no GPU is present; the variable
# must be set before any triton kernel module is imported.
try:
    import torch
    _cuda = torch.cuda.is_available()
except ImportError:
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _shared.is_dir():
    os.environ.setdefault("MITHRIDATE_DATA", str(_shared))

# CI runs the property tests on a fixed example sequence, so a red build is
# reproducible; local runs keep exploring new examples.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
