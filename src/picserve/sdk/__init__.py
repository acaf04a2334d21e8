"""The Python SDK: a PICPIK client that signs exactly as the server verifies, and the image helpers of
its image actions (`image_data`: a file or bytes as a data URI; `image_field`: any image a caller has;
`task_image`: a finished task's result; `control_unit`: a ControlNet unit of GenerateImagesSDXL's
ControlNetList; `hires_fix`: its HiresFix; `masked_edit`: ModifyMaskedPixels' image and mask fields)."""

from picserve.sdk.client import (
    Client,
    MaskedEdit,
    control_unit,
    hires_fix,
    image_data,
    image_field,
    image_type,
    is_task_image,
    masked_edit,
    task_image,
)

__all__ = [
    "Client",
    "MaskedEdit",
    "control_unit",
    "hires_fix",
    "image_data",
    "image_field",
    "image_type",
    "is_task_image",
    "masked_edit",
    "task_image",
]
