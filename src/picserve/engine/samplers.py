"""A1111 sampler names → diffusers schedulers: one table, after diffusers' own scheduler docs.

Every scheduler is built from the model's own scheduler config, so a v-prediction model's
`prediction_type="v_prediction"` (and, for zero terminal SNR, `rescale_betas_zero_snr=True` with
`timestep_spacing="trailing"`, diffusers' recipe for such models: `prediction_config`) reaches them all.
Some schedulers have no `rescale_betas_zero_snr` (LMS, Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, DEIS):
they get the rescaled noise schedule itself as `trained_betas`, with the last step's signal clamped to
2**-24 as diffusers' Euler does, so that their largest sigma stays finite (4096) instead of infinite.
"""

from __future__ import annotations

import inspect
from typing import Any

from picserve import domain

__all__ = ["TABLE", "make_scheduler", "prediction_config", "zero_terminal_snr_betas"]

#: name → (diffusers scheduler class, config overrides)
TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    # diffusers has no ancestral 2S; its docs map "DPM++ 2S a" to the single-step solver.
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
assert tuple(TABLE) == domain.SAMPLER_NAMES


def make_scheduler(name: str, base_config: dict[str, Any], seed: int) -> Any:
    """A fresh scheduler for one request, built from the model's own scheduler config."""
    import diffusers

    class_name, overrides = TABLE[domain.canonical_sampler(name) or name]
    cls = getattr(diffusers, class_name)
    options = dict(overrides)
    if class_name == "DPMSolverSDEScheduler":
        # Its Brownian-tree noise is seeded from the global RNG unless given a seed of its own.
        options["noise_sampler_seed"] = seed
    if base_config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in _parameters(cls):
        options["trained_betas"] = zero_terminal_snr_betas(base_config)
    return cls.from_config(base_config, **options)


def prediction_config(v_prediction: bool, zero_terminal_snr: bool) -> dict[str, Any]:
    """Scheduler config overrides for a model's prediction type, as diffusers documents them for
    v-prediction and zero-terminal-SNR models (NoobAI-XL v-pred and its derivatives)."""
    config: dict[str, Any] = {"prediction_type": "v_prediction" if v_prediction else "epsilon"}
    if zero_terminal_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return config


def zero_terminal_snr_betas(config: dict[str, Any]) -> list[float]:
    """The betas that `rescale_betas_zero_snr=True` gives diffusers' Euler: the config's schedule rescaled
    to zero terminal SNR, its last cumulative alpha then clamped to 2**-24 (a finite last sigma)."""
    import torch
    from diffusers import EulerDiscreteScheduler
    from diffusers.schedulers.scheduling_euler_discrete import rescale_zero_terminal_snr

    # the betas the config describes (beta_schedule, beta_start/end or trained_betas), before rescaling
    plain = EulerDiscreteScheduler.from_config({**config, "rescale_betas_zero_snr": False})
    alphas_cumprod = torch.cumprod(1.0 - rescale_zero_terminal_snr(plain.betas), dim=0)
    alphas_cumprod[-1] = 2**-24
    alphas = alphas_cumprod / torch.cat([torch.ones(1), alphas_cumprod[:-1]])
    return (1.0 - alphas).tolist()


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls).parameters)
