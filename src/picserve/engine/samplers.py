"""A1111 sampler names → diffusers schedulers: one table, after diffusers' own scheduler docs."""

from __future__ import annotations

from typing import Any

from picserve import domain

__all__ = ["TABLE", "make_scheduler"]

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
    return cls.from_config(base_config, **options)
