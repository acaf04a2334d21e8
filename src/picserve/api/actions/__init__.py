"""ACTIONS: the dispatch table from PICPIK Action names to their handlers."""

from picserve.api.actions import generate_images_sdxl, list_models, list_tasks_details, simple

ACTIONS = {
    "CancelTask": simple.cancel_task,
    "GenerateImagesSDXL": generate_images_sdxl.handle,
    "GetCreditBalance": simple.get_credit_balance,
    "ListModels": list_models.handle,
    "ListRunningTasks": simple.list_running_tasks,
    "ListTasksDetails": list_tasks_details.handle,
}
