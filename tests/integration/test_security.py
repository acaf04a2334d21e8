"""Keys at rest and the limits that protect the service, on the real PostgreSQL and several API nodes:
private keys sealed in the database (a dump does not leak them), sealed on upgrade, re-sealed by
`picserve keys rotate-secret`; never printed; revocation and request rates shared by every node."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from contextlib import ExitStack

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from picserve import cli, errors, keycipher
from picserve.api.app import create_app, services_of
from picserve.config import Settings
from picserve.keycipher import KeyCipher
from picserve.sdk import Client
from picserve.tasks import database


def rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def cli_run(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(
        cli.app, [*args, "--data-dir", str(settings.data_dir), "--database-url", str(settings.database_url)]
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", database_url=database_url)


def test_private_keys_are_sealed_in_the_database_and_never_printed(settings, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    created = json.loads(cli_run(settings, "keys", "create", "--name", "alice"))
    private = created["PrivateKey"]
    # the database holds a Fernet token, not the key; the secret is in the data folder, mode 0600
    [(stored,)] = rows(settings.database_url, "SELECT private_key FROM picserve_keys")
    assert stored.startswith("fernet:") and private not in stored
    dump = "\n".join(str(r) for r in rows(settings.database_url, "SELECT * FROM picserve_keys"))
    assert private not in dump
    secret_file = keycipher.secret_file(settings)
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert KeyCipher(secret_file.read_text().split()).open(stored) == private
    # keys list shows everything but the private key
    listed = json.loads(cli_run(settings, "keys", "list"))
    assert listed["PublicKey"] == created["PublicKey"] and private not in json.dumps(listed)
    # a signed request, a forged one and an error do not log it either
    with TestClient(create_app(settings)) as api:
        client = Client("http://testserver", created["PublicKey"], private, http=api)
        client.get_credit_balance()
        forged = client.signed("GetCreditBalance")
        forged["Signature"] = "f" * 40
        reply = api.post("/", json=forged).json()
        assert reply["RetCode"] == 170 and private not in json.dumps(reply)
    assert private not in caplog.text


def test_plaintext_keys_of_an_older_database_are_sealed_when_it_is_opened(settings) -> None:
    async def body() -> None:
        cipher = KeyCipher.generate()
        async with database.open_database(settings.database_url, max_size=2, cipher=cipher) as db:
            account = await db.repo.create_key("old", 10)
        # as the releases before sealing stored it
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("UPDATE picserve_keys SET private_key = %s", (account.private_key,))
        async with database.open_database(settings.database_url, max_size=2, cipher=cipher) as db:
            assert await db.repo.get_account(account.public_key) == account
        [(stored,)] = rows(settings.database_url, "SELECT private_key FROM picserve_keys")
        assert stored.startswith("fernet:") and cipher.open(stored) == account.private_key

    asyncio.run(body())


def test_rotate_secret_reseals_every_key_and_running_nodes_follow(settings) -> None:
    keys = [json.loads(cli_run(settings, "keys", "create", "--name", f"k{i}")) for i in range(3)]
    old_secret = keycipher.secret_file(settings).read_text().split()
    before = rows(settings.database_url, "SELECT public_key, private_key FROM picserve_keys ORDER BY public_key")
    with TestClient(create_app(settings)) as api:  # a node started before the rotation
        out = cli_run(settings, "keys", "rotate-secret")
        assert "re-sealed 3 keys" in out
        new_secret = keycipher.secret_file(settings).read_text().split()
        assert new_secret[1:] == old_secret[:1] and new_secret[0] != old_secret[0]
        after = rows(settings.database_url, "SELECT public_key, private_key FROM picserve_keys ORDER BY public_key")
        assert [a[1] != b[1] for a, b in zip(after, before, strict=True)] == [True] * 3
        # the old secret alone opens none of them any more; the new one alone opens all
        for _, stored in after:
            with pytest.raises(errors.PicserveError, match="does not open with this server's secret"):
                KeyCipher(old_secret).open(stored)
        assert sorted(KeyCipher(new_secret[:1]).open(s) for _, s in after) == sorted(k["PrivateKey"] for k in keys)
        # the running node re-reads the key file when a key does not open with what it holds
        for key in keys:
            client = Client("http://testserver", key["PublicKey"], key["PrivateKey"], http=api)
            assert client.get_credit_balance()["TotalCredits"] == 1000


def test_a_node_with_the_wrong_secret_answers_cleanly(settings) -> None:
    key = json.loads(cli_run(settings, "keys", "create"))
    wrong = dataclasses.replace(settings, secret_key=keycipher.new_secret())
    with TestClient(create_app(wrong)) as api:
        reply = Client("http://testserver", key["PublicKey"], key["PrivateKey"], http=api).signed("GetCreditBalance")
        answer = api.post("/", json=reply).json()
    assert answer["RetCode"] == 500 and "does not open with this server's secret" in answer["Message"]
    assert key["PrivateKey"] not in json.dumps(answer)


def test_revocation_limits_and_rates_hold_on_every_api_node(settings) -> None:
    shared = dataclasses.replace(settings, max_requests_per_minute=0)
    with ExitStack() as stack:
        nodes = [stack.enter_context(TestClient(create_app(shared))) for _ in range(2)]
        repo = services_of(nodes[0].app).repo
        account = nodes[0].portal.call(repo.create_key, "roaming", 1000)
        clients = [Client("http://testserver", account.public_key, account.private_key, http=n) for n in nodes]
        # a rate set with `keys update` is shared: 4 per minute over both nodes together
        cli_run(settings, "keys", "update", account.public_key, "--max-requests-per-minute", "4")
        codes = []
        for i in range(6):
            reply = nodes[i % 2].post("/", json=clients[i % 2].signed("GetCreditBalance")).json()
            codes.append(reply["RetCode"])
        assert codes == [0, 0, 0, 0, 282, 282]
        cli_run(settings, "keys", "update", account.public_key, "--max-requests-per-minute", "0")
        assert [
            n.post("/", json=c.signed("GetCreditBalance")).json()["RetCode"]
            for n, c in zip(nodes, clients, strict=True)
        ] == [0, 0]
        listed = json.loads(cli_run(settings, "keys", "list"))
        assert (listed["MaxOpenTasks"], listed["MaxRequestsPerMinute"]) == (None, 0)
        # revoked through one node's repository: refused by both on their next request
        nodes[1].portal.call(services_of(nodes[1].app).repo.revoke_key, account.public_key)
        assert [
            n.post("/", json=c.signed("GetCreditBalance")).json()["RetCode"]
            for n, c in zip(nodes, clients, strict=True)
        ] == [171, 171]
