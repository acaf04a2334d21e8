from picserve import domain


def test_sampler_names_are_case_insensitive():
    assert domain.canonical_sampler("dpm++ 2m  karras") == "DPM++ 2M Karras"
    assert domain.canonical_sampler("euler A") == "Euler a"
    assert domain.canonical_sampler("Euler b") is None
