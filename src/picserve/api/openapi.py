"""`GET /openapi.json` and `GET /docs`: the API described from the models the server validates with.

Nothing here restates a field. The request schemas are the pydantic models of `protocol.messages`
(the ones `messages.parse` checks a request against) with the envelope's fields added; the replies are
the TypedDicts of `sdk.types`; the other routes (results, health and whatever else the app serves) are
described by FastAPI from their own signatures. What this module adds is the document's shape: one
`POST /` whose body is a `oneOf` discriminated by `Action`, the prose (the signature, the RetCodes),
signed examples, and which parts are picserve extensions of PICPIK.

The docs pages (Swagger UI at /docs, Redoc at /redoc) load their scripts from the package
(`fastapi_offline`'s copies), never from a CDN: the server may be offline.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, create_model
from typing_extensions import TypedDict

from picserve import __version__, errors, submission
from picserve.api.actions import ACTIONS
from picserve.protocol import envelope, messages, signature
from picserve.sdk import types as sdk_types

__all__ = [
    "ASSETS_URL",
    "DOCS_URL",
    "EXTENSION",
    "EXTENSION_FIELDS",
    "FIELD_NOTES",
    "OPENAPI_URL",
    "REDOC_URL",
    "REPLIES",
    "REQUESTS",
    "document",
    "install",
]

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
#: where the docs pages' scripts and styles are served from (the package's own copies)
ASSETS_URL = "/docs/assets"
_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

#: the model each action's parameters are checked against (`messages.parse` in its handler): every Action
#: that makes a task (submission.KINDS), and the read-only ones
_READ_ONLY: dict[str, type[BaseModel]] = {
    "CancelTask": messages.CancelTask,
    "GetCreditBalance": messages.Empty,
    "ListControlNets": messages.Empty,
    "ListModels": messages.Empty,
    "ListRunningTasks": messages.Empty,
    "ListTasksDetails": messages.ListTasksDetails,
}
REQUESTS: dict[str, type[BaseModel]] = dict(
    sorted({**{action: kind.message for action, kind in submission.KINDS.items()}, **_READ_ONLY}.items())
)
#: each action's own reply fields (beside Action, RetCode, Message, request_uuid); None: it has none
REPLIES: dict[str, type | None] = {
    **dict.fromkeys(submission.KINDS, sdk_types.TaskUIDReply),
    "CancelTask": None,
    "GetCreditBalance": sdk_types.CreditBalance,
    "ListControlNets": sdk_types.ControlNetsReply,
    "ListModels": sdk_types.ModelsReply,
    "ListRunningTasks": sdk_types.TaskUIDListReply,
    "ListTasksDetails": sdk_types.TaskDetailsReply,
}
#: the OpenAPI extension keyword marking what PICPIK does not have
EXTENSION = "x-picserve-extension"
#: picserve's additions to PICPIK: whole actions (by name) and fields (by schema, then property)
_EXTENSION_ACTIONS = frozenset({"CancelTask", "ImportModel"})
_WEBHOOK = (
    "Where the task's events are posted, signed with the key's private key: `Url` (http or https, a public "
    'address), `Events` (any of start, progress, completed; default ["completed"]). Without it, the key\'s default '
    "webhook, if any (completed only)."
)
_BACKGROUND_MODEL = (
    "The segmentation model: a ModelCode of ListModels' BackgroundModels. Default: the one whose sidecar says "
    "`Default: true`, else PICSERVE_DEFAULT_BACKGROUND_MODEL, else the only one installed."
)
#: chaining (a picserve extension of a PICPIK field's values, not a field of its own)
_CHAINING = (
    " Or (picserve extension) `task:<TaskUID>/<index>`: the index-th result (0-based) of a Finished task of the "
    "same key, used without downloading and uploading it."
)
#: A1111's control modes, as a unit's ControlMode names them
_CONTROL_MODE = (
    "How the unit weighs against the prompt, as A1111's control modes: `Balanced` (the default: the control "
    'at full weight in every layer, on both halves of the guidance batch), `PromptMoreImportant` ("My prompt is '
    'more important": the control fades from the middle block to the shallowest layers) or '
    '`ControlNetMoreImportant` ("ControlNet is more important": that fading, and the control acts on the '
    "conditional half of the guidance batch only, so the prompt's pull is weaker)."
)
#: what a PICPIK field (by schema, then property) means here, where its type alone does not say
FIELD_NOTES: dict[str, dict[str, str]] = {
    "GenerateImagesSDXLRequest": {
        "ImageAndMaskList": "Every image and mask the request refers to by index (at most 8, each referred to): "
        "Image2Image's reference and inpainting mask, and each ControlNetList unit's control image and mask. "
        "Base64 PNG, JPEG or WebP (bare, or a data URI)." + _CHAINING
    },
    "ControlNet": {
        "ImageIndex": "The control image's index in ImageAndMaskList: the PreProcessor makes the control map of it "
        "(without a PreProcessor, or with `none`, the image is the control map).",
        "MaskIndex": "A mask's index in ImageAndMaskList (white: where the unit acts; another entry than "
        "ImageIndex). Without it, the unit acts on the whole image.",
        "InvertMask": "Invert the mask (the unit acts where it is black).",
        "PreProcessor": "A ModelCode of ListControlNets' PreProcessors and its InferenceParams (CannyLowThreshold, "
        "CannyHighThreshold, Resolution; each left out: the preprocessor's default). Without it: `none`.",
        "ControlModel": "A ModelCode of ListControlNets' ControlModels (an SDXL ControlNet or ControlNet-Union "
        "that fits MainModel) and its InferenceParams (ControlWeight, StartingStep, EndingStep, ControlMode, "
        "ResizeMode; each left out: the model's sidecar default, else PICPIK's: 1, 0, 1, Balanced, "
        "ResizeAndFill).",
    },
    "InferenceParamsModel": {
        "ControlWeight": "A ControlModel's: how strongly the unit steers the image (0: not run at all).",
        "StartingStep": "A ControlModel's: the fraction of the denoising steps at which the unit starts acting.",
        "EndingStep": "A ControlModel's: the fraction of the steps at which it stops (not before StartingStep).",
        "ControlMode": "A ControlModel's. " + _CONTROL_MODE,
        "ResizeMode": "Image2Image's, or a ControlModel's: how the image is brought to Width×Height (as A1111's "
        "resize modes; default ResizeAndFill).",
        "CannyLowThreshold": "The canny PreProcessor's lower hysteresis threshold (default 100).",
        "CannyHighThreshold": "The canny PreProcessor's upper hysteresis threshold (default 200; not below "
        "CannyLowThreshold).",
        "Resolution": "A PreProcessor's: the side the control map is made at (default 512).",
    },
    "ControlNetsReply": {
        "PreProcessors": "The preprocessors this server can run now (the model-free ones always, the others when "
        "their annotator files are installed), by ModelCode, each with its default InferenceParams.",
        "ControlModels": "The control models installed (models/controlnet), by ModelCode, each with its default "
        "InferenceParams (its sidecar's, else PICPIK's).",
    },
    "ResizeImageRequest": {
        "Image": "The image: base64 PNG, JPEG or WebP (bare, or a data URI)." + _CHAINING,
        "Width": "The output's exact width (with Height; the aspect ratio may change: the image is stretched).",
        "Height": "The output's exact height (with Width).",
    },
    "RemoveBackgroundRequest": {
        "RawImage": "The image: base64 PNG, JPEG or WebP (bare, or a data URI)." + _CHAINING,
        "Box": "`[x1, y1, x2, y2]`: where the subject is, inside the image, x1 < x2 and y1 < y2.",
        "OnlyMask": "Return the mask (a grey PNG) instead of the RGBA cut-out.",
    },
    "RemoveBackgroundsInBatchRequest": {
        "RawImages": "1 to 16 images, each as RemoveBackground's RawImage; one result each, in order." + _CHAINING,
        "OnlyMask": "Return the masks (grey PNGs) instead of the RGBA cut-outs.",
    },
    "ModifyMaskedPixelsRequest": {
        "ImageAndMaskList": "1 to 3 images: the image, its mask (white: repaint; the image's size) and "
        "optionally an extra image starting the masked region, each referred to by an index (Masked, "
        "Image2Image). Base64 PNG, JPEG or WebP (bare, or a data URI)." + _CHAINING,
        "Masked": "The image and its mask by ImageAndMaskList index, the mask's inversion and blur (px, default 12).",
        "Image2Image": "ReferStrength: how much of the masked region is redrawn (0 to 1; without Image2Image, 1: "
        "all of it). An ImageIndex other than Masked.ImageIndex names an extra image whose content starts the "
        "masked region.",
        "Width": "The result's width. Default: the image's width plus Outpaint.Left and Right.",
        "Height": "The result's height. Default: the image's height plus Outpaint.Top and Bottom.",
    },
    "MaskModel": {
        "ImageIndex": "The image's index in ImageAndMaskList (default 0).",
        "MaskIndex": "The mask's index in ImageAndMaskList (white: repaint; the image's size; another entry than "
        "ImageIndex). May be left out when Outpaint margins are given: then only they are painted.",
        "InvertMask": "Invert the mask (repaint where it is black).",
        "MaskBlur": "The mask's feathering in px, 0 to 64 (default 12).",
    },
    "RemoveContentsRequest": {
        "RawImage": "The image: base64 PNG, JPEG or WebP (bare, or a data URI)." + _CHAINING,
        "Mask": "What to erase (white), the image's size, as RawImage.",
        "InvertMask": "Invert the mask (erase where it is black).",
        "MaskBlur": "The mask's feathering in px, 0 to 64 (default 12).",
    },
    "ApplyReferenceStyleRequest": {
        "ImageList": "The raw image and the style image (1 or 2 entries), base64 PNG, JPEG or WebP (bare, or a "
        "data URI)." + _CHAINING,
        "RawImageIndex": "The raw image's index in ImageList: redrawn by image to image.",
        "StyleImageIndex": "The style image's index in ImageList.",
        "StyleReferStrength": "How strongly the style image steers the result (the IP-Adapter's weight), 0 to 1.",
        "Width": "Default: the raw image's width (scaled to fit 2560, to a multiple of 8).",
        "Height": "Default: the raw image's height (scaled to fit 2560, to a multiple of 8).",
    },
}
EXTENSION_FIELDS: dict[str, dict[str, str]] = {
    "Image2ImageModel": {
        "MaskIndex": "The inpainting mask's index in ImageAndMaskList (white: repaint); without it, the entry "
        "after the image, if any.",
    },
    "GenerateImagesSDXLRequest": {
        "ControlNetList": "Up to 3 ControlNet units (PICPIK has this field on GenerateImages, the SD 1.5 action, "
        "not on GenerateImagesSDXL): each steers the generation with a control map made from an ImageAndMaskList "
        "entry. Every unit's model must fit MainModel; ControlNet-Union models and plain ControlNets are not "
        "mixed in one request.",
        "ReturnControlMaps": "Also return the control map of each unit that ran (weight above 0, a step range "
        "that is not empty), in ImgList after the images, in the units' order (SeedList has the images' seeds "
        "only). Default false.",
        "HiresFix": "A1111's hires fix: the image is made at a first-pass size the model is good at, upscaled to "
        "Width×Height (the final size) and denoised again there. Text-to-image only (refused with Image2Image).",
        "FaceRestore": "Restore every image's faces once it is made (A1111's \"Restore faces\"), as RestoreFaces "
        "does: RestoreStrength (0 to 1, default 0.5), FaceModel and FaceDetectModel (default: RestoreFaces'). "
        "Control maps are left as they are.",
        "Webhook": _WEBHOOK,
    },
    "ModifyMaskedPixelsRequest": {
        "Outpaint": "Outpainting: the canvas grows by these px per side (Left, Top, Right, Bottom, 0 to 2560); the "
        "new area is pre-filled from the image's edges and painted.",
        "Webhook": _WEBHOOK,
    },
    "MaskModel": {
        "InpaintArea": "`WholePicture` (default) or `OnlyMasked`: A1111's \"inpaint area: only masked\", the mask's "
        "box plus OnlyMaskedPadding px generated at about OnlyMaskedResolution² px and pasted back (more detail "
        "in a small region).",
        "OnlyMaskedPadding": "With OnlyMasked: px around the mask's box, 0 to 256 (default 32).",
        "OnlyMaskedResolution": "With OnlyMasked: the crop is generated at about this² px, 64 to 2048 (default 1024).",
    },
    "RemoveContentsRequest": {
        "EraseModel": "The eraser: a ModelCode of ListModels' InpaintModels (models/inpaint, a LaMa-family model). "
        "Default: the one whose sidecar says `Default: true`, else the only one installed.",
        "MainModel": "Erase with an SDXL inpainting pass of this main model instead (an empty-scene prompt, only "
        "the masked region); the way taken when no eraser is installed (then an SDXL inpainting checkpoint, else "
        "the only main model). Not with EraseModel.",
        "Seed": "The SDXL pass's seed (-1: random).",
        "Webhook": _WEBHOOK,
    },
    "InferenceParamsModel": {
        "ControlType": "A ControlNet-Union ControlModel's control type for the unit: openpose, depth, softedge, "
        "canny, normal, segment, tile or repaint. Default: the type its PreProcessor's map feeds; a Union unit "
        "without a PreProcessor must name it. Refused on a plain ControlNet.",
    },
    "PreProcessorInfo": {
        "ControlType": "The ControlNet-Union control type its map feeds (null: none, or any for `none`).",
        "ControlModels": "The installed control models it pairs with.",
    },
    "ControlModelInfo": {
        "Type": "`ControlNet` or `ControlNetUnion` (xinsir's union models: one model, a ControlType per unit).",
        "BaseModel": "The base model it was made for (SDXL; an SD1 ControlNet is listed but fits no main model).",
        "CompatibleMainModels": "The main models (ListModels' MainModels) it fits.",
        "PreProcessors": "The preprocessors it pairs with: its own first (its sidecar's `PreProcessor`, else its "
        "file name's), `none` last.",
        "ControlTypes": "A ControlNet-Union's control types.",
        "Problem": "Why the file cannot be used (absent when it can).",
    },
    "ResizeImageRequest": {
        "Scale": "Instead of Width and Height: the output is the input's size times Scale (1 to 8, e.g. 2 or 4). "
        "Give Width and Height, or Scale alone.",
        "UpscaleModel": "The upscaler: a ModelCode of ListModels' UpscaleModels, or `Lanczos` (no model, a plain "
        "resample). Default: the upscaler whose sidecar says `Default: true`, else PICSERVE_DEFAULT_UPSCALER, else "
        "the only one installed, else Lanczos.",
        "Webhook": _WEBHOOK,
    },
    "RemoveBackgroundRequest": {"BackgroundModel": _BACKGROUND_MODEL, "Webhook": _WEBHOOK},
    "ApplyReferenceStyleRequest": {
        "StyleModel": "The IP-Adapter: a ModelCode of ListControlNets' ControlModels of Type IPAdapter. Default: "
        "the one whose sidecar says `Default: true`, else the only one installed.",
        "RawReferStrength": "How much of the raw image is redrawn (image to image's denoising strength), 0 to 1.",
        "Webhook": _WEBHOOK,
    },
    "RemoveBackgroundsInBatchRequest": {"BackgroundModel": _BACKGROUND_MODEL, "Webhook": _WEBHOOK},
    "RestoreFacesRequest": {
        "FaceModel": "The face restorer: a ModelCode of ListModels' FaceModels (models/faces: GFPGAN, "
        "RestoreFormer, CodeFormer where the operator installed it). Default: the one whose sidecar says "
        "`Default: true`, else the only one installed.",
        "FaceDetectModel": "The face detector: a ModelCode of ListModels' FaceDetectModels (models/facedetect: "
        "OpenCV's YuNet). Default as FaceModel's.",
        "Webhook": _WEBHOOK,
    },
    "ExtractContentsRequest": {
        "SegmentModel": "The point segmenter: a ModelCode of ListModels' SegmentModels (models/segment: a Segment "
        "Anything folder). Default: the one whose sidecar says `Default: true`, else the only one installed.",
        "Webhook": _WEBHOOK,
    },
    "DescribeImagesRequest": {
        "CaptionModel": "The captioner (BLIP, Florence-2, …) or booru tagger (WD-style): a ModelCode of "
        "ListModels' CaptionModels. Default: the one whose sidecar says `Default: true`, else the only one "
        "installed.",
        "Webhook": _WEBHOOK,
    },
    "GenerateBackgroundsRequest": {"Webhook": _WEBHOOK},
    "ForegroundModel": {
        "Scale": "The foreground's size factor, 0.05 to 8. Default 1, or what fits Width×Height when the "
        "foreground is larger.",
        "X": "The foreground's left edge on the canvas, in px (it must lie on the canvas). Default: centred.",
        "Y": "The foreground's top edge on the canvas, in px. Default: centred.",
    },
    "ModelsReply": {
        "VaeModels": "The installed VAEs (a VAE belongs to a main model; requests do not name one).",
        "UpscaleModels": "ResizeImage's upscalers (models/upscale), by ModelCode: Name, ModelCode, IsOfficial, "
        "Architecture (e.g. ESRGAN; null if unknown), Scale (the native factor; null if unknown), IsDefault, and "
        "Problem when the file is broken.",
        "BackgroundModels": "RemoveBackground's segmentation models (models/background, ONNX), by ModelCode: Name, "
        "ModelCode, IsOfficial, Session (the rembg family, e.g. birefnet-general), IsDefault, and Problem when the "
        "file is broken.",
        "InpaintModels": "RemoveContents' erasers (models/inpaint, LaMa-family), by ModelCode: Name, ModelCode, "
        "IsOfficial, IsDefault, and Problem when the file is broken.",
        "FaceModels": "RestoreFaces' face restorers (models/faces), by ModelCode: Name, ModelCode, IsOfficial, "
        "Architecture (null until known), IsDefault, and Problem when the file is broken.",
        "FaceDetectModels": "RestoreFaces' face detectors (models/facedetect, YuNet ONNX), by ModelCode: Name, "
        "ModelCode, IsOfficial, IsDefault, and Problem when the file is broken.",
        "SegmentModels": "ExtractContents' point segmenters (models/segment, Segment Anything folders), by "
        "ModelCode: Name, ModelCode, IsOfficial, IsDefault, and Problem when the folder is broken.",
        "CaptionModels": "DescribeImages' captioners and taggers (models/caption), by ModelCode: Name, ModelCode, "
        "IsOfficial, IsDefault, and Problem when the folder is broken.",
    },
    "TaskDetail": {
        "Progress": "The fraction of denoising done, 0 to 1.",
        "SeedList": "Every image's seed, in ImgList's order.",
        "Warnings": "Notes on the request (for example a prompt part that could not be translated).",
        "Prompt": "The prompt as the model saw it (joined, translated).",
        "NegativePrompt": "The negative prompt as the model saw it.",
        "OriginalPrompt": "The prompt as sent (joined).",
        "OriginalNegativePrompt": "The negative prompt as sent (joined).",
        "PreviewImage": "While Running, when previews are on: the image so far, a small JPEG data URI.",
        "QueuePosition": "While Queuing: 1 + the tasks (of any key) queued before it.",
    },
}

_REF = "#/components/schemas/{model}"
#: the spec's test keys (section 2.4): the examples are signed with them, so a reader can check a signer
_EXAMPLE_PUBLIC_KEY, _EXAMPLE_PRIVATE_KEY = "abcdefg", "123456"
_EXAMPLE_TASK_UID = "ckti5nf2h4keq8mr9n00"
_EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "GenerateImagesSDXL": {
        "MainModel": {"ModelCode": "sdxl-base", "InferenceParams": {"Steps": 20, "CFGScale": 7}},
        "PositivePrompts": ["a red fox in snow"],
        "NegativePrompts": ["blurry"],
        "Width": 1024,
        "Height": 1024,
        "Seed": -1,
    },
    # the raw image chained from the task below, redrawn in the style of a painting
    "ApplyReferenceStyle": {
        "MainModel": {"ModelCode": "sdxl-base"},
        "PositivePrompts": ["a harbour at dawn"],
        "ImageList": [f"task:{_EXAMPLE_TASK_UID}/0", "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD…"],
        "RawImageIndex": 0,
        "StyleImageIndex": 1,
        "StyleReferStrength": 0.6,
    },
    "ListTasksDetails": {"TaskUIDList": [_EXAMPLE_TASK_UID]},
    "CancelTask": {"TaskUIDList": [_EXAMPLE_TASK_UID]},
    # chained: the first image of the task above, upscaled 2× (Scale and task: are picserve extensions)
    "ResizeImage": {"Image": f"task:{_EXAMPLE_TASK_UID}/0", "Scale": 2},
    "RemoveBackground": {
        "RawImage": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD…",
        "Box": [180, 264, 510, 642],
        "ErodeSize": 15,
        "ForegroundThreshold": 240,
        "BackgroundThreshold": 15,
        "HairOptimization": "auto",
        "OnlyMask": False,
    },
    "RemoveBackgroundsInBatch": {
        "RawImages": [f"task:{_EXAMPLE_TASK_UID}/0", f"task:{_EXAMPLE_TASK_UID}/1"],
        "OnlyMask": True,
    },
    # the generated image above, a region repainted (only the mask's box) and the canvas grown on both sides
    "ModifyMaskedPixels": {
        "MainModel": {"ModelCode": "sdxl-inpainting"},
        "PositivePrompts": ["a red scarf"],
        "ImageAndMaskList": [f"task:{_EXAMPLE_TASK_UID}/0", "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA…"],
        "Masked": {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 12, "InpaintArea": "OnlyMasked"},
        "Outpaint": {"Left": 128, "Right": 128},
    },
    "RemoveContents": {
        "RawImage": f"task:{_EXAMPLE_TASK_UID}/0",
        "Mask": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA…",
        "MaskBlur": 12,
    },
    # the portrait above, its faces restored
    "RestoreFaces": {"RawImage": f"task:{_EXAMPLE_TASK_UID}/0", "RestoreStrength": 0.5},
    "ExtractContents": {
        "RawImage": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD…",
        "IncludePointList": [{"X": 72, "Y": 270}],
        "ExcludePointList": [{"X": 10, "Y": 10}],
    },
    "DescribeImages": {
        "ImageList": ["data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD…", f"task:{_EXAMPLE_TASK_UID}/0"],
        "TranslateDescription": "en",
    },
    # the subject extracted above (its RGBA result), on a new background
    "GenerateBackgrounds": {
        "MainModel": {"ModelCode": "sdxl-inpainting"},
        "PositivePrompts": ["a perfume bottle on a marble table, soft morning light"],
        "ImageList": [f"task:{_EXAMPLE_TASK_UID}/0"],
        "TransparentForeground": {"ImageIndex": 0, "Scale": 0.8},
        "Width": 1024,
        "Height": 1024,
    },
    "ImportModel": {
        "Url": "https://huggingface.co/some-user/some-lora/resolve/main/style.safetensors",
        "ModelCode": "ink-style",
        "Kind": "lora",
        "Sha256": "5f1c8ad0e1b1f0c2f9f06b2d1f7a4a1c5b0c8e3e9d1f6a2b7c4d8e0f1a2b3c4d",
    },
}

#: the actions that make a task (one handler, api/actions/make_task.py, serves them all): what each does
_ACTION_DOCS = {
    "GenerateImagesSDXL": "Generate images with an SDXL model (text to image, image to image, inpainting).\n\n"
    "Queues a task and returns its TaskUID; ListTasksDetails gives its progress, then its PNGs in ImgList. "
    "Charged when it finishes: ceil(Width × Height × Steps × BatchSize / PICSERVE_CREDIT_DIVISOR), at least 1.",
    "ResizeImage": "Upscale (or resize) an image to exactly Width×Height, or (picserve extension) to its size × "
    "Scale.\n\nAn upscaling model runs at its native scale, tiled, then a Lanczos resample gives the exact size "
    "(the image is stretched if the aspect ratio changes; a target no larger than the image is a plain "
    "downscale). Queues a task whose one result is a PNG in ImgList. Charged when it finishes: "
    "ceil(output pixels / PICSERVE_CREDIT_DIVISOR), at least 1 (1 credit per output megapixel by default).",
    "RemoveBackground": "Cut out an image's main subject.\n\nQueues a task whose one result is an RGBA PNG in "
    "ImgList (with OnlyMask, the mask: a grey PNG). Charged when it finishes: ceil(pixels / "
    "PICSERVE_CREDIT_DIVISOR), at least 1.",
    "ApplyReferenceStyle": 'Redraw an image in the style of another ("style conversion").\n\nThe raw image is '
    "redrawn by image to image, guided by the prompts and by the style image through an IP-Adapter; the base "
    "generation fields are GenerateImagesSDXL's. Queues a task and returns its TaskUID; its PNGs in ImgList. "
    "Charged when it finishes, as GenerateImagesSDXL: ceil(Width × Height × Steps × BatchSize / "
    "PICSERVE_CREDIT_DIVISOR), at least 1.",
    "ModifyMaskedPixels": "Repaint the masked region of an image (inpainting), or grow its canvas and paint "
    "the new area (outpainting).\n\nThe image and its mask (white: repaint) are ImageAndMaskList entries named "
    "by Masked; the base generation fields are GenerateImagesSDXL's, Width and Height default to the image's size "
    "plus the (picserve extension) Outpaint margins. Pixels outside the feathered mask are the image's. Queues a "
    "task and returns its TaskUID; its PNGs in ImgList. Charged when it finishes, as GenerateImagesSDXL.",
    "RemoveContents": "Erase what a mask covers in an image and fill it plausibly (the object eraser).\n\nAn "
    "eraser model of models/inpaint (LaMa) does it when one is installed; (picserve extension) MainModel, or no "
    "eraser installed, erases with an SDXL inpainting pass of the masked region. Queues a task whose one result "
    "is a PNG of the image's size in ImgList. Charged when it finishes: with an eraser ceil(pixels / "
    "PICSERVE_CREDIT_DIVISOR), at least 1; the SDXL way as GenerateImagesSDXL.",
    "ImportModel": "Download a model file and install it in the server's models folder (admin keys only).\n\n"
    "As `picserve models add` on the server: a resumable download from Url (http or https; AuthToken, if given, "
    "goes to its host as `Authorization: Bearer …`), checked against Sha256, its safetensors header verified, a "
    "pickle read without being run, its kind told by its tensors (or Kind), filed as models/<kind>/<ModelCode> "
    "with a sidecar. A key made with `picserve keys create --admin` may send it; any other gets RetCode 172. "
    "Queues a task: Progress is the download's fraction; once Finished, TxtList says what was filed (and its "
    "warnings) and ListModels lists it; a refused file ends it with ErrorCode 506. The token, and a Url "
    "carrying credentials, are stored sealed with the server secret and never shown. Never charged.",
    "RestoreFaces": "Restore the faces in an image.\n\nEvery face the detector finds is aligned, restored by a "
    "face model and pasted back with a feathered edge, blended by RestoreStrength (0: the image unchanged, 1: the "
    "restored faces); pixels outside every face's box are the image's. Queues a task whose one result is a PNG in "
    "ImgList. Charged when it finishes: ceil(pixels / PICSERVE_CREDIT_DIVISOR), at least 1.",
    "ExtractContents": "Cut out the object a user clicks on (point-prompted segmentation).\n\nA Segment Anything "
    "model segments the object under IncludePointList and not under ExcludePointList; the cut-out then takes "
    "RemoveBackground's matting fields with their meanings. Queues a task whose one result is an RGBA PNG in "
    "ImgList (with OnlyMask, the mask, equal to the cut-out's alpha). Charged when it finishes: ceil(pixels / "
    "PICSERVE_CREDIT_DIVISOR), at least 1.",
    "DescribeImages": "Turn images into prompts (image to text).\n\nA captioner (BLIP, Florence-2, …) writes a "
    "sentence, a booru tagger (WD-style) a list of tags; a TranslateDescription other than en translates it with "
    "the server's English→language model. Queues a task whose TxtList holds one text per image, in order. "
    "Charged when it finishes: 1 per image.",
    "GenerateBackgrounds": "Generate a background behind a transparent foreground (product photos).\n\nThe "
    "foreground (an RGBA ImageList entry: a RemoveBackground or ExtractContents result) is scaled and placed on "
    "a Width×Height canvas (default: its size); everything outside it is painted by SDXL inpainting, its opaque "
    "pixels are kept exactly and its soft edge blended. BackgroundImage2Image starts the background from an "
    "image, redrawn by ReferStrength: with DeepFusion all of it, else a band around the subject. Queues a task; "
    "its PNGs in ImgList. Charged when it finishes, as GenerateImagesSDXL.",
    "RemoveBackgroundsInBatch": "Cut out the main subject of 1 to 16 images in one task.\n\nAs RemoveBackground "
    "without Box: one result per image in ImgList, in order. Charged when it finishes: per image "
    "ceil(pixels / PICSERVE_CREDIT_DIVISOR), at least 1 each.",
}

_KeyText = Annotated[str, StringConstraints(min_length=1, max_length=envelope.MAX_KEY_CHARS)]


class _Envelope(BaseModel):
    """The fields every request carries (`protocol.envelope`); `Action` is narrowed per action."""

    model_config = ConfigDict(strict=True, extra="forbid")

    Action: _KeyText = Field(description="The operation.")
    PublicKey: _KeyText = Field(description="The account's public key.")
    Signature: _KeyText = Field(
        description="Lowercase hex SHA-1 of the sorted, concatenated fields and the PrivateKey (see the description)."
    )
    request_uuid: Annotated[str, StringConstraints(max_length=envelope.MAX_KEY_CHARS)] | None = Field(
        default=None,
        description="The caller's id for this request (a UUID), echoed in the reply. An action that makes a task "
        "(GenerateImagesSDXL, ApplyReferenceStyle, ModifyMaskedPixels, RemoveContents, ResizeImage, "
        "RemoveBackground, RemoveBackgroundsInBatch, RestoreFaces, ExtractContents, DescribeImages, "
        "GenerateBackgrounds) sent "
        "again with the same request_uuid and parameters returns the first TaskUID instead of queueing again.",
    )


class ResultNotFound(TypedDict):
    """GET /results/{key} when there is no such result, or it has expired."""

    Message: str


_DESCRIPTION = f"""\
picserve serves the **PICPIK** image-generation API on your own hardware.

Every operation is `POST /` with a JSON body; the body's `Action` names the operation, and the rest of
the body holds that action's parameters beside the envelope fields `PublicKey`, `Signature` and
(optionally) `request_uuid`. The request body below is therefore a `oneOf` of one schema per action,
discriminated by `Action`.

## Signature

1. Take every field of the body except `Signature` (`Action`, `PublicKey`, `request_uuid` when sent,
   and every parameter, nested objects included).
2. Sort the keys by code point (`request_uuid` sorts after the PascalCase keys) and concatenate
   `key + encode(value)` with no separators.
3. `encode`: strings as they are; `true`/`false`; integers in decimal; a float with no fractional part
   as an integer (`7.0` → `7`), any other float in plain decimal, never in exponent form; arrays as the
   concatenation of their encoded items; objects as their sorted `key + encode(value)`; null as nothing.
4. Append the PrivateKey; `Signature` is the lowercase hex SHA-1 of that string's UTF-8 bytes.

Example (the spec's test keys, PublicKey `abcdefg`, PrivateKey `123456`): the body
`{{"Action": "ListModels", "PublicKey": "abcdefg"}}` signs the string `ActionListModelsPublicKeyabcdefg123456`,
so its `Signature` is `4a20bc1141494035f6aaaad13224c94c5a8bc3a5`. The examples in this document are
signed with those keys. picserve's SDK (`picserve.sdk.Client`) signs for you.

## Replies

Every reply is HTTP 200 with `Action` (echoed), `RetCode`, `Message` and `request_uuid` (echoed when
sent), plus the action's own fields at the top level. `RetCode` 0 is success; any other value is an
error and `Message` says what was wrong (naming the field, the value received and what is allowed).

| RetCode | Error | Meaning |
|---|---|---|
{{ret_codes}}

Codes of 500 and above that belong to a task (`GenerationError` and below) appear in a task's
`ErrorCode` (ListTasksDetails), not as a reply's RetCode.

## picserve extensions

What PICPIK does not have is marked `{EXTENSION}: true` and says so in its description (for example the
`CancelTask` action and `Image2Image.MaskIndex`). A plain PICPIK client can ignore all of it.

Chaining: wherever an action takes a base64 image (`Image`, `RawImage`, `Mask`, each of `RawImages`, each
entry of `ImageAndMaskList` or `ImageList`), the value may instead be `task:<TaskUID>/<index>`, the index-th
result (0-based) of a Finished task of the same key: a generated image is upscaled, edited or cut out without
downloading and uploading it. A reference that does not resolve is refused at submit, naming the field:
RetCode 230 for another key's task or an unknown one, 160 for an unfinished task, a bad index or an expired result.

Results (`ImgList` URLs) are served by this server at `GET /results/{{key}}` for a limited time:
copy them, do not link to them.
"""


def document(app: FastAPI | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of picserve: `POST /` from the wire models, and `app`'s other routes.

    >>> document()["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["discriminator"]
    ... # doctest: +SKIP
    {'propertyName': 'Action', 'mapping': {'CancelTask': '#/components/schemas/CancelTaskRequest', ...}}
    """
    routes = [r for r in app.routes if getattr(r, "path", None) != "/"] if app is not None else []
    doc = get_openapi(
        title="picserve",
        version=__version__,
        summary="Self-hosted SDXL image generation behind the PICPIK API",
        description=_DESCRIPTION.replace("{ret_codes}", _ret_code_table()),
        routes=routes,
    )
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_schemas())
    _mark_extensions(schemas)
    doc["paths"] = {"/": {"post": _picpik_operation()}, **doc.get("paths", {})}
    _describe_routes(doc["paths"], routes)
    return doc


def _request_model(action: str) -> type[BaseModel]:
    """`<Action>Request`: the envelope's fields, then the action's own model (the same validation rules)."""
    model = REQUESTS[action]
    doc = _action_doc(action)
    return create_model(
        f"{action}Request",
        __base__=(model, _Envelope),
        __doc__=doc,
        __module__=__name__,
        Action=(Literal[action], Field(description=f"`{action}`.")),  # type: ignore[arg-type]
    )


def _schemas() -> dict[str, Any]:
    """The components: requests, replies and every type they use, named by their class (`#/components/…`)."""
    adapters: list[tuple[str, Literal["validation", "serialization"], TypeAdapter[Any]]] = [
        (f"{action}Request", "validation", TypeAdapter(_request_model(action))) for action in sorted(REQUESTS)
    ]
    replies = {shape for shape in REPLIES.values() if shape is not None}
    adapters += [(shape.__name__, "serialization", TypeAdapter(shape)) for shape in sorted(replies, key=str)]
    adapters.append(("ReplyFields", "serialization", TypeAdapter(sdk_types.ReplyFields)))
    adapters.append(("ResultNotFound", "serialization", TypeAdapter(ResultNotFound)))
    top, definitions = TypeAdapter.json_schemas(adapters, ref_template=_REF)
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    for (name, _mode), schema in top.items():
        if "$ref" not in schema:  # a top-level schema pydantic did not also put among the definitions
            schemas[name] = schema
    for schema in schemas.values():
        _tidy(schema)
    for action in REQUESTS:
        schemas[f"{action}Request"]["title"] = f"{action}Request"
        schemas[f"{action}Reply"] = _reply_schema(action)
    schemas["ErrorReply"] = {
        "title": "ErrorReply",
        "description": "Any action's reply when it fails: a non-zero RetCode and a Message saying why. "
        "`Action` is the one sent (empty when the body had none).",
        "allOf": [
            {"$ref": _REF.format(model="ReplyFields")},
            {"properties": {"RetCode": {"not": {"const": 0}}, "Message": {"minLength": 1}}},
        ],
    }
    return schemas


#: pydantic leaves the bounds of an Int (an int behind a BeforeValidator) under its own names: JSON Schema's here
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _tidy(schema: Any) -> None:
    """Bounds under their JSON Schema names; no property titles (pydantic's `Imageindex` says less than the name)."""
    if isinstance(schema, list):
        for item in schema:
            _tidy(item)
    if not isinstance(schema, dict):
        return
    if schema.get("type") in ("integer", "number"):
        for name, keyword in _BOUNDS.items():
            if name in schema:
                schema[keyword] = schema.pop(name)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    for key, value in schema.items():
        if key == "properties":
            for prop in value.values():
                _tidy(prop)
        elif isinstance(value, dict | list):
            _tidy(value)


def _reply_schema(action: str) -> dict[str, Any]:
    own = REPLIES[action]
    parts: list[dict[str, Any]] = [{"$ref": _REF.format(model="ReplyFields")}]
    if own is not None:
        parts.append({"$ref": _REF.format(model=own.__name__)})
    parts.append({"properties": {"Action": {"const": action}, "RetCode": {"const": 0}}})
    schema: dict[str, Any] = {
        "title": f"{action}Reply",
        "description": f"{action}'s reply on success: the common fields"
        + (f" and {own.__name__}'s." if own is not None else " only."),
        "allOf": parts,
    }
    if action in _EXTENSION_ACTIONS:
        schema[EXTENSION] = True
    return schema


def _picpik_operation() -> dict[str, Any]:
    actions = sorted(REQUESTS)
    request_ref = {action: _REF.format(model=f"{action}Request") for action in actions}
    reply_refs = [{"$ref": _REF.format(model=f"{action}Reply")} for action in actions]
    return {
        "operationId": "picpik",
        "summary": "Every PICPIK action: the body's Action picks it",
        "description": "Actions: "
        + "; ".join(f"**{a}**: {_summary(a)}" for a in actions)
        + ". Always HTTP 200: a failure is a reply with a non-zero RetCode (ErrorReply).",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [{"$ref": ref} for ref in request_ref.values()],
                        "discriminator": {"propertyName": "Action", "mapping": request_ref},
                    },
                    "examples": {action: {"summary": action, "value": _example(action)} for action in actions},
                }
            },
        },
        "responses": {
            "200": {
                "description": "The action's reply (RetCode 0), or the error reply (any other RetCode).",
                "content": {
                    "application/json": {
                        "schema": {"oneOf": [*reply_refs, {"$ref": _REF.format(model="ErrorReply")}]},
                    }
                },
            }
        },
    }


def _example(action: str) -> dict[str, Any]:
    body = {
        "Action": action,
        "PublicKey": _EXAMPLE_PUBLIC_KEY,
        "request_uuid": "b91fcfbe-bb35-47ce-a168-bd6252c75270",
        **_EXAMPLE_PARAMS.get(action, {}),
    }
    return {**body, "Signature": signature.sign(body, _EXAMPLE_PRIVATE_KEY)}


def _action_doc(action: str) -> str:
    """The action's description: `_ACTION_DOCS`' (the actions that make a task share one handler), else its
    handler module's docstring, less the leading `Name:`."""
    handler = ACTIONS.get(action)
    text = _ACTION_DOCS.get(action) or (sys.modules[handler.__module__].__doc__ if handler is not None else None)
    text = text or action
    text = text.strip().removeprefix(action).removeprefix(" (picserve extension)")
    text = re.sub(r"^ \(§[0-9.]+\)", "", text).lstrip(": ")  # the spec's section mark, as in `ListControlNets (§6.2):`
    text = text[:1].upper() + text[1:]
    return f"picserve extension (not in PICPIK). {text}" if action in _EXTENSION_ACTIONS else text


def _summary(action: str) -> str:
    """The first paragraph of the action's description, on one line (a docstring may wrap it)."""
    return " ".join(_action_doc(action).split("\n\n", 1)[0].split()).rstrip(".")


def _mark_extensions(schemas: dict[str, Any]) -> None:
    for name, fields in FIELD_NOTES.items():
        for field, text in fields.items():
            schemas[name]["properties"][field]["description"] = text
    for action in _EXTENSION_ACTIONS:
        schemas[f"{action}Request"][EXTENSION] = True
    for name, fields in EXTENSION_FIELDS.items():
        properties = schemas[name]["properties"]
        for field, text in fields.items():
            properties[field][EXTENSION] = True
            properties[field]["description"] = f"picserve extension (not in PICPIK). {text}"


def _describe_routes(paths: dict[str, Any], routes: list[Any]) -> None:
    """What FastAPI cannot read off the other routes' signatures: the PNG body and the 404, and /metrics
    (kept out of FastAPI's schema, which would call its body JSON)."""
    results = paths.get("/results/{key}", {}).get("get")
    if results is not None:
        results["summary"] = "A result image (an ImgList URL)"
        results["description"] = "Kept for a limited time after the task finishes: copy it, do not link to it."
        results["responses"] = {
            "200": {"description": "The PNG.", "content": {"image/png": {"schema": {"contentMediaType": "image/png"}}}},
            "404": {
                "description": "No such result, or it has expired.",
                "content": {"application/json": {"schema": {"$ref": _REF.format(model="ResultNotFound")}}},
            },
        }
    health = paths.get("/healthz", {}).get("get")
    if health is not None:
        health["summary"] = "Liveness: the API process answers, with its version"
    metrics = next((r for r in routes if isinstance(r, APIRoute) and r.path == "/metrics"), None)
    if metrics is not None:
        paths["/metrics"] = {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "description": (metrics.endpoint.__doc__ or "").strip(),
                "responses": {
                    "200": {
                        "description": "Prometheus' text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        }


def _ret_code_table() -> str:
    declared = [cls for cls in errors.ALL if "ret_code" in vars(cls) and not issubclass(cls, errors.SDKError)]
    rows = sorted(declared, key=lambda cls: cls.ret_code)
    return "\n".join(f"| {cls.ret_code} | {cls.__name__} | {(cls.__doc__ or '').strip()} |" for cls in rows)


def install(app: FastAPI) -> None:
    """Serve the document at OPENAPI_URL and the docs pages (create the app with `openapi_url=None`,
    `docs_url=None`, `redoc_url=None`, so FastAPI serves its own at none of these)."""
    app.mount(ASSETS_URL, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        if app.openapi_schema is None:  # built once, on first use: the routes are all there by then
            app.openapi_schema = document(app)
        return JSONResponse(app.openapi_schema)

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title="picserve API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title="picserve API",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
