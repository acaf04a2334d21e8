"""The engine's LoRA wing: LoRA-like files applied to a loaded main model for a request.

- `apply.py`: the orchestrator and the only entry the rest of the engine uses (`Loras.apply`, through
  engine/adapters.py): it picks the mechanism for each file of a request;
- `peft_adapters.py`: plain LoRAs as PEFT adapters, through diffusers' loader;
- `slots.py`: LoRA hot-swap slots of a compiled UNet (`LoraSlots`, built by engine/acceleration.py);
- `lycoris.py`: LyCORIS and DoRA files patched into the weights;
- `files.py`: what the mechanisms are given of a request's files, and a LoRA's PEFT adapter name.

Nothing is imported here: acceleration.py builds `slots.LoraSlots`, and apply.py imports acceleration.py.
"""
