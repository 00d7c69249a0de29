"""The one place ttcalc imports torchmd-net from.

torchmd-net initialises NVIDIA Warp on import. Warp prints a banner to stdout at INFO level, which
we lower first (unless the user already changed it), and on a machine without an NVIDIA driver its
C library prints "Warp CUDA warning: Could not find or load the NVIDIA CUDA driver" straight to
file descriptor 2, where Python cannot filter it. The import therefore runs with fd 2 captured;
everything else it printed is passed on unchanged.
"""
import os
import sys
import tempfile
from contextlib import contextmanager

_NO_DRIVER = "Could not find or load the NVIDIA CUDA driver"


@contextmanager
def _without_no_driver_warning():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [ln for ln in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if _NO_DRIVER not in ln]
            sys.stderr.write("".join(kept))


with _without_no_driver_warning():
    try:
        import warp

        if warp.config.log_level <= warp.LOG_INFO:
            warp.config.log_level = warp.LOG_WARNING
    except ImportError:  # pragma: no cover - warp is optional for torchmd-net's pure-PyTorch path
        pass

    from torchmdnet.models import tensornet  # noqa: E402
    from torchmdnet.models.torchmd_et import TorchMD_ET  # noqa: E402
    from torchmdnet.models.utils import CosineCutoff, act_class_mapping  # noqa: E402

__all__ = ["tensornet", "TorchMD_ET", "CosineCutoff", "act_class_mapping"]
