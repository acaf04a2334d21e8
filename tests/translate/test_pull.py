"""`picserve models pull-translation` downloads and installs a package from an index, over real HTTP."""

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from picserve.translate.prompts import PromptTranslator

from . import tiny_ct2


@pytest.fixture
def index_server(tmp_path):
    """A local HTTP server holding an Argos-style index and a package the test builds."""
    served = tmp_path / "served"
    served.mkdir()
    tiny_ct2.argos_package(served / "translate-xx_en-1_0.argosmodel")
    (served / "broken.argosmodel").write_bytes(b"not a zip")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_port}"
    (served / "index.json").write_text(
        json.dumps(
            [
                {
                    "from_code": "xx",
                    "to_code": "en",
                    "package_version": "1.0",
                    "links": [f"{base}/missing.argosmodel", f"{base}/translate-xx_en-1_0.argosmodel"],
                },
                {"from_code": "yy", "to_code": "en", "links": [f"{base}/broken.argosmodel"]},
                {"from_code": "en", "to_code": "xx", "links": [f"{base}/translate-xx_en-1_0.argosmodel"]},
            ]
        )
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"{base}/index.json"
    server.shutdown()


def pull(*args):
    return subprocess.run(
        [sys.executable, "-m", "picserve", "models", "pull-translation", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PICSERVE_LOG_LEVEL": "warning"},
    )


def test_pull_from_english_installs_an_en_to_lang_package_describe_images_finds(tmp_path, index_server):
    from picserve.translate import outbound

    models = tmp_path / "models"
    result = pull("xx", "--from-english", "--models-dir", models, "--index-url", index_server)
    assert result.returncode == 0, result.stderr
    assert (models / "translate" / "en-xx" / "model" / "model.bin").exists()
    assert "xx" in outbound.languages(models / "translate")
    missing = pull("zz", "--from-english", "--models-dir", models, "--index-url", index_server)
    assert missing.returncode == 1 and "no en→zz package in the index (available: xx)" in missing.stderr


def test_pull_installs_a_package_the_backend_loads(tmp_path, index_server):
    models = tmp_path / "models"
    result = pull("xx", "--models-dir", models, "--index-url", index_server)
    assert result.returncode == 0, result.stderr
    folder = models / "translate" / "xx-en"
    assert (folder / "model" / "model.bin").exists() and (folder / "sentencepiece.model").exists()
    assert "xx" in PromptTranslator(models / "translate").languages


def test_pull_reports_unknown_languages_and_bad_packages(tmp_path, index_server):
    unknown = pull("zz", "--models-dir", tmp_path, "--index-url", index_server)
    assert unknown.returncode == 1 and "no zz→en package in the index (available: xx, yy)" in unknown.stderr
    broken = pull("yy", "--models-dir", tmp_path, "--index-url", index_server)
    assert broken.returncode == 1 and "not a zip archive" in broken.stderr
    assert not (tmp_path / "translate" / "yy-en").exists()
