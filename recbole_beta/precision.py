"""Mixed precision (RecBole's ``enable_amp``): whether this CPU multiplies in bfloat16, and the dtype autocast runs.

RecBole's trainer wraps each training batch's loss in ``torch.autocast``; on the CPU autocast's
dtype is bfloat16. A CPU with AVX-512 BF16 or AMX instructions runs bfloat16 products natively (about
3x float32's rate on this project's machines); without them oneDNN emulates them, slower than
float32, so every trainer the plugin hands out (its own and RecBole's) stays in float32 there and says
so in one line (:func:`amp_unavailable`, read by :class:`recbole_beta.trainer.PluginTrainerMixin`).
"""

import torch

#: the CPU features (``torch.cpu.get_capabilities()``) that run bfloat16 products natively
BFLOAT16_FEATURES = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16():
    """True where this CPU has bfloat16 instructions (AVX-512 BF16 or AMX), as torch's public
    ``torch.cpu.get_capabilities()`` reports them; False with a torch too old to report them."""
    if not hasattr(torch.cpu, "get_capabilities"):  # an older torch: no public way to ask
        return False
    capabilities = torch.cpu.get_capabilities()
    return any(bool(capabilities.get(feature)) for feature in BFLOAT16_FEATURES)


def autocast_dtype(device):
    """The dtype ``torch.autocast(device.type)`` runs products in: bfloat16 on the CPU, float16 on CUDA
    (RecBole's default, with its GradScaler under ``enable_scaler``)."""
    return torch.get_autocast_dtype(torch.device(device).type)


def amp_unavailable(device, cpu_bfloat16=None):
    """Why ``enable_amp`` cannot run in reduced precision on ``device`` (one line), or None.

    ``cpu_bfloat16``: whether the CPU has bfloat16 instructions; None asks this one (:func:`cpu_has_bfloat16`).
    """
    device = torch.device(device)
    if device.type != "cpu":
        return None
    if cpu_bfloat16 is None:
        cpu_bfloat16 = cpu_has_bfloat16()
    if cpu_bfloat16:
        return None
    return ("enable_amp: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), where bfloat16 "
            "products are emulated and slower than float32; training and evaluation stay float32")
