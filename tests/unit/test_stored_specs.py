"""A task's spec read back from its stored JSON (domain.spec_from_json): as a dict (jsonb decoded by the
driver) or as JSON text (what a poll reads), the same spec; text is decoded once while it is recent."""

from __future__ import annotations

import json

import pytest

from picserve import domain


def test_a_spec_read_as_text_is_the_spec_decoded_once_and_shared():
    spec = domain.GenerationSpec(model_code="m", prompt="a cat", sub_models=(domain.SubModel("lora", "style", 0.5),))
    text = json.dumps(spec.to_dict())
    first = domain.spec_from_json("generation", domain.GenerationSpec.version, text)
    assert first == spec == domain.spec_from_json("generation", domain.GenerationSpec.version, spec.to_dict())
    # another string of the same text (each row read makes a new one): the same immutable object
    again = domain.spec_from_json("generation", domain.GenerationSpec.version, "".join(list(text)))
    assert again is first


def test_a_refused_text_is_refused_every_time():
    text = json.dumps(domain.GenerationSpec(model_code="m", prompt="").to_dict())
    for _ in range(2):  # an error is never remembered as a spec
        with pytest.raises(ValueError, match="newer than this picserve"):
            domain.spec_from_json("generation", 99, text)
        with pytest.raises(ValueError, match="unknown task kind"):
            domain.spec_from_json("no-such-kind", 1, text)


def test_a_long_text_is_decoded_each_time_not_kept():
    spec = domain.GenerationSpec(model_code="m", prompt="x" * 20_000)
    text = json.dumps(spec.to_dict())
    first = domain.spec_from_json("generation", domain.GenerationSpec.version, text)
    assert first == spec and domain.spec_from_json("generation", domain.GenerationSpec.version, text) is not first
