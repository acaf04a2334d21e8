"""The Python SDK: a PICPIK client that signs exactly as the server verifies (`Client`, and `AsyncClient`,
its twin for asyncio code: the same methods, awaited), and the image helpers of its image actions
(`image_data`: a file or bytes as a data URI; `image_field`: any image a caller has; `task_image`: a
finished task's result; `control_unit`: a ControlNet unit of GenerateImagesSDXL's ControlNetList;
`hires_fix`: its HiresFix; `masked_edit`: ModifyMaskedPixels' image and mask fields), which either
client takes.

>>> async with AsyncClient(url, public_key, private_key) as client:               # doctest: +SKIP
...     detail = await client.wait(await client.resize_image(Image=task_image(uid), Scale=2))
"""

from picserve.sdk.async_client import AsyncClient
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
    "AsyncClient",
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
