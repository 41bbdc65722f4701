"""Mixed precision (RecBole's ``enable_amp``): whether this CPU multiplies in bfloat16, and the dtype autocast runs.

RecBole's trainer wraps each training batch's loss in ``torch.autocast``; on the CPU autocast's
dtype is bfloat16. A CPU with AVX-512 BF16 or AMX instructions runs bfloat16 products natively (about
3x float32's rate on this project's machines); without them oneDNN emulates them, slower than
float32, so the plugin's trainer stays in float32 there and says so.
"""

import torch


def cpu_has_bfloat16():
    """True where this CPU has bfloat16 instructions (AVX-512 BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(device):
    """The dtype ``torch.autocast(device.type)`` runs products in: bfloat16 on the CPU, float16 on CUDA
    (RecBole's default, with its GradScaler under ``enable_scaler``)."""
    return torch.get_autocast_dtype(torch.device(device).type)


def amp_unavailable(device):
    """Why ``enable_amp`` cannot run in reduced precision on ``device`` (one line), or None."""
    device = torch.device(device)
    if device.type == "cpu" and not cpu_has_bfloat16():
        return ("enable_amp: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), where bfloat16 "
                "products are emulated and slower than float32; training and evaluation stay float32")
    return None
