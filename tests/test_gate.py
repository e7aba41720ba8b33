"""The front door of a live server (uvicorn on 127.0.0.1): Host names, keys and body limits.

Each refusal is checked for its status, its envelope's code and that the server answers the
next request. Raw sockets send headers without their body, to show that a refusal does not wait
for the body."""

from __future__ import annotations

import json
import socket

import httpx2 as httpx
import pytest
from typer.testing import CliRunner

from live_server import new_home, serving
from tunesmith.api.app import create_app
from tunesmith.cli import app as cli
from tunesmith.config import Settings
from tunesmith.errors import TunesmithError
from tunesmith.jobs.store import Store

UPLOAD_LIMIT, BODY_LIMIT = 20_000, 2_000


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    settings = Settings(home=new_home(tmp_path_factory.mktemp("gate")), max_upload_bytes=UPLOAD_LIMIT,
                        max_body_bytes=BODY_LIMIT)
    store = Store(settings)
    keys = {"admin": store.create_key("ops", admin=True)[1], "alpha": store.create_key("alpha")[1]}
    app = create_app(settings, run_worker=False)
    with serving(app) as (host, port):
        yield f"http://{host}:{port}", keys
    store.engine.dispose()


def client(gated, who: str = "alpha") -> httpx.Client:
    url, keys = gated
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[who]}"} if who else {})


def raw(gated, head: str) -> tuple[int, dict]:
    """Send only a request's head (no body, whatever it declares) and read the answer."""
    host, port = gated[0].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.partition(b"\r\n\r\n")[2])


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def still_answers(gated) -> None:
    assert client(gated).get("/v1/files").status_code == 200


def test_a_request_without_a_key_is_refused_before_its_body_is_read(gated):
    status, body = raw(gated, "POST /v1/files HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 10000000000\n"
                              "Content-Type: multipart/form-data; boundary=x")
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    assert client(gated, None).get("/v1/models").json()["error"]["code"] == "missing_api_key"
    assert client(gated, None).get("/v1/models", headers={"Authorization": "Bearer sk-ts-nope"}).status_code == 401
    still_answers(gated)


@pytest.mark.parametrize("path, limit", [("/v1/files", UPLOAD_LIMIT), ("/v1/fine_tuning/jobs", BODY_LIMIT)])
def test_a_declared_length_over_the_limit_is_refused_at_once(gated, path, limit):
    key = gated[1]["alpha"]
    status, body = raw(gated, f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {key}\n"
                              f"Content-Length: {limit * 1000}\nContent-Type: application/json")
    assert (status, body["error"]["code"]) == (413, "request_too_large")
    assert f"{limit:,}" in body["error"]["message"]
    still_answers(gated)


def test_a_body_without_a_length_is_cut_off_at_the_limit(gated):
    def chunks():
        yield b'{"model": "' + b"x" * (BODY_LIMIT * 3)
        yield b'"}'

    r = client(gated).post("/v1/fine_tuning/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    still_answers(gated)


def test_uploads_have_their_own_limit(gated):
    fits = client(gated).post("/v1/files", files={"file": ("a.jsonl", b"{}\n" * 1000)}, data={"purpose": "fine-tune"})
    assert fits.status_code == 200 and fits.json()["bytes"] == 3000  # larger than any other body may be
    over = client(gated).post("/v1/files", files={"file": ("b.jsonl", b"x" * (UPLOAD_LIMIT + 10))},
                              data={"purpose": "fine-tune"})  # within the multipart allowance: the route's check
    assert (over.status_code, over.json()["error"]["code"]) == (413, "file_too_large")
    still_answers(gated)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io"])
def test_a_host_name_not_served_here_is_refused(gated, host):
    r = client(gated).get("/v1/models", headers={"Host": host})
    assert (r.status_code, r.json()["error"]["code"]) == (421, "host_not_allowed")
    assert client(gated).get("/v1/models", headers={"Host": "localhost:8000"}).status_code == 200


def test_admin_keys_create_list_and_revoke_keys(gated):
    admin, alpha = client(gated, "admin"), client(gated)
    assert (alpha.get("/v1/admin/keys").status_code, alpha.get("/v1/admin/keys").json()["error"]["code"]) == \
        (403, "admin_required")
    made = admin.post("/v1/admin/keys", json={"project": "gamma"}).json()
    assert made["project"] == "gamma" and made["value"].startswith(made["redacted_value"].rstrip("…"))
    gamma = httpx.Client(base_url=gated[0], headers={"Authorization": f"Bearer {made['value']}"})
    assert gamma.get("/v1/files").status_code == 200
    listed = {k["id"]: k for k in admin.get("/v1/admin/keys").json()["data"]}
    assert "value" not in listed[made["id"]] and listed[made["id"]]["revoked_at"] is None
    revoked = admin.delete(f"/v1/admin/keys/{made['id']}").json()
    assert revoked["revoked_at"] is not None
    refused = gamma.get("/v1/files")
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
    assert admin.delete("/v1/admin/keys/key_nope").status_code == 404
    bad = admin.post("/v1/admin/keys", json={"project": "a\nb"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "project"
    still_answers(gated)


def test_keyless_mode_needs_its_flag_and_a_loopback_address(tmp_path):
    with pytest.raises(TunesmithError, match="refusing keyless mode on 0.0.0.0"):
        create_app(Settings(home=new_home(tmp_path), keyless=True, host="0.0.0.0"), run_worker=False)
    for keyless, status in ((False, 401), (True, 200)):  # no key exists in this home
        app = create_app(Settings(home=tmp_path / "home", keyless=keyless), run_worker=False)
        with serving(app) as (host, port):
            assert httpx.get(f"http://{host}:{port}/v1/files").status_code == status


def test_keys_cli_creates_lists_and_revokes(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    from tunesmith.config import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        key = runner.invoke(cli, ["keys", "create", "--project", "delta", "--admin"]).stdout.strip()
        listed = runner.invoke(cli, ["keys", "list"]).stdout
        assert key[:10] in listed and "project delta  admin" in listed and "active" in listed
        revoked = runner.invoke(cli, ["keys", "revoke", key[:10]])
        assert revoked.exit_code == 0 and "revoked (project delta)" in revoked.stdout
        assert "revoked 20" in runner.invoke(cli, ["keys", "list"]).stdout
        assert Store().caller(key) is None
        assert runner.invoke(cli, ["keys", "revoke", "sk-ts-nope"]).exit_code == 1
    finally:
        get_settings.cache_clear()
