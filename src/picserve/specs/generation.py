"""The generation task kind: GenerateImagesSDXL's wire params → a fully checked GenerationSpec, and
its memory plan (the admission check).

Every check happens here, before queueing (submission.py calls it): once a task is queued it can fail
only for runtime reasons (out of memory, a file that vanished, a cancel), never because its input was
bad. The OpenAI routes rewrite their requests as these params and come here too.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from picserve import admission, domain, errors, modelinfo, reference_images
from picserve import catalog as catalog_module
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import check_index, controlnet, tool_model
from picserve.translate.prompts import PromptTranslator

__all__ = [
    "BASE_FIELDS",
    "MAX_IMAGES",
    "MAX_IMAGES_BASE64_CHARS",
    "NATIVE_AREA",
    "base_fields",
    "check_memory",
    "first_pass_size",
    "from_request",
    "largest_pass",
    "to_spec",
]

_DEFAULTS = {"Steps": 10, "Sampler": "Euler", "ClipSkip": 1, "CFGScale": 7.5}

#: entries of ImageAndMaskList: an image and its mask, and each ControlNet unit's image and mask;
#: every entry must be referenced
MAX_IMAGES = 8
#: the area SDXL was trained at (1024²): a hires fix's first pass and an only-masked crop are made near it
NATIVE_AREA = 1024 * 1024
#: the ImageAndMaskList entries' combined length in base64 characters (about 36 MB of image files),
#: checked before anything is decoded
MAX_IMAGES_BASE64_CHARS = 48 * 1024 * 1024


def from_request(request: messages.GenerateImagesSDXL, services: Services) -> domain.GenerationSpec:
    """`to_spec` with the server's catalog, translator and settings (submission.py's entry)."""
    return to_spec(request, services.catalog, services.translator, services.settings.append_trigger_words)


def check_memory(spec: domain.GenerationSpec, workers: list[tuple[str, int]], catalog: catalog_module.Catalog) -> None:
    """Refuse a size that no live worker could ever run (admission.py): its least memory, one image at
    a time with a tiled decode, above every worker's device memory (`workers`: each live worker's
    device and its memory). With no worker registered, the task is queued (one may come). Reads the
    model file's header: call it off the event loop."""
    entry = catalog.get("main", spec.model_code)
    if not workers or entry is None:
        return
    width, height = largest_pass(spec)

    # the control models a unit names are held beside the main model (IP-Adapters and encoders: a few
    # hundred MB, not counted)
    controls = [c.path for u in spec.control_units if (c := catalog.get("controlnet", u.model_code)) is not None]

    def need(device: str, side_w: int, side_h: int) -> int:
        profile = admission.profile_for(device)
        weights = admission.model_bytes(entry.path, profile.weight_bytes)
        weights += sum(admission.model_bytes(path, profile.weight_bytes) for path in controls)
        return admission.minimum(side_w, side_h, weights, profile, spec.tiling)

    if any(need(device, width, height) <= total for device, total in workers):
        return
    device, total = max(workers, key=lambda w: w[1] - need(w[0], width, height))
    scale = 1.0  # the largest size of this aspect ratio that worker fits, in steps of 64 px
    while scale > 0.05 and need(device, int(width * scale), int(height * scale)) > total:
        scale *= 0.95
    fits_w, fits_h = max(64, int(width * scale) // 64 * 64), max(64, int(height * scale) // 64 * 64)
    raise errors.ParamError(
        f"Width/Height: {spec.width}×{spec.height} needs about {admission.shown(need(device, width, height))} of "
        f"device memory even one image at a time, and the largest of this server's {len(workers)} live "
        f"worker(s) has {admission.shown(total)}; at this aspect ratio it fits up to about {fits_w}×{fits_h}"
    )


#: §5's base generation fields an action rewritten as GenerateImagesSDXL passes on as they are
BASE_FIELDS = ("MainModel", "SubModelList", "PositivePrompts", "NegativePrompts", "TranslatePrompts", "Seed")


def base_fields(request: Any) -> dict[str, Any]:
    """The base generation fields (BASE_FIELDS) of `request` (ApplyReferenceStyle, ModifyMaskedPixels, …):
    what the GenerateImagesSDXL it is rewritten as takes unchanged."""
    return {name: getattr(request, name) for name in BASE_FIELDS}


def largest_pass(spec: domain.GenerationSpec) -> tuple[int, int]:
    """The size of the largest pass the engine denoises for `spec`, in its multiples of 8: width×height
    (a hires fix's second pass too), or an only-masked crop's (at most `masked_resolution`² px)."""
    width, height = spec.width, spec.height
    if spec.mode == "inpaint" and spec.inpaint_area == "masked":
        scale = min(1.0, spec.masked_resolution / (width * height) ** 0.5)
        width, height = max(64, round(width * scale)), max(64, round(height * scale))
    return -(-width // 8) * 8, -(-height // 8) * 8


def first_pass_size(width: int, height: int) -> tuple[int, int]:
    """A hires fix's first pass by default (AI Horde's rule): width×height's aspect ratio at SDXL's native
    area, or half of width×height (A1111's default "upscale by 2") when that is no larger; sides in
    multiples of 8, at least 64."""
    area = width * height
    scale = (NATIVE_AREA / area) ** 0.5 if area > NATIVE_AREA else 0.5
    return max(64, round(width * scale / 8) * 8), max(64, round(height * scale / 8) * 8)


def to_spec(
    request: messages.GenerateImagesSDXL,
    catalog: catalog_module.Catalog,
    translator: PromptTranslator | None = None,
    append_trigger_words: bool = False,
) -> domain.GenerationSpec:
    code = request.MainModel.ModelCode
    entry = catalog.get("main", code)
    if entry is None:
        available = ", ".join(sorted(catalog.entries("main"))) or "none installed"
        raise errors.ModelNotFound(f"MainModel.ModelCode {code!r} is not on this server (available: {available})")
    if entry.info.base not in ("SDXL", "unknown") and not entry.info.base.startswith("custom"):
        raise errors.IncompatibleModel(
            f"MainModel.ModelCode {code!r} is an {entry.info.base} model; GenerateImagesSDXL needs an SDXL model"
        )

    # compat: omitted parameters take the model's own defaults (as ListModels shows them), then PICPIK's.
    given = request.MainModel.InferenceParams
    try:
        own = messages.parse(messages.InferenceParamsModel, entry.inference_params)
    except errors.ParamError as exc:
        raise errors.ModelNotFound(f"model {code!r} has invalid defaults in its sidecar JSON: {exc.message}") from None
    params = {
        name: _first(getattr(given, name, None) if given else None, getattr(own, name), default)
        for name, default in _DEFAULTS.items()
    }
    sampler = domain.canonical_sampler(str(params["Sampler"]))
    if sampler is None:
        raise errors.ParamError(
            f"MainModel.InferenceParams.Sampler: unknown sampler {messages.shown(params['Sampler'])}; "
            f"valid: {', '.join(domain.SAMPLER_NAMES)}"
        )

    steps = int(params["Steps"])
    _check_clip_skip(int(params["ClipSkip"]), entry)
    _check_image_list_size(request.ImageAndMaskList or [])
    units, control_images, control_used = controlnet.units(request, entry, catalog)
    images = _reference_images(request, steps, control_used)
    _check_inpainting_model(entry, images)
    hires = _hires(request, steps, images, catalog)
    sub_models = _sub_models(request.SubModelList or [], entry, catalog)
    if any(u.model_type == "ipadapter" for u in units) and any(s.kind == "hypernetwork" for s in sub_models):
        raise errors.ParamError(
            "SubModelList: a hypernetwork and an IP-Adapter (ControlNetList) cannot be used together: both replace "
            "the UNet's attention processors"
        )
    # a LoRA at weight 0 changes nothing, not even the prompt: the engine skips it too (the base image)
    loras = [catalog.get("lora", s.code) for s in sub_models if s.kind == "lora" and s.weight != 0]

    original = _join(request.PositivePrompts, "PositivePrompts")
    original_negative = _join(request.NegativePrompts, "NegativePrompts")
    prompt, negative = original, original_negative
    warnings: list[str] = []
    if request.TranslatePrompts and translator is not None:
        # Embedding tokens and trigger words are names, not words: they pass through untranslated.
        trigger_words = [word for lora in loras if lora for word in lora.trigger_words]
        keep = frozenset(word.lower() for word in [*catalog.entries("embedding"), *trigger_words])
        prompt, negative, warnings = _translated(translator, original, original_negative, keep)
    if append_trigger_words:
        prompt = _with_trigger_words(prompt, loras)
    sub_models += _embeddings_in_prompts(f"{prompt}\n{negative}", sub_models, entry, catalog)
    seed = secrets.randbelow(2**31) if request.Seed == -1 else request.Seed
    return domain.GenerationSpec(
        model_code=code,
        prompt=prompt,
        negative_prompt=negative,
        width=request.Width,
        height=request.Height,
        batch_size=request.BatchSize,
        steps=steps,
        cfg_scale=float(params["CFGScale"]),
        sampler=sampler,
        clip_skip=int(params["ClipSkip"]),
        seed=seed,
        tiling=request.Tiling,
        sub_models=tuple(sub_models),
        original_prompt=original,
        original_negative_prompt=original_negative,
        warnings=tuple(warnings),
        control_units=units,
        control_images=control_images,
        control_images_keys=tuple(None for _ in control_images),
        return_control_maps=request.ReturnControlMaps,
        hires=hires,
        face_fix=_face_fix(request.FaceRestore, catalog),
        **images,
    )


def _face_fix(given: messages.FaceRestoreModel | None, catalog: catalog_module.Catalog) -> domain.FaceFix | None:
    """FaceRestore → the face models (named, else the defaults: as RestoreFaces chooses them) and strength."""
    if given is None:
        return None
    restorer = tool_model(catalog, "faces", given.FaceModel, "FaceRestore.FaceModel", "a face restorer (GFPGAN)")
    detector = tool_model(
        catalog, "facedetect", given.FaceDetectModel, "FaceRestore.FaceDetectModel", "a face detector (YuNet .onnx)"
    )
    return domain.FaceFix(restorer.code, detector.code, given.RestoreStrength)


def _hires(
    request: messages.GenerateImagesSDXL, steps: int, images: dict[str, Any], catalog: catalog_module.Catalog
) -> domain.Hires | None:
    """HiresFix → the two passes' plan, checked: text-to-image only (as A1111's), an upscaler that is
    installed, a first pass smaller than Width×Height, and at least one second-pass step."""
    fix = request.HiresFix
    if fix is None:
        return None
    if images:
        raise errors.ParamError(
            "HiresFix: applies to text-to-image only (as A1111's hires fix); leave out Image2Image, or upscale the "
            "image with ResizeImage"
        )
    if fix.Upscaler not in messages.HIRES_UPSCALERS:
        entry = catalog.get("upscale", fix.Upscaler)
        if entry is None or entry.info.problem:
            installed = ", ".join([*messages.HIRES_UPSCALERS, *sorted(catalog.entries("upscale"))])
            why = f"cannot be used: {entry.info.problem}" if entry is not None else "is not on this server"
            raise errors.ModelNotFound(f"HiresFix.Upscaler {fix.Upscaler!r} {why} (available: {installed})")
    width, height = request.Width, request.Height
    first_w, first_h = first_pass_size(width, height)
    if fix.FirstPassWidth is not None and fix.FirstPassHeight is not None:
        first_w, first_h = fix.FirstPassWidth, fix.FirstPassHeight
    elif fix.FirstPassWidth is not None:  # the other side by Width×Height's aspect ratio
        first_w, first_h = fix.FirstPassWidth, max(64, round(fix.FirstPassWidth * height / width / 8) * 8)
    elif fix.FirstPassHeight is not None:
        first_w, first_h = max(64, round(fix.FirstPassHeight * width / height / 8) * 8), fix.FirstPassHeight
    if first_w > width or first_h > height or (first_w, first_h) == (width, height):
        raise errors.ParamError(
            f"HiresFix.FirstPassWidth/FirstPassHeight: the first pass ({first_w}×{first_h}) must be smaller than "
            f"Width×Height ({width}×{height}), no side larger"
        )
    second_steps = fix.Steps or steps
    if int(second_steps * fix.DenoisingStrength) < 1:
        raise errors.ParamError(
            f"HiresFix.DenoisingStrength {fix.DenoisingStrength:g} × Steps {second_steps} leaves no denoising step: "
            "their product must be at least 1"
        )
    return domain.Hires(first_w, first_h, fix.Upscaler, second_steps, fix.DenoisingStrength)


def _check_clip_skip(clip_skip: int, main: catalog_module.Entry) -> None:
    """ClipSkip n reads the text encoder's hidden state −(n + 1): at most as deep as its layer count."""
    layers = main.info.text_encoder_layers
    if layers is not None and clip_skip > layers:
        raise errors.ParamError(
            f"MainModel.InferenceParams.ClipSkip: must be between 1 and {layers} for model {main.code!r} "
            f"(got {clip_skip})"
        )


def _check_inpainting_model(main: catalog_module.Entry, images: dict[str, Any]) -> None:
    """An inpainting model (9-channel UNet) generates only from an image and its mask."""
    if main.info.unet_in_channels == 9 and images.get("mask_image") is None:
        raise errors.ParamError(
            f"MainModel.ModelCode {main.code!r} is an inpainting model (9-channel UNet): send an image and a mask "
            "(ImageAndMaskList with Image2Image.ImageIndex, and the mask in the next entry or at Image2Image.MaskIndex)"
        )


def _reference_images(request: messages.GenerateImagesSDXL, steps: int, control_used: set[int]) -> dict[str, Any]:
    """Image2Image → the image (and mask) it points at, each decoded once here so bad input never queues.

    The mask (white = repaint) is `Image2Image.MaskIndex` when given, else the entry right after the image.
    Cheap checks first (count, total size, indexes, every entry used); only then the two entries are decoded.
    """
    images = request.ImageAndMaskList or []
    i2i = request.Image2Image
    if i2i is None:
        if images and not control_used:
            raise errors.ParamError("ImageAndMaskList: images were sent but no Image2Image refers to them")
        if unused := [i for i in range(len(images)) if i not in control_used]:
            raise errors.ParamError(
                f"ImageAndMaskList[{unused[0]}]: no index refers to this entry (no Image2Image, and no "
                "ControlNetList unit uses it)"
            )
        return {}
    for name, given in (("ImageIndex", i2i.ImageIndex), ("MaskIndex", i2i.MaskIndex)):
        if given is not None:
            check_index(f"Image2Image.{name}", given, images)
    if i2i.MaskIndex is not None and i2i.MaskIndex == i2i.ImageIndex:
        raise errors.ParamError(
            f"Image2Image.MaskIndex {i2i.MaskIndex} is the ImageIndex: the mask must be another ImageAndMaskList entry"
        )
    if int(steps * i2i.ReferStrength) < 1:
        raise errors.ParamError(
            f"Image2Image.ReferStrength {i2i.ReferStrength:g} × Steps {steps} leaves no denoising step: "
            "their product must be at least 1"
        )
    mask_index = i2i.MaskIndex if i2i.MaskIndex is not None else i2i.ImageIndex + 1
    # the entry after the image is its mask only when no ControlNet unit uses that entry
    has_mask = mask_index < len(images) and (i2i.MaskIndex is not None or mask_index not in control_used)
    _check_every_entry_used(len(images), i2i.ImageIndex, mask_index if has_mask else None, control_used)
    reference_images.decode(images[i2i.ImageIndex], f"ImageAndMaskList[{i2i.ImageIndex}]")
    if has_mask:
        reference_images.decode(images[mask_index], f"ImageAndMaskList[{mask_index}]")
    return {
        "init_image": reference_images.strip_data_uri(images[i2i.ImageIndex]),
        "mask_image": reference_images.strip_data_uri(images[mask_index]) if has_mask else None,
        "strength": i2i.ReferStrength,
        "resize_mode": i2i.ResizeMode,
    }


def _check_image_list_size(images: list[str]) -> None:
    """At most MAX_IMAGES entries of at most MAX_IMAGES_BASE64_CHARS in all, before any decoding."""
    if len(images) > MAX_IMAGES:
        raise errors.ParamError(
            f"ImageAndMaskList: must hold at most {MAX_IMAGES} entries: an image and its mask, and each "
            f"ControlNetList unit's image and mask (got {len(images)})"
        )
    total = sum(len(text) for text in images)
    if total > MAX_IMAGES_BASE64_CHARS:
        raise errors.ParamError(
            f"ImageAndMaskList: the images must total at most {MAX_IMAGES_BASE64_CHARS} base64 characters (got {total})"
        )


def _check_every_entry_used(count: int, image_index: int, mask_index: int | None, control_used: set[int]) -> None:
    """An entry no index refers to would be ignored: it is refused instead."""
    unused = [i for i in range(count) if i not in (image_index, mask_index) and i not in control_used]
    if unused:
        mask = f"the mask is entry {mask_index}" if mask_index is not None else "there is no mask"
        raise errors.ParamError(
            f"ImageAndMaskList[{unused[0]}]: no index refers to this entry (Image2Image.ImageIndex is "
            f"{image_index}; {mask}); send only the image and its mask"
        )


def _sub_models(
    requested: list[messages.Model], main: catalog_module.Entry, catalog: catalog_module.Catalog
) -> list[domain.SubModel]:
    """SubModelList → LoRAs, embeddings, hypernetworks found in the models folder and checked to fit."""
    out: list[domain.SubModel] = []
    for i, item in enumerate(requested):
        field = f"SubModelList[{i}].ModelCode"
        found = catalog.find_sub_model(item.ModelCode)
        if not found:
            raise errors.ModelNotFound(
                f"{field} {item.ModelCode!r} is not a LoRA, embedding or hypernetwork on this server (see ListModels)"
            )
        if len(found) > 1:
            raise errors.ParamError(
                f"{field} {item.ModelCode!r} is ambiguous: it names a "
                f"{' and a '.join(e.kind for e in found)}; rename one of the files"
            )
        sub = found[0]
        _check_fits(field, sub, main)
        given = item.InferenceParams.LoraWeight if item.InferenceParams else None
        default = sub.inference_params.get("LoraWeight", 1.0)
        # LoraWeight also scales hypernetworks (A1111's multiplier); embeddings have no weight.
        weight = float(given if given is not None else default)
        if any(s.code == sub.code for s in out):
            raise errors.ParamError(f"{field} {item.ModelCode!r} is listed twice")
        out.append(domain.SubModel(kind=sub.kind, code=sub.code, weight=weight))
    return out


def _check_fits(field: str, sub: catalog_module.Entry, main: catalog_module.Entry) -> None:
    if sub.info.problem:
        raise errors.IncompatibleModel(f"{field} {sub.code!r} cannot be used: {sub.info.problem}")
    # The same test as ListModels' CompatibleMainModels: every width, and every part the main model needs.
    reason = modelinfo.misfit(main.info, sub.info, sub.kind)
    if reason is not None:
        raise errors.IncompatibleModel(
            f"{field} {sub.code!r} is a {sub.info.base} {sub.kind} and does not fit main model {main.code!r} "
            f"({main.info.base}): {reason}"
        )


def _with_trigger_words(prompt: str, loras: list[catalog_module.Entry | None]) -> str:
    """A LoRA's trigger words are appended when the prompt does not hold them yet."""
    missing = []
    for entry in loras:
        for word in entry.trigger_words if entry else ():
            if word and word.lower() not in prompt.lower() and word not in missing:
                missing.append(word)
    return ", ".join(p for p in [prompt, *missing] if p)


def _embeddings_in_prompts(
    text: str, chosen: list[domain.SubModel], main: catalog_module.Entry, catalog: catalog_module.Catalog
) -> list[domain.SubModel]:
    """Embeddings are used by writing their ModelCode in a prompt, as in A1111: load those found there."""
    taken = {s.code for s in chosen}
    found = []
    for code, entry in catalog.entries("embedding").items():
        if code in taken or not re.search(rf"(?<![\w-]){re.escape(code)}(?![\w-])", text):
            continue
        if modelinfo.compatible(main.info, entry.info, "embedding"):
            found.append(domain.SubModel(kind="embedding", code=code))
    return found


def _first(*values):
    return next(v for v in values if v is not None)


def _join(prompts: list[str] | None, field: str) -> str:
    # A1111 takes one prompt string; PICPIK's list parts are joined as comma-separated tags.
    joined = ", ".join(p.strip() for p in prompts or () if p and p.strip())
    if len(joined) > messages.MAX_PROMPT_CHARS:
        raise errors.ParamError(
            f"{field}: must total at most {messages.MAX_PROMPT_CHARS} characters once joined (got {len(joined)})"
        )
    return joined


def _translated(
    translator: PromptTranslator, prompt: str, negative: str, keep: frozenset[str]
) -> tuple[str, str, list[str]]:
    positive = translator.translate(prompt, keep)
    negative_t = translator.translate(negative, keep, hint=next(iter(positive.languages), None))
    missing = list(dict.fromkeys(positive.untranslated + negative_t.untranslated))
    warnings = [
        f"TranslatePrompts: no {lang}→en translation model is installed "
        f"(`picserve models pull-translation {lang}`); that part of the prompt was used as given"
        for lang in missing
    ]
    return positive.text, negative_t.text, warnings
