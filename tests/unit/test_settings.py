import dataclasses
import logging
import re
from pathlib import Path

from picserve.config import Settings, unknown_variables


def test_settings_precedence(tmp_path):
    env = {"PICSERVE_PORT": "9000", "PICSERVE_DATA_DIR": str(tmp_path), "PICSERVE_PROGRESS_INTERVAL": "0.25"}
    settings = Settings.load(env, port=None, workers=3)
    assert (settings.port, settings.workers, settings.progress_interval) == (9000, 3, 0.25)
    assert settings.data_dir == tmp_path
    assert Settings.load(env, port=7000).port == 7000
    assert Settings.load(settings.to_env()) == settings


def test_unknown_variable_is_reported_with_the_closest_setting(caplog):
    env = {"PICSERVE_MAX_LOADED_MODEL": "2", "PICSERVE_PORT": "1", "PICSERVE_URL": "http://x", "PICSERVE_QQQ": "1"}
    messages = unknown_variables(env)
    assert messages == [
        "PICSERVE_MAX_LOADED_MODEL is not a picserve setting and is ignored; did you mean PICSERVE_MAX_LOADED_MODELS?",
        "PICSERVE_QQQ is not a picserve setting and is ignored (see docs/settings.md)",
    ]
    with caplog.at_level(logging.WARNING, logger="picserve.config"):
        Settings.load(env)
    assert [r.getMessage() for r in caplog.records] == messages


def test_every_setting_is_in_the_settings_page():
    # docs/settings.md is the table of every setting (the README links it)
    page = (Path(__file__).parents[2] / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"`(PICSERVE_[A-Z0-9_]+)`", page))
    variables = [f"PICSERVE_{f.name.upper()}" for f in dataclasses.fields(Settings)]
    assert [name for name in variables if name not in documented] == []
