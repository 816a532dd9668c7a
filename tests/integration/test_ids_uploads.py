"""``ids:`` and ``uploads:`` end to end, through the CLI, against the local hep.gg on a real socket.

Minted values live in state only as AES-256-GCM ciphertext under HEPINFRA_STATE_KEY; they survive
re-apply unchanged (no second call), change on rotate, and never reach state, plan files, events
or stdout. Uploads serve the exact bytes, and a changed file gets a new URL.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from hepinfra.state import codec
from tests.cliutil import invoke, write_project
from tests.conftest import (
    ENV,
    HTTP,
    ID_TOKEN,
    ISSUED,
    UP_ACCESS_REVOKED,
    UP_FORBIDDEN,
    UP_REVOKED,
    UP_TOKEN,
    Server,
    record_artifact,
)

KEY_ENV = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}
LOGO = bytes(range(256)) * 4 + b"\x89PNG\r\n\x1a\n"

MANIFEST = """
version: 1
environments:
  production: {}
ids:
  session_secret:
    type: nanoid
    length: 48
    outputs:
      - dotenv: "out/{{ env }}/.env"
        keys: {SESSION_SECRET: "{{ id.value }}"}
  webhook:
    type: keypair
    outputs:
      - dotenv: "out/{{ env }}/.env"
        keys: {WEBHOOK_PUBLIC: "{{ id.value }}", WEBHOOK_PRIVATE: "{{ id.private }}"}
uploads:
  logo:
    file: assets/logo.png
    outputs:
      - dotenv: "out/{{ env }}/.env"
        keys: {LOGO_URL: "{{ upload.url }}"}
"""


def project(root: Path, manifest: str = MANIFEST) -> Path:
    path = write_project(root, manifest)
    (root / "assets").mkdir(exist_ok=True)
    (root / "assets/logo.png").write_bytes(LOGO)
    return path


def run(args: list[str], server: Server, env: dict[str, str] | None = None, **kw: object) -> object:
    return invoke(args, server=server, env={**KEY_ENV, **(env or {})}, **kw)  # type: ignore[arg-type]


def values(root: Path) -> dict[str, str]:
    found = {k: v or "" for k, v in dotenv_values(root / "out/production/.env").items()}
    ISSUED.update(v for k, v in found.items() if k != "LOGO_URL")  # the session's scan looks for them too
    return found


def service_calls(server: Server, service: str) -> int:
    return sum(1 for r in server.requests() if r.get("service") == service and r.get("method") == "POST")


def state_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((root / ".hepinfra/state").glob("*")) if p.is_file())


def test_mint_is_stable_encrypted_and_rotates(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    first = run(["apply", "-f", str(path), "--auto-approve", "--json"], server)
    assert first.code == 0, first.err
    minted = values(tmp_path)
    assert len(minted["SESSION_SECRET"]) == 48
    assert service_calls(server, "idgen") == 2 and service_calls(server, "uploader") == 1
    secrets = [minted["SESSION_SECRET"], minted["WEBHOOK_PRIVATE"], minted["WEBHOOK_PUBLIC"]]
    stored = state_bytes(tmp_path)
    for secret in secrets:
        assert secret.encode() not in stored and secret not in first.out + first.err
    assert b'"ciphertext"' in stored and b'"crypto"' in stored

    again = run(["apply", "-f", str(path), "--auto-approve"], server)
    assert again.code == 0 and "No changes" in again.out
    assert service_calls(server, "idgen") == 2, "a re-apply minted again"
    assert values(tmp_path) == minted
    plan_file = tmp_path / "plan.json"
    assert run(["plan", "-f", str(path), "--detailed-exitcode", "--out", str(plan_file)], server).code == 0

    rotated = run(["rotate", "-f", str(path), "ids.session_secret", "--auto-approve", "--json"], server)
    assert rotated.code == 0, rotated.err
    after = values(tmp_path)
    assert after["SESSION_SECRET"] != minted["SESSION_SECRET"]
    assert {k: v for k, v in after.items() if k != "SESSION_SECRET"} == {
        k: v for k, v in minted.items() if k != "SESSION_SECRET"
    }
    assert service_calls(server, "idgen") == 3
    for secret in [*secrets, after["SESSION_SECRET"]]:
        assert secret not in rotated.out + rotated.err
        assert secret.encode() not in state_bytes(tmp_path) and secret.encode() not in plan_file.read_bytes()

    shown = invoke(["output", "-f", str(path), "production/ids.session_secret", "--format", "json"],
                   server=server, env=KEY_ENV, secret_ok=True)  # fmt: skip
    assert shown.code == 0 and json.loads(shown.out) == {"SESSION_SECRET": after["SESSION_SECRET"]}
    listed = run(["state", "list", "-f", str(path)], server)
    assert "production/ids.session_secret\tnanoid" in listed.out and "production/uploads.logo" in listed.out


def test_keypair_private_part_is_the_key_of_the_public_part(tmp_path: Path, server: Server) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = project(tmp_path)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    minted = values(tmp_path)
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(minted["WEBHOOK_PRIVATE"]))
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public.hex() == minted["WEBHOOK_PUBLIC"]


def test_no_key_or_a_wrong_key_fails_before_any_call(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    server.control("DELETE", "/requests")
    bare = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"HEPINFRA_STATE_KEY": ""})
    assert bare.code == 1 and "HEPINFRA_STATE_KEY is not set" in bare.err and "Traceback" not in bare.err
    assert len(bare.err.strip().splitlines()) == 1
    assert server.requests() == [], "an API call was made without the state key"
    assert not (tmp_path / "out").exists()

    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    minted = values(tmp_path)
    before = state_bytes(tmp_path)
    server.control("DELETE", "/requests")
    for args in (
        ["apply", "-f", str(path), "--auto-approve"],
        ["rotate", "-f", str(path), "ids.webhook", "--auto-approve"],
    ):
        wrong = invoke(args, server=server, env={"HEPINFRA_STATE_KEY": "wrong-passphrase-1234"})
        assert (
            wrong.code == 1 and "is not the key the state of environment 'production' was encrypted with" in wrong.err
        )
        assert len(wrong.err.strip().splitlines()) == 1
    assert server.requests() == [] and state_bytes(tmp_path) == before and values(tmp_path) == minted


def test_a_raw_key_and_values_bound_to_their_address(tmp_path: Path, server: Server) -> None:
    raw = base64.b64encode(os.urandom(32)).decode()
    path = project(tmp_path)
    assert (
        invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"HEPINFRA_STATE_KEY": raw}).code == 0
    )
    state_file = tmp_path / ".hepinfra/state/production.json"
    state = codec.decode(state_file.read_bytes(), "state")
    assert state.crypto is not None and state.crypto.kdf == "raw"
    passphrase = invoke(["plan", "-f", str(path)], server=server, env={"HEPINFRA_STATE_KEY": "a passphrase"})
    assert passphrase.code == 1 and "raw 32-byte key" in passphrase.err
    # a ciphertext moved to another id does not open there (the address is authenticated)
    ids = dict(state.ids)
    ids["session_secret"] = ids["session_secret"].model_copy(update={"ciphertext": ids["webhook"].ciphertext})
    state_file.write_bytes(codec.encode(state.model_copy(update={"ids": ids})))
    (tmp_path / "out/production/.env").unlink()
    server.control("DELETE", "/requests")
    swapped = invoke(["apply", "-f", str(path), "--auto-approve"], server=server, env={"HEPINFRA_STATE_KEY": raw})
    text = swapped.out + swapped.err
    assert swapped.code == 1 and "production/ids.session_secret" in text and "does not open" in text
    assert service_calls(server, "idgen") == 0, "a value that did not open was replaced by a fresh mint"


def test_upload_serves_the_exact_bytes_and_a_change_gets_a_new_url(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    url = values(tmp_path)["LOGO_URL"]
    assert url.startswith(server.url) and HTTP.get(url).content == LOGO
    (tmp_path / "assets/logo.png").write_bytes(LOGO + b"v2")
    planned = run(["plan", "-f", str(path), "--detailed-exitcode"], server)
    assert planned.code == 2 and "~ production/uploads.logo upload (content changed)" in planned.out
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    new_url = values(tmp_path)["LOGO_URL"]
    assert new_url != url and HTTP.get(new_url).content == LOGO + b"v2"
    assert HTTP.get(url).content == LOGO  # hep.gg cannot delete an upload: the old URL keeps serving
    assert run(["plan", "-f", str(path), "--detailed-exitcode"], server).code == 0

    gone = project(tmp_path, MANIFEST.split("uploads:")[0])
    forget = run(["plan", "-f", str(gone)], server)
    assert "- production/uploads.logo will no longer be managed" in forget.out
    assert "hep.gg cannot delete uploads" in forget.out
    assert run(["apply", "-f", str(gone), "--auto-approve"], server).code == 0
    assert codec.decode((tmp_path / ".hepinfra/state/production.json").read_bytes(), "s").uploads == {}


@pytest.mark.parametrize("form", ["{}", "Bearer {}", "Token {}"])
def test_upload_token_in_each_documented_header_form(form: str, tmp_path: Path, server: Server) -> None:
    path = project(tmp_path, MANIFEST.split("ids:")[0] + "uploads:" + MANIFEST.split("uploads:")[1])
    done = run(["apply", "-f", str(path), "--auto-approve"], server, env={"HEPGG_UPLOAD_TOKEN": form.format(UP_TOKEN)})
    assert done.code == 0, done.err
    assert UP_TOKEN not in done.out + done.err


def test_api_errors_are_one_line_with_the_address(tmp_path: Path, server: Server) -> None:
    bad_option = MANIFEST.replace("length: 48", "length: 999")
    path = project(tmp_path / "a", bad_option)
    failed = run(["apply", "-f", str(path), "--auto-approve"], server)
    assert failed.code == 1
    assert "production/ids.session_secret" in failed.out + failed.err
    assert "The length must be between 1 and 255" in failed.out + failed.err  # hep.gg's own words

    path = project(tmp_path / "b")
    denied = run(["apply", "-f", str(path), "--auto-approve"], server, env={"HEPGG_ID_TOKEN": "idtok-wrong-token"})
    text = denied.out + denied.err
    assert denied.code == 1 and "production/ids.session_secret" in text and "HEPGG_ID_TOKEN" in text
    assert "idtok-wrong-token" not in text and ID_TOKEN not in text

    for token, words in (
        (UP_REVOKED, "Token revoked"),
        (UP_ACCESS_REVOKED, "ACCESS_REQUIRED"),
        (UP_FORBIDDEN, "Forbidden"),
    ):
        path = project(tmp_path / words.replace(" ", "_"))
        refused = run(["apply", "-f", str(path), "--auto-approve"], server, env={"HEPGG_UPLOAD_TOKEN": token})
        text = refused.out + refused.err
        assert refused.code == 1 and "production/uploads.logo" in text and words in text and token not in text

    path = project(tmp_path / "c")
    unset = invoke(
        ["plan", "-f", str(path)], server=server, env={**KEY_ENV, "HEPGG_ID_USERNAME": "", "HEPGG_ID_TOKEN": ""}
    )
    assert unset.code == 1 and "HEPGG_ID_USERNAME and HEPGG_ID_TOKEN are not set" in unset.err


def test_per_environment_credential_variables(tmp_path: Path, server: Server) -> None:
    manifest = MANIFEST.replace(
        "production: {}", "production: {id_username_env: PROD_ID_USER, id_token_env: PROD_ID_TOKEN, "
        "upload_token_env: PROD_UPLOAD}"
    )  # fmt: skip
    path = project(tmp_path, manifest)
    env = {"HEPGG_ID_USERNAME": "", "HEPGG_ID_TOKEN": "", "HEPGG_UPLOAD_TOKEN": "", "PROD_ID_USER": ENV[
        "HEPGG_ID_USERNAME"], "PROD_ID_TOKEN": ID_TOKEN, "PROD_UPLOAD": UP_TOKEN}  # fmt: skip
    done = run(["apply", "-f", str(path), "--auto-approve"], server, env=env)
    assert done.code == 0, done.err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    type: nanoid\n    length: 48\n", "    type: nanoid\n", "a nanoid needs length:"),
        ("    type: nanoid\n", "    type: guid\n", "ids.session_secret.type"),
        ("    length: 48\n", "    length: 48\n    token: x\n", "credentials come from the environment"),
        ("    length: 48\n", "    length: 48\n    rotate_evry: 30d\n", "did you mean 'rotate_every'"),
        ("    length: 48\n", "    length: [1]\n", "must be a string, a finite number or true/false"),
        ('keys: {SESSION_SECRET: "{{ id.value }}"}', 'keys: {SESSION_SECRET: "{{ id.valu }}"}', "valu"),
        ("file: assets/logo.png", "file: ../outside.png", "upload file '../outside.png'"),
    ],
)
def test_validate_catches_what_is_checkable_offline(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = project(tmp_path, MANIFEST.replace(old, new, 1))
    result = invoke(["validate", "-f", str(path)])
    assert result.code == 1 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and ":" in result.err.split(" ")[0]


def test_an_exec_argv_cannot_carry_an_id(tmp_path: Path) -> None:
    manifest = MANIFEST + """      - exec: ["echo", "{{ id.value }}"]\n        keys: {A: x}\n"""
    result = invoke(["validate", "-f", str(project(tmp_path, manifest))])
    assert result.code == 1 and "an exec argv must not use id" in result.err, result.err


def _kill_during_outputs(root: Path, server: Server) -> int:
    """An apply SIGKILLed by its own exec output, i.e. after the minted value was recorded and while
    its outputs are being written."""
    killer = """      - exec: ["sh", "-c", "kill -9 $PPID; sleep 5"]\n        keys: {S: "{{ id.value }}"}\n"""
    manifest = MANIFEST.replace(
        """        keys: {SESSION_SECRET: "{{ id.value }}"}\n""",
        """        keys: {SESSION_SECRET: "{{ id.value }}"}\n""" + killer,
    )
    path = project(root, manifest)
    env = {**os.environ, **ENV, **KEY_ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url}
    proc = subprocess.run([sys.executable, "-m", "hepinfra", "apply", "-f", str(path), "--auto-approve"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    record_artifact("apply killed by its exec output", proc.stdout + proc.stderr)
    return proc.returncode


def test_killed_after_the_mint_was_recorded_resumes_without_a_second_mint(tmp_path: Path, server: Server) -> None:
    assert _kill_during_outputs(tmp_path, server) == -signal.SIGKILL
    state = codec.decode((tmp_path / ".hepinfra/state/production.json").read_bytes(), "s")
    assert "session_secret" in state.ids and any(j.op == "render" for j in state.journal)
    recorded = state.ids["session_secret"].value_digest
    # the next run finds the exec output still owed; without the killer it converges from state
    path = project(tmp_path)
    resumed = run(["apply", "-f", str(path), "--auto-approve"], server)
    assert resumed.code == 0, resumed.err
    state = codec.decode((tmp_path / ".hepinfra/state/production.json").read_bytes(), "s")
    assert state.ids["session_secret"].value_digest == recorded, "the recorded value was minted again"
    shown = invoke(["output", "-f", str(path), "production/ids.session_secret", "--format", "json"],
                   server=server, env=KEY_ENV, secret_ok=True)  # fmt: skip
    assert json.loads(shown.out)["SESSION_SECRET"] == values(tmp_path)["SESSION_SECRET"]
    assert run(["plan", "-f", str(path), "--detailed-exitcode"], server).code == 0


@pytest.mark.parametrize("boundary", ["before:1", "after:1", "before:2", "after:2", "before:3", "after:3"])
def test_killed_at_each_call_boundary_converges(boundary: str, tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    env = {**os.environ, **ENV, **KEY_ENV, "HEPGG_URL": server.url, "HEPGG_ID_URL": server.url,
           "HEPINFRA_TEST_KILL_AT": boundary}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "hepinfra", "apply", "-f", str(path), "--auto-approve",
                           "--parallelism", "1"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    record_artifact(f"apply killed at {boundary}", proc.stdout + proc.stderr)
    assert proc.returncode == -signal.SIGKILL
    done = run(["apply", "-f", str(path), "--auto-approve"], server)
    assert done.code == 0, done.err
    state = codec.decode((tmp_path / ".hepinfra/state/production.json").read_bytes(), "s")
    assert state.journal == () and set(state.ids) == {"session_secret", "webhook"} and set(state.uploads) == {"logo"}
    got = values(tmp_path)
    shown = invoke(["output", "-f", str(path), "production/ids.webhook", "--format", "json"],
                   server=server, env=KEY_ENV, secret_ok=True)  # fmt: skip
    assert json.loads(shown.out) == {"WEBHOOK_PUBLIC": got["WEBHOOK_PUBLIC"], "WEBHOOK_PRIVATE": got["WEBHOOK_PRIVATE"]}
    assert HTTP.get(got["LOGO_URL"]).content == LOGO
    assert service_calls(server, "idgen") <= 3 and service_calls(server, "uploader") <= 2
    assert run(["plan", "-f", str(path), "--detailed-exitcode"], server).code == 0


# --- what an attacker tried (each once broke something) ------------------------------------------------


def test_a_short_value_never_reaches_a_message(tmp_path: Path, server: Server) -> None:
    manifest = MANIFEST.replace("length: 48", "length: 4").replace(
        """        keys: {SESSION_SECRET: "{{ id.value }}"}\n""",
        """        keys: {SESSION_SECRET: "{{ id.value }}"}\n      - exec: ["sh", "-c", "cat >&2; exit 3"]\n"""
        """        keys: {SHORT: "{{ id.value }}"}\n""",
    )
    path = project(tmp_path, manifest)
    failed = run(["apply", "-f", str(path), "--auto-approve", "--json"], server)
    assert failed.code == 1
    short = values(tmp_path)["SESSION_SECRET"]
    assert len(short) == 4 and short not in failed.out + failed.err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("n", 3, "crypto.n"), ("n", 2**40, "crypto.n"), ("p", 100, "crypto.p"), ("salt", "!!notb64", "crypto.salt")],
)
def test_an_edited_crypto_block_is_one_line(tmp_path: Path, server: Server, field: str, value: object,
                                            message: str) -> None:  # fmt: skip
    path = project(tmp_path)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    state_file = tmp_path / ".hepinfra/state/production.json"
    doc = json.loads(state_file.read_text())
    doc["crypto"][field] = value
    state_file.write_text(json.dumps(doc))
    result = run(["plan", "-f", str(path)], server)
    assert result.code == 1 and message in result.err and "internal error" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_a_removed_crypto_block_stops_before_anything_is_written(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    state_file = tmp_path / ".hepinfra/state/production.json"
    doc = json.loads(state_file.read_text())
    del doc["crypto"]
    state_file.write_text(json.dumps(doc))
    before = (tmp_path / "out/production/.env").read_bytes()
    server.control("DELETE", "/requests")
    result = run(["apply", "-f", str(path), "--auto-approve"], server)
    assert result.code == 1 and "no 'crypto' block" in result.err
    assert server.requests() == [] and (tmp_path / "out/production/.env").read_bytes() == before


def test_options_named_like_parameters_are_plain_options(tmp_path: Path, server: Server) -> None:
    manifest = MANIFEST.replace("length: 48", "length: 48\n    self: 3\n    encoding: form\n    fields: x")
    assert run(["apply", "-f", str(project(tmp_path, manifest)), "--auto-approve"], server).code == 0
    assert len(values(tmp_path)["SESSION_SECRET"]) == 48


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("length: 48", "length: .inf", "a finite number"),
        ("length: 48", "length: .nan", "a finite number"),
        ("type: keypair", "type: uuid", "private"),
    ],
)
def test_values_that_cannot_work_are_refused_offline(tmp_path: Path, old: str, new: str, message: str) -> None:
    result = invoke(["validate", "-f", str(project(tmp_path, MANIFEST.replace(old, new, 1)))])
    assert result.code == 1 and message in result.err, result.err


def test_a_saved_plan_with_a_change_twice_is_refused(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    plan_file = tmp_path / "plan.json"
    assert run(["plan", "-f", str(path), "--out", str(plan_file)], server).code == 0
    doc = json.loads(plan_file.read_text())
    doc["changes"].append(doc["changes"][-1])
    plan_file.write_text(json.dumps(doc))
    server.control("DELETE", "/requests")
    result = run(["apply", str(plan_file)], server)
    assert result.code == 1 and "appears twice" in result.err
    assert service_calls(server, "uploader") == 0 and service_calls(server, "idgen") == 0


def test_the_sandbox_key_file_is_never_replaced(tmp_path: Path) -> None:
    path = project(tmp_path, MANIFEST.replace("version: 1", "version: 1\nhepgg: {url: local}"))
    env = {"HEPINFRA_STATE_KEY": ""}
    assert invoke(["apply", "-f", str(path), "--auto-approve"], env=env).code == 0
    key_file = tmp_path / ".hepinfra/local/state.key"
    key_file.write_text(key_file.read_text().strip() + "x\n")
    broken = key_file.read_bytes()
    result = invoke(["plan", "-f", str(path)], env=env)
    assert result.code == 1 and "state.key" in result.err and key_file.read_bytes() == broken


def test_a_passphrase_with_a_trailing_newline_is_the_same_key(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    again = invoke(["plan", "-f", str(path), "--detailed-exitcode"], server=server,
                   env={"HEPINFRA_STATE_KEY": KEY_ENV["HEPINFRA_STATE_KEY"] + "\n"})  # fmt: skip
    assert again.code == 0, again.err


@pytest.mark.parametrize("token", ["Basic abcdefghijk", "Bearer "])
def test_an_upload_token_of_no_documented_form_is_a_plan_error(tmp_path: Path, server: Server, token: str) -> None:
    server.control("DELETE", "/requests")
    result = run(["plan", "-f", str(project(tmp_path))], server, env={"HEPGG_UPLOAD_TOKEN": token})
    assert result.code == 1 and "production/uploads.logo" in result.err and "HEPGG_UPLOAD_TOKEN" in result.err
    assert service_calls(server, "uploader") == 0


# --- what a reviewer found ------------------------------------------------------------------------------


def test_a_changed_digest_key_renders_once_then_converges(tmp_path: Path, server: Server) -> None:
    """uploads alone digest with a public key; adding an id switches the environment to its state key."""
    uploads_only = "version: 1\nenvironments:\n  production: {}\nuploads:" + MANIFEST.split("uploads:")[1]
    path = project(tmp_path, uploads_only)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    path = project(tmp_path)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    assert run(["plan", "-f", str(path), "--detailed-exitcode"], server).code == 0
    assert "No changes to apply" in run(["apply", "-f", str(path), "--auto-approve"], server).out


def test_an_unquoted_mode_on_an_id_output_is_read_as_written(tmp_path: Path) -> None:
    ok = MANIFEST.replace(
        'keys: {SESSION_SECRET: "{{ id.value }}"}', 'keys: {SESSION_SECRET: "{{ id.value }}"}\n        mode: 0600'
    )
    assert invoke(["validate", "-f", str(project(tmp_path / "a", ok))]).code == 0
    loose = ok.replace("mode: 0600", "mode: 0644")
    result = invoke(["validate", "-f", str(project(tmp_path / "b", loose))])
    assert result.code == 1 and "mode 0644 gives group or other users access" in result.err


def test_a_state_without_ids_or_uploads_is_written_as_before(tmp_path: Path, server: Server) -> None:
    manifest = "version: 1\nenvironments: {production: {}}\ndatabases:\n  shop: {}\n"
    path = project(tmp_path, manifest)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    doc = json.loads((tmp_path / ".hepinfra/state/production.json").read_text())
    assert "shop" in doc["databases"] and not {"ids", "uploads", "crypto"} & set(doc)


def test_the_key_is_not_needed_once_the_last_id_is_forgotten(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    assert run(["apply", "-f", str(path), "--auto-approve"], server).code == 0
    without_ids = project(tmp_path, MANIFEST.split("ids:")[0] + "uploads:" + MANIFEST.split("uploads:")[1])
    assert run(["apply", "-f", str(without_ids), "--auto-approve"], server).code == 0
    # without the key, the upload's output digests are keyed anew (its URL is public): one render
    assert invoke(["apply", "-f", str(without_ids), "--auto-approve"], server=server,
                  env={"HEPINFRA_STATE_KEY": ""}).code == 0  # fmt: skip
    bare = invoke(["plan", "-f", str(without_ids), "--detailed-exitcode"], server=server,
                  env={"HEPINFRA_STATE_KEY": ""})  # fmt: skip
    assert bare.code == 0, bare.out + bare.err
    again = project(tmp_path, MANIFEST)  # ids back, under another key: nothing was left encrypted
    assert invoke(["apply", "-f", str(again), "--auto-approve"], server=server,
                  env={"HEPINFRA_STATE_KEY": "a-new-key-after-all"}).code == 0  # fmt: skip


def test_a_saved_plan_needs_the_id_and_upload_credentials_where_it_is_applied(tmp_path: Path, server: Server) -> None:
    path = project(tmp_path)
    plan_file = tmp_path / "plan.json"
    assert run(["plan", "-f", str(path), "--out", str(plan_file)], server).code == 0
    server.control("DELETE", "/requests")
    result = run(["apply", str(plan_file)], server, env={"HEPGG_ID_TOKEN": ""})
    assert result.code == 1 and "HEPGG_ID_TOKEN is not set" in result.err and "nothing was applied" in result.err
    assert server.requests() == []
