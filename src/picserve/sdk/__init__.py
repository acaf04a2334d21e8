"""The Python SDK: a PICPIK client that signs exactly as the server verifies, and the image helpers of
its image actions (`image_data`: a file or bytes as a data URI; `task_image`: a finished task's result;
`control_unit`: a ControlNet unit of GenerateImagesSDXL's ControlNetList)."""

from picserve.sdk.client import Client, control_unit, image_data, image_type, is_task_image, task_image

__all__ = ["Client", "control_unit", "image_data", "image_type", "is_task_image", "task_image"]
