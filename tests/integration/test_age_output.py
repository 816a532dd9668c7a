"""age outputs, end to end: hepinfra encrypts with pyrage, the age CLI from Debian decrypts. The
file may be committed; drift (an edited or missing file, a stale password) is still found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.cliutil import invoke, write_project
from tests.conftest import Server
from tests.integration.test_rotation_and_locks import reveal

MANIFEST = """
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    engine: postgres
    outputs:
      - age: "secrets/{{{{ env }}}}/shop.env.age"
        {recipients}
        keys: {{SHOP_URL: "{{{{ db.connection_string }}}}", SHOP_PASSWORD: "{{{{ db.password }}}}"}}
"""


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    age = shutil.which("age-keygen")
    if age is None:
        pytest.fail("the age CLI is not installed (.ci/run installs Debian's 'age' package)")
    key = tmp_path / "key.txt"
    done = subprocess.run([age, "-o", str(key)], capture_output=True, text=True, check=True)
    recipient = next(w for w in (done.stderr + done.stdout).split() if w.startswith("age1"))
    return key, recipient


def decrypt(file: Path, key: Path) -> dict[str, str | None]:
    plain = subprocess.run(["age", "-d", "-i", str(key), str(file)], capture_output=True, check=True).stdout
    out = file.with_suffix(".plain")
    out.write_bytes(plain)
    try:
        return dotenv_values(out)
    finally:
        out.unlink()


def test_age_cli_decrypts_exactly_the_revealed_values(
    tmp_path: Path, server: Server, identity: tuple[Path, str]
) -> None:
    key, recipient = identity
    project = write_project(tmp_path / "p", MANIFEST.format(recipients=f'recipients: ["{recipient}"]'))
    subprocess.run(["git", "init", "-q", str(project.parent)], check=True)
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server)
    assert done.code == 0, done.out + done.err
    file = project.parent / "secrets/prod/shop.env.age"
    assert file.stat().st_mode & 0o777 == 0o600 and file.read_bytes().startswith(b"age-encryption.org/v1")
    live = reveal(server, "shop-prod")
    assert decrypt(file, key) == {"SHOP_URL": live["connectionString"], "SHOP_PASSWORD": live["password"]}
    subprocess.run(["git", "-C", str(project.parent), "add", "secrets"], check=True)  # meant to be committed
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server).code == 0
    file.write_bytes(file.read_bytes()[:-1] + b"!")
    edited = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server)
    assert edited.code == 2 and "secrets/prod/shop.env.age: edited since it was written" in edited.out
    assert invoke(["rotate", "shop", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert decrypt(file, key)["SHOP_PASSWORD"] == reveal(server, "shop-prod")["password"]
    file.unlink()
    assert "missing" in invoke(["plan", "-f", str(project)], server=server).out


def test_recipients_file_and_bad_recipients(tmp_path: Path, server: Server, identity: tuple[Path, str]) -> None:
    key, recipient = identity
    project = write_project(
        tmp_path / "p",
        MANIFEST.format(recipients="recipients_file: team.txt"),
        {"team.txt": f"# the team\n\n{recipient}\n"},
    )
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server).code == 0
    assert decrypt(project.parent / "secrets/prod/shop.env.age", key)["SHOP_PASSWORD"]
    for bad, words in (
        ('recipients: ["age1notarecipient"]', "recipient 1 is not an age recipient"),
        ("recipients: []", "must not be empty"),
        (f'recipients: ["{recipient}"]\n        recipients_file: team.txt', "not both"),
    ):
        broken = write_project(tmp_path / str(abs(hash(bad))), MANIFEST.format(recipients=bad), {"team.txt": ""})
        result = invoke(["validate", "-f", str(broken)])
        assert result.code == 1 and words in result.err and result.err.count("\n") == 1, (bad, result.err)
