"""The face-restoration task kind: RestoreFaces' wire params → a checked FaceRestoreSpec.

The image is decoded here (a bad one never queues); the face restorer (`FaceModel`, a ModelCode of
models/faces) and the face detector (`FaceDetectModel`, of models/facedetect) are each the one named,
else the one whose sidecar says `Default: true`, else the only one installed.
"""

from __future__ import annotations

from picserve import domain_tools, reference_images
from picserve.protocol import messages
from picserve.services import Services
from picserve.specs import tool_model

__all__ = ["from_request"]


def from_request(request: messages.RestoreFaces, services: Services) -> domain_tools.FaceRestoreSpec:
    image = reference_images.decode(request.RawImage, "RawImage")
    catalog = services.catalog
    restorer = tool_model(catalog, "faces", request.FaceModel, "FaceModel", "a face restorer (GFPGAN, RestoreFormer)")
    detector = tool_model(
        catalog, "facedetect", request.FaceDetectModel, "FaceDetectModel", "a face detector (OpenCV's YuNet .onnx)"
    )
    return domain_tools.FaceRestoreSpec(
        width=image.width,
        height=image.height,
        restorer_code=restorer.code,
        detector_code=detector.code,
        strength=request.RestoreStrength,
        image=reference_images.strip_data_uri(request.RawImage),
    )
