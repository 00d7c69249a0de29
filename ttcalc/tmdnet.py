"""The one place ttcalc imports torchmd-net from.

torchmd-net initialises NVIDIA Warp on import, and Warp prints a banner to stdout at INFO level;
we lower Warp's log level first (unless the user already changed it) so CLI output stays clean.
"""
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
