import pytest

from picserve import errors
from picserve.protocol.envelope import Envelope, error_reply, ok_reply


def test_envelope_parsing():
    env = Envelope.parse({"Action": "ListModels", "PublicKey": "p", "Signature": "s", "request_uuid": "u", "X": 1})
    assert env.params == {"X": 1}
    with pytest.raises(errors.ParamError, match="body must be a JSON object"):
        Envelope.parse([1])
    with pytest.raises(errors.ParamError, match="Action: missing"):
        Envelope.parse({"PublicKey": "p", "Signature": "s"})
    with pytest.raises(errors.AuthError, match="Signature: missing"):
        Envelope.parse({"Action": "A", "PublicKey": "p"})
    assert ok_reply("A", "u", {"X": 1}) == {"Action": "A", "RetCode": 0, "Message": "", "request_uuid": "u", "X": 1}
    assert error_reply("A", None, errors.TaskNotFound())["RetCode"] == 230
