"""One error tree for picserve; `api.endpoint` is the only place these become a RetCode.

    PicserveError                      ret_code 500  (anything unexpected)
    ├── ClientError                    the caller can fix it
    │   ├── ParamError                 160  missing or invalid parameter (names the field and range)
    │   ├── AuthError                  170  signature does not verify / signature missing
    │   │   └── UnknownKey             171  PublicKey unknown or revoked
    │   ├── UnknownAction              161  Action not served here
    │   ├── IdempotencyConflict        162  request_uuid reused within 24 h with other parameters
    │   ├── TaskNotFound               230  TaskUID unknown to this key
    │   ├── ModelNotFound              231  ModelCode not in the models folder
    │   ├── IncompatibleModel          232  a sub-model that does not fit the main model (by tensor shapes)
    │   ├── InsufficientCredits        280  balance too low for the request
    │   ├── TooManyOpenTasks           281  the key's cap on queued + running tasks is reached
    │   └── RateLimited                282  the key's requests-per-minute limit is reached
    ├── ServerBusy                     290  queue full / database unreachable; retry later
    │   └── DatabaseUnreachable        290  the database could not be reached (resilience.unreachable)
    ├── GenerationError                501  a task failed at run time (reported in TaskDetail)
    │   ├── OutOfMemory                502  the device ran out of memory, even one image at a time
    │   ├── ModelLoadError             503  a model file vanished or could not be read after submit
    │   ├── NonFiniteImage             504  the image came out NaN/Inf (an overflow in fp16), even decoded in fp32
    │   ├── StoppedItsWorkers          505  its runs lost their workers more than PICSERVE_MAX_LOST_RUNS times
    │   ├── ImportFailed               506  an ImportModel's download failed or its file was refused
    │   ├── TaskCanceled               510  the task was cancelled
    │   └── StorageError               520  a result could not be stored
    ├── PullError                           installing a translation model failed (CLI only)
    ├── ClusterVersionMismatch              the data folder's database is of another PostgreSQL major (CLI only)
    ├── DatabaseAdminError                  a `picserve db` backup, restore or upgrade could not be done (CLI only)
    └── SDKError                            raised by the SDK itself, never sent by a server
        ├── TransportError                  the server could not be reached, or its reply was not PICPIK's
        └── WaitTimeout                     `Client.wait` gave up (also a TimeoutError)

Each class's docstring is its default message. RetCodes are listed in docs/api.md. A class that
declares its own `ret_code` is on the wire; `from_ret_code` maps a reply's RetCode back to it.
"""

from __future__ import annotations


class PicserveError(Exception):
    """Internal server error."""

    ret_code = 500

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class ClientError(PicserveError):
    """The request cannot be served."""

    ret_code = 160


class ParamError(ClientError):
    """Missing or invalid parameter."""

    ret_code = 160


class UnknownAction(ClientError):
    """Unknown Action."""

    ret_code = 161


class IdempotencyConflict(ClientError):
    """This request_uuid was already used with other parameters."""

    ret_code = 162


class AuthError(ClientError):
    """Signature verification failed."""

    ret_code = 170


class UnknownKey(AuthError):
    """Unknown or revoked PublicKey."""

    ret_code = 171


class AdminOnly(AuthError):
    """This action needs an admin key."""

    ret_code = 172


class TaskNotFound(ClientError):
    """Task not found."""

    ret_code = 230


class ModelNotFound(ClientError):
    """Model not found."""

    ret_code = 231


class IncompatibleModel(ClientError):
    """The sub-model does not fit the main model."""

    ret_code = 232


class InsufficientCredits(ClientError):
    """Not enough credits for this request."""

    ret_code = 280


class TooManyOpenTasks(ClientError):
    """Too many open tasks for this key."""

    ret_code = 281


class RateLimited(ClientError):
    """Too many requests for this key."""

    ret_code = 282


class ServerBusy(PicserveError):
    """Server busy, retry later."""

    ret_code = 290


class DatabaseUnreachable(ServerBusy):
    """Database unreachable, retry later."""


class GenerationError(PicserveError):
    """Generation failed."""

    ret_code = 501


class OutOfMemory(GenerationError):
    """The device ran out of memory."""

    ret_code = 502


class ModelLoadError(GenerationError):
    """A model file could not be loaded."""

    ret_code = 503


class NonFiniteImage(GenerationError):
    """The generated image holds NaN or infinite values (a numeric overflow); nothing was charged."""

    ret_code = 504


class StoppedItsWorkers(GenerationError):
    """The task stopped its workers (each of its runs died with its worker, or hung) and was not run again;
    nothing was charged."""

    ret_code = 505


class ImportFailed(GenerationError):
    """The model could not be imported: its download failed, or `models add`'s checks refused it."""

    ret_code = 506


class TaskCanceled(GenerationError):
    """Task was cancelled."""

    ret_code = 510


class StorageError(GenerationError):
    """Result storage failed."""

    ret_code = 520


class PullError(PicserveError):
    """Installing a model (`models pull-translation`, `models add`) failed."""


class ClusterVersionMismatch(PicserveError):
    """The data folder's database was made by another PostgreSQL major version; it was left untouched."""


class DatabaseAdminError(PicserveError):
    """The database could not be backed up, restored or upgraded."""


class SDKError(PicserveError):
    """The SDK could not complete the call."""


class TransportError(SDKError):
    """The server could not be reached, or did not answer as a PICPIK endpoint."""


class WaitTimeout(SDKError, TimeoutError):
    """The task did not end in time."""


def _tree(root: type[PicserveError]) -> list[type[PicserveError]]:
    """`root` and every subclass below it, depth first, in definition order."""
    return [root, *(cls for sub in root.__subclasses__() for cls in _tree(sub))]


#: every picserve error class, from the class tree (so a new class can never be left out)
ALL: tuple[type[PicserveError], ...] = tuple(_tree(PicserveError))

#: RetCode → the most specific class that declares it (a subclass declaring the same code wins)
_BY_RET_CODE: dict[int, type[PicserveError]] = {
    cls.ret_code: cls for cls in ALL if "ret_code" in vars(cls) and not issubclass(cls, SDKError)
}


def from_ret_code(ret_code: int, message: str) -> PicserveError:
    """The SDK's inverse of the endpoint mapping: the class that declares `ret_code`."""
    cls = _BY_RET_CODE.get(ret_code)
    if cls is not None:
        return cls(message)
    err = PicserveError(message)
    err.ret_code = ret_code
    return err
