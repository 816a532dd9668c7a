"""A misspelt field of a template variable (issue 22, item 9): ``db has no field 'conection_string' (did
you mean 'connection_string'?)`` instead of Jinja's "'dict object' has no attribute", for ``db``, ``id``,
``upload`` and ``vars``, in the keys of every output kind and in template files, whose errors also name
the template file and its line. The exact line ``validate`` and ``plan`` print, through the CLI against
the local hep.gg; never a value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cliutil import invoke, write_project
from tests.conftest import Server

AGE_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
KEY_ENV = {"HEPINFRA_STATE_KEY": "correct horse battery staple"}

HEAD = """\
version: 1
environments:
  prod: {vars: {region: eu-west-1}}
"""


def located(tmp_path: Path, manifest: str, server: Server, files: dict[str, str] | None = None) -> list[str]:
    """The one error line of validate and of plan (the same), without the manifest's path."""
    path = write_project(tmp_path / "p", HEAD + manifest, {"logo.txt": "a logo\n", **(files or {})})
    lines = []
    for command in ("validate", "plan"):
        result = invoke([command, "-f", str(path)], server=server, env=KEY_ENV)
        assert result.code == 1 and result.out == "", result.out + result.err
        assert result.err.startswith(f"Error: {path}:") and result.err.count("\n") == 1, result.err
        lines.append(result.err.removeprefix(f"Error: {path}:").rstrip("\n"))
    assert lines[0] == lines[1]
    assert server.requests() == []  # bad input: no remote call
    return lines[:1]


CASES = {
    "dotenv db": (
        """\
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {URL: "{{ db.conection_string }}"}
""",
        "8:21: databases.shop.outputs[0].keys.URL: db has no field 'conection_string' "
        "(did you mean 'connection_string'?)",
    ),
    "age id": (
        f"""\
ids:
  token:
    type: keypair
    outputs:
      - age: secrets/token.env.age
        recipients: ["{AGE_RECIPIENT}"]
        keys: {{PRIVATE: "{{{{ id.privat }}}}"}}
""",
        "10:25: ids.token.outputs[0].keys.PRIVATE: id has no field 'privat' (did you mean 'private'?)",
    ),
    "aws upload": (
        """\
uploads:
  logo:
    file: logo.txt
    outputs:
      - aws_ssm: "/{{ env }}/logo/"
        keys: {LOGO: "{{ upload.ulr }}"}
""",
        "9:22: uploads.logo.outputs[0].keys.LOGO: upload has no field 'ulr' (did you mean 'url'?)",
    ),
    "exec vars": (
        """\
databases:
  shop:
    outputs:
      - exec: ["./push"]
        keys: {REGION: "{{ vars.regoin }}"}
""",
        "8:24: databases.shop.outputs[0].keys.REGION: vars has no field 'regoin' (did you mean 'region'?)",
    ),
    "no close field": (
        """\
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {URL: "{{ db.zzzzzz }}"}
""",
        "8:21: databases.shop.outputs[0].keys.URL: db has no field 'zzzzzz' (its fields: connection_string, "
        "db_name, db_user, engine, host, id, name, password, port, user)",
    ),
}


NAMES = {
    "close": ("{{ dbb.password }}", "'dbb' is undefined (did you mean 'db'?)"),
    "far": ("{{ zzzz }}", "'zzzz' is undefined (a template here can use: db, env, key, name, vars)"),
}


@pytest.mark.parametrize("case", sorted(NAMES))
def test_a_misspelt_name_says_the_closest_or_every_name_a_template_can_use(
    case: str, tmp_path: Path, server: Server
) -> None:
    source, said = NAMES[case]
    manifest = f'databases:\n  shop:\n    outputs:\n      - dotenv: .env\n        keys: {{URL: "{source}"}}\n'
    assert located(tmp_path, manifest, server) == [
        f"8:21: databases.shop.outputs[0].keys.URL: template uses an undefined value: {said}"
    ]
    files = {"templates/app.json.j2": f'{{\n  "url": "{source}"\n}}\n'}
    assert located(tmp_path / "file", TEMPLATE_OUTPUT, server, files) == [
        f"7:19: databases.shop.outputs[0].template: templates/app.json.j2:2: template uses an undefined value: {said}"
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_misspelt_field_names_the_variable_and_the_closest_field(case: str, tmp_path: Path, server: Server) -> None:
    manifest, expected = CASES[case]
    assert located(tmp_path, manifest, server) == [expected]


TEMPLATE_OUTPUT = """\
databases:
  shop:
    outputs:
      - template: templates/app.json.j2
        path: app.json
"""


def test_a_template_files_misspelt_field_names_the_file_and_its_line(tmp_path: Path, server: Server) -> None:
    source = '{\n  "region": "{{ vars.region }}",\n  "url": "{{ db.pasword }}"\n}\n'
    assert located(tmp_path, TEMPLATE_OUTPUT, server, {"templates/app.json.j2": source}) == [
        "7:19: databases.shop.outputs[0].template: templates/app.json.j2:3: db has no field 'pasword' "
        "(did you mean 'password'?)"
    ]


def test_a_template_files_syntax_error_names_the_file_and_its_line(tmp_path: Path, server: Server) -> None:
    source = "{\n\n  {{ db.port }\n}\n"
    (line,) = located(tmp_path, TEMPLATE_OUTPUT, server, {"templates/app.json.j2": source})
    assert line.startswith("7:19: databases.shop.outputs[0].template: templates/app.json.j2:3: template syntax error: ")


def test_a_template_file_that_fails_only_at_apply_names_the_file_and_its_line(tmp_path: Path, server: Server) -> None:
    """A template that fails only with the real values (the dry render's placeholder password takes the
    other branch) is described by the template file, its line and the error's type, never its message."""
    source = "a\nb\n{{ db.password if db.password == 'placeholder-password' else db.password.nope }}\n"
    path = write_project(tmp_path / "p", HEAD + TEMPLATE_OUTPUT, {"templates/app.json.j2": source})
    result = invoke(["apply", "-f", str(path), "--auto-approve"], server=server)
    assert result.code == 1, result.out + result.err
    assert (
        "prod/databases.shop: created; but render of app.json failed: app.json: templates/app.json.j2:3: "
        "template failed with the real values: UndefinedError (its message is withheld because it may quote a "
        "secret)\n"
    ) in result.out
