import re

from picserve.tasks import xid


def test_xid_format_and_order():
    ids = [xid.new_xid() for _ in range(100)]
    assert all(re.fullmatch(r"[0-9a-v]{20}", i) for i in ids)
    assert len(set(ids)) == 100
    assert ids == sorted(ids)  # same second, increasing counter
