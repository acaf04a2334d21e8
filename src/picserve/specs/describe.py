"""The image-to-text task kind: DescribeImages' wire params → a checked DescribeSpec.

Every image is decoded here (a bad one never queues), the images together are bounded like a
RemoveBackgroundsInBatch's, and a `TranslateDescription` other than `en` needs an English→language
translation model installed (`<translation models>/en-<language>/`, as TranslatePrompts' `<language>-en/`).
The captioner or tagger (`CaptionModel`, a folder of models/caption) is the one named, else the default.
"""

from __future__ import annotations

from picserve import domain_tools, errors, reference_images
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import cutout, tool_model
from picserve.translate import outbound

__all__ = ["from_request"]


def from_request(request: messages.DescribeImages, services: Services) -> domain_tools.DescribeSpec:
    texts = request.ImageList
    total = sum(len(text) for text in texts)
    if total > cutout.MAX_BATCH_BASE64_CHARS:
        raise errors.ParamError(
            f"ImageList: the images must total at most {cutout.MAX_BATCH_BASE64_CHARS} base64 characters (got {total})"
        )
    language = request.TranslateDescription
    if language != "en":
        available = outbound.languages(services.settings.translation_dir)
        if language not in available:
            raise errors.ParamError(
                f"TranslateDescription {language!r}: this server has no English→{language} translation model "
                f"(it describes in: {', '.join(available)}); install one in "
                f"{services.settings.translation_dir}/en-{language}/ (docs/models.md), or ask for en"
            )
    sizes = tuple(reference_images.decode(text, f"ImageList[{i}]").size for i, text in enumerate(texts))
    entry = tool_model(services.catalog, "caption", request.CaptionModel, "CaptionModel", "a captioner or tagger")
    return domain_tools.DescribeSpec(
        sizes=sizes,
        model_code=entry.code,
        language=language,
        images=tuple(reference_images.strip_data_uri(text) for text in texts),
        images_keys=tuple(None for _ in texts),
    )
