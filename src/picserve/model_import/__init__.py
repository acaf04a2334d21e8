"""Model import over the API (ImportModel, admin keys only): a worker downloads a model file and files
it in its models folder as `picserve models add` does (modelfiles.add: resumable download, sha256,
safetensors header checks, pickles read without being run, the kind told by its tensors).

- specs/model_import.py checks the request at submit and seals its token (keycipher);
- `actions` is what a worker runs for the task kind "import" (worker/jobs.py's `WorkerRuntime.actions`):
  not an engine pipeline, since it needs the worker's models folder and server secret, not its device.
"""

from picserve.model_import.run import actions, run

__all__ = ["actions", "run"]
