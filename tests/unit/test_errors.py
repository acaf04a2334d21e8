from picserve import errors


def _declares_code(cls: type[errors.PicserveError]) -> bool:
    return "ret_code" in vars(cls) and not issubclass(cls, errors.SDKError)


def test_all_is_the_whole_class_tree():
    def below(cls):
        return {cls} | {c for sub in cls.__subclasses__() for c in below(sub)}

    assert set(errors.ALL) == below(errors.PicserveError)
    assert all(issubclass(cls, errors.PicserveError) for cls in errors.ALL)


def test_wire_ret_codes_are_distinct_and_round_trip():
    wire = [cls for cls in errors.ALL if _declares_code(cls) and cls is not errors.ClientError]
    codes = [cls.ret_code for cls in wire]
    assert len(codes) == len(set(codes))
    for cls in wire:
        error = errors.from_ret_code(cls.ret_code, "m")
        assert type(error) is cls and error.message == "m"


def test_unknown_ret_code_keeps_its_code():
    error = errors.from_ret_code(999, "odd")
    assert type(error) is errors.PicserveError and error.ret_code == 999


def test_sdk_errors_are_picserve_errors_and_wait_timeout_is_a_timeout():
    assert issubclass(errors.TransportError, errors.PicserveError)
    assert issubclass(errors.WaitTimeout, errors.PicserveError) and issubclass(errors.WaitTimeout, TimeoutError)
    assert issubclass(errors.PullError, errors.PicserveError)
    assert errors.WaitTimeout().message == "The task did not end in time."
