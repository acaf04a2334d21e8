"""The dependency direction: API, SDK, CLI and the worker's job code import without torch; the
engine imports nothing of HTTP, SQL or storage."""

import subprocess
import sys

import pytest


def test_api_and_sdk_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
        "import picserve.api.app, picserve.sdk, picserve.cli, picserve.protocol.messages, "
        "picserve.worker.jobs, picserve.worker.process, picserve.tasks.memory, picserve.engine.fake; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.models  # imports torch and diffusers: seconds, so not in the fast tier
def test_engine_imports_nothing_of_http_sql_or_storage():
    code = (
        "import sys; import picserve.engine.engine, picserve.engine.tiny; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'psycopg', 'procrastinate', 'httpx') "
        "or m.startswith(('picserve.api', 'picserve.tasks', 'picserve.storage', 'picserve.protocol'))]; "
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
