"""AWS Secrets Manager and SSM Parameter Store outputs, end to end through the CLI, against moto in
server mode over real HTTP (never an in-process mock): what boto3 reads back equals Reveal, drift
is found by key, rotation reaches both, removed keys and outputs are cleaned up, and failures are
one line per output while the other outputs are still written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.cliutil import invoke, write_project
from tests.conftest import Server
from tests.integration.test_rotation_and_locks import reveal
from tests.servers import Moto

MANIFEST = """
version: 1
environments: {prod: {}}
databases:
  shop:
    engine: postgres
    outputs:
      - aws_secretsmanager: "hepinfra/{{ env }}/{{ key }}"
        keys: {URL: "{{ db.connection_string }}", PASSWORD: "{{ db.password }}"}
      - aws_ssm: "/hepinfra/{{ env }}/{{ key }}/"
        keys: {URL: "{{ db.connection_string }}", PASSWORD: "{{ db.password }}"}
      - dotenv: .env
        keys: {SHOP_PASSWORD: "{{ db.password }}"}
"""


@pytest.fixture
def aws(moto_server: Moto) -> dict[str, str]:
    return dict(moto_server.env)


def client(env: dict[str, str], service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def secret(env: dict[str, str], name: str = "hepinfra/prod/shop") -> dict[str, str]:
    return json.loads(client(env, "secretsmanager").get_secret_value(SecretId=name)["SecretString"])  # type: ignore[no-any-return]


def parameters(env: dict[str, str], prefix: str = "/hepinfra/prod/shop/") -> dict[str, str]:
    found = client(env, "ssm").get_parameters_by_path(Path=prefix, WithDecryption=True)["Parameters"]
    return {p["Name"][len(prefix) :]: p["Value"] for p in found if p["Type"] == "SecureString"}


def fresh_names(manifest: str, tmp_path: Path) -> str:
    """Each test its own secret and parameter names (one moto for the session)."""
    tag = tmp_path.name[-12:].replace("_", "-")
    return manifest.replace("hepinfra/{{ env }}", f"hepinfra-{tag}/{{{{ env }}}}")


def test_apply_writes_both_exactly_and_plan_is_clean(tmp_path: Path, server: Server, aws: dict[str, str]) -> None:
    project = write_project(tmp_path / "p", MANIFEST)
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert done.code == 0, done.out + done.err
    live = reveal(server, "shop-prod")
    wanted = {"URL": live["connectionString"], "PASSWORD": live["password"]}
    assert secret(aws) == wanted and parameters(aws) == wanted
    tags = client(aws, "secretsmanager").describe_secret(SecretId="hepinfra/prod/shop")["Tags"]
    assert {"Key": "managed-by", "Value": "hepinfra"} in tags
    planned = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws)
    assert planned.code == 0, planned.out + planned.err


def test_drift_in_secrets_manager_is_named_by_key_and_fixed(
    tmp_path: Path, server: Server, aws: dict[str, str]
) -> None:
    project = write_project(tmp_path / "p", fresh_names(MANIFEST, tmp_path))
    name = f"hepinfra-{tmp_path.name[-12:].replace('_', '-')}/prod/shop"
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    edited = {**secret(aws, name), "URL": "postgresql://else/where", "THEIRS": "kept"}
    client(aws, "secretsmanager").put_secret_value(SecretId=name, SecretString=json.dumps(edited))
    planned = invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws)
    assert planned.code == 2, planned.out + planned.err
    assert f"aws_secretsmanager:{name}: URL edited since it was written" in planned.out
    assert invoke(["plan", "-f", str(project), "--no-refresh", "--detailed-exitcode"], server=server, env=aws).code == 0
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    live = reveal(server, "shop-prod")
    assert secret(aws, name) == {"URL": live["connectionString"], "PASSWORD": live["password"], "THEIRS": "kept"}
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0


def test_rotation_reaches_both_and_removed_keys_go(tmp_path: Path, server: Server, aws: dict[str, str]) -> None:
    manifest = fresh_names(MANIFEST, tmp_path)
    tag = tmp_path.name[-12:].replace("_", "-")
    project = write_project(tmp_path / "p", manifest)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    rotated = invoke(["rotate", "shop", "-f", str(project), "--auto-approve", "--json"], server=server, env=aws)
    assert rotated.code == 0, rotated.err
    live = reveal(server, "shop-prod")
    assert secret(aws, f"hepinfra-{tag}/prod/shop")["PASSWORD"] == live["password"]
    assert parameters(aws, f"/hepinfra-{tag}/prod/shop/")["PASSWORD"] == live["password"]
    done = [json.loads(line) for line in rotated.out.splitlines() if '"done"' in line]
    assert done and "rotation_window_ms" in done[0]
    fewer = manifest.replace(
        '{URL: "{{ db.connection_string }}", PASSWORD: "{{ db.password }}"}', '{PASSWORD: "{{ db.password }}"}'
    )
    project.write_text(fewer)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    assert secret(aws, f"hepinfra-{tag}/prod/shop") == {"PASSWORD": live["password"]}
    assert parameters(aws, f"/hepinfra-{tag}/prod/shop/") == {"PASSWORD": live["password"]}
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0


def test_a_removed_output_is_cleaned_up(tmp_path: Path, server: Server, aws: dict[str, str]) -> None:
    manifest = fresh_names(MANIFEST, tmp_path)
    tag = tmp_path.name[-12:].replace("_", "-")
    project = write_project(tmp_path / "p", manifest)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    only_dotenv = (
        manifest.split("      - aws_secretsmanager")[0]
        + "      - dotenv: .env\n"
        + manifest.split("      - dotenv: .env\n")[1]
    )
    project.write_text(only_dotenv)
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert done.code == 0, done.out + done.err
    assert parameters(aws, f"/hepinfra-{tag}/prod/shop/") == {}
    described = client(aws, "secretsmanager").describe_secret(SecretId=f"hepinfra-{tag}/prod/shop")
    assert "DeletedDate" in described  # scheduled for deletion, restorable


def test_plain_value_secret(tmp_path: Path, server: Server, aws: dict[str, str]) -> None:
    tag = tmp_path.name[-12:].replace("_", "-")
    manifest = f"""
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    engine: postgres
    outputs:
      - aws_secretsmanager: "plain-{tag}"
        value: "{{{{ db.connection_string }}}}"
"""
    project = write_project(tmp_path / "p", manifest)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    value = client(aws, "secretsmanager").get_secret_value(SecretId=f"plain-{tag}")["SecretString"]
    assert value == reveal(server, "shop-prod")["connectionString"]
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0


def test_no_credentials_fails_those_outputs_in_one_line_and_writes_the_rest(
    tmp_path: Path, server: Server, aws: dict[str, str]
) -> None:
    project = write_project(tmp_path / "p", fresh_names(MANIFEST, tmp_path))
    env = {**aws, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "x"),
           "AWS_CONFIG_FILE": str(tmp_path / "x")}  # fmt: skip
    failed = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=env)
    assert failed.code == 1
    text = failed.out + failed.err
    assert "no AWS credentials found" in text and "aws_ssm:/hepinfra-" in text
    assert (project.parent / ".env").exists()
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0


def test_validate_checks_aws_outputs_offline(tmp_path: Path) -> None:
    cases = {
        '      - aws_secretsmanager: "x"\n        keys: {A: "1"}\n        value: "2"\n': "either keys: (a JSON object) or value:",
        '      - aws_secretsmanager: "bad name!"\n        keys: {A: "1"}\n': "is not valid",
        '      - aws_ssm: "aws/reserved/"\n        keys: {A: "1"}\n': "reserved",
        '      - aws_ssm: "/p/"\n        keys: {A: "1"}\n        region: Mars\n': "region",
        '      - aws_ssm: "/p/{{ db.password }}/"\n        keys: {A: "1"}\n': "must not use db",
    }
    for output, words in cases.items():
        manifest = "version: 1\nenvironments: {prod: {}}\ndatabases:\n  shop:\n    outputs:\n" + output
        project = write_project(tmp_path / str(abs(hash(output))), manifest)
        result = invoke(["validate", "-f", str(project)], env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
        assert result.code == 1 and words in result.err and result.err.count("\n") == 1, (output, result.err)


def test_throttling_is_retried_with_backoff(
    tmp_path: Path, server: Server, aws: dict[str, str], moto_server: Moto
) -> None:
    from tests.servers import DroppingProxy

    throttled = (400, {"Content-Type": "application/x-amz-json-1.1"},
                 b'{"__type": "ThrottlingException", "message": "Rate exceeded"}')  # fmt: skip
    proxy = DroppingProxy(moto_server.url, "POST", "/", drops=3, target="AmazonSSM.PutParameter", answer=throttled)
    try:
        project = write_project(tmp_path / "p", fresh_names(MANIFEST, tmp_path))
        done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server,
                      env={**aws, "AWS_ENDPOINT_URL": proxy.url})  # fmt: skip
    finally:
        proxy.close()
    assert done.code == 0, done.out + done.err
    assert proxy.dropped == 3  # three throttled answers, then it went through
    tag = tmp_path.name[-12:].replace("_", "-")
    assert parameters(aws, f"/hepinfra-{tag}/prod/shop/")["PASSWORD"] == reveal(server, "shop-prod")["password"]


def test_access_denied_fails_that_output_alone(tmp_path: Path, server: Server) -> None:
    import logging
    import secrets

    from tests.conftest import ISSUED
    from tests.servers import moto_process

    with moto_process("unused-" + secrets.token_hex(8), {"INITIAL_NO_AUTH_ACTION_COUNT": "2"}) as moto:
        quiet = logging.getLogger("botocore")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # the test's own admin calls: their answers hold the key
        try:
            iam = boto3.client("iam", endpoint_url=moto.url, region_name="us-east-1",
                               aws_access_key_id="AKIAADMIN0000000002", aws_secret_access_key="x" * 20)  # fmt: skip
            iam.create_user(UserName="nobody")
            key = iam.create_access_key(UserName="nobody")["AccessKey"]
        finally:
            quiet.setLevel(level)
        ISSUED.add(key["SecretAccessKey"])
        env = {**moto.env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        project = write_project(tmp_path / "p", MANIFEST)
        failed = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=env)
    assert failed.code == 1
    text = failed.out + failed.err
    assert "aws_secretsmanager:hepinfra/prod/shop: access denied" in text and "aws_ssm:/hepinfra/prod/shop/" in text
    assert key["SecretAccessKey"] not in text
    assert "SHOP_PASSWORD" in (project.parent / ".env").read_text()  # the file output was still written


# --- what an attacker found: regression tests ----------------------------------------------------------


def test_an_edited_state_cannot_make_hepinfra_delete_what_it_never_wrote(
    tmp_path: Path, server: Server, aws: dict[str, str]
) -> None:
    """Records are editable (a pull request): removal needs proof, the keyed digest of the value."""
    from hepinfra.state.local import LocalBackend

    tag = tmp_path.name[-12:].replace("_", "-")
    sm, ssm = client(aws, "secretsmanager"), client(aws, "ssm")
    sm.create_secret(Name=f"theirs-{tag}/plain", SecretString="their-token-123")
    sm.create_secret(Name=f"theirs-{tag}/json", SecretString=json.dumps({"tok": "their-tok", "port": 5432}))
    for key in ("A", "B"):
        ssm.put_parameter(Name=f"/theirs-{tag}/{key}", Value=f"their-{key}", Type="SecureString")
    manifest = f"""
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    engine: postgres
    outputs:
      - aws_secretsmanager: "theirs-{tag}/json"
        keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
      - aws_ssm: "/theirs-{tag}/"
        keys: {{SHOP_URL: "{{{{ db.connection_string }}}}"}}
"""
    project = write_project(tmp_path / "p", manifest)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    assert json.loads(sm.get_secret_value(SecretId=f"theirs-{tag}/json")["SecretString"])["port"] == 5432  # typed
    backend = LocalBackend(project.parent / ".hepinfra" / "state")
    state = backend.read("prod")
    assert state is not None
    outputs = dict(state.outputs)
    for oid, record in list(outputs.items()):
        extra = ("tok",) if record.kind == "aws_secretsmanager" else ("A", "B")
        outputs[oid] = record.model_copy(update={"keys": (*record.keys, *extra), "definition_digest": "forced"})
    forged = next(iter(outputs.values())).model_copy(
        update={"path": f"aws_secretsmanager:theirs-{tag}/plain", "keys": ("X",), "key_digests": {}}
    )
    outputs[f"shop:aws_secretsmanager:theirs-{tag}/plain"] = forged
    backend.write("prod", state.model_copy(update={"outputs": outputs}))
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert done.code == 0, done.out + done.err
    assert sm.get_secret_value(SecretId=f"theirs-{tag}/plain")["SecretString"] == "their-token-123"
    there = json.loads(sm.get_secret_value(SecretId=f"theirs-{tag}/json")["SecretString"])
    assert there["tok"] == "their-tok" and there["port"] == 5432
    assert parameters(aws, f"/theirs-{tag}/").keys() >= {"A", "B"}


def test_a_secret_that_is_not_a_json_object_is_never_replaced(
    tmp_path: Path, server: Server, aws: dict[str, str]
) -> None:
    tag = tmp_path.name[-12:].replace("_", "-")
    client(aws, "secretsmanager").create_secret(Name=f"legacy-{tag}", SecretString="tok-123-legacy")
    manifest = f"""
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    outputs:
      - aws_secretsmanager: "legacy-{tag}"
        keys: {{SecretString: "{{{{ db.password }}}}"}}
"""
    project = write_project(tmp_path / "p", manifest)
    failed = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert failed.code == 1 and "holds something other than a JSON object" in failed.out + failed.err
    assert client(aws, "secretsmanager").get_secret_value(SecretId=f"legacy-{tag}")["SecretString"] == "tok-123-legacy"


def test_two_declarations_of_one_value_are_refused_offline(tmp_path: Path) -> None:
    for outputs in (
        ['aws_ssm: "/p/"\n        keys: {MAIN_URL: "1"}', 'aws_ssm: "/p/"\n        keys: {MAIN_URL: "2"}'],
        ['aws_secretsmanager: "s"\n        keys: {K: "1"}', 'aws_secretsmanager: "s"\n        region: us-east-1\n        keys: {K: "2"}'],
        ['aws_secretsmanager: "s"\n        value: "1"', 'aws_secretsmanager: "s"\n        keys: {K: "2"}'],
    ):  # fmt: skip
        manifest = (
            "version: 1\nenvironments: {prod: {}}\ndatabases:\n"
            f"  shop:\n    outputs:\n      - {outputs[0]}\n  cart:\n    outputs:\n      - {outputs[1]}\n"
        )
        project = write_project(tmp_path / str(abs(hash(str(outputs)))), manifest)
        result = invoke(["validate", "-f", str(project)])
        assert result.code == 1 and "is also written by prod/databases." in result.err, (outputs, result.err)


def test_a_retired_secret_declared_again_is_restored(tmp_path: Path, server: Server, aws: dict[str, str]) -> None:
    tag = tmp_path.name[-12:].replace("_", "-")
    manifest = f"""
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    outputs:
      - dotenv: .env
        keys: {{P: "{{{{ db.password }}}}"}}
      - aws_secretsmanager: "again-{tag}"
        keys: {{P: "{{{{ db.password }}}}"}}
"""
    project = write_project(tmp_path / "p", manifest)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    project.write_text(manifest.split("      - aws_secretsmanager")[0])
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    project.write_text(manifest)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    assert secret(aws, f"again-{tag}") == {"P": reveal(server, "shop-prod")["password"]}
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0


def test_adding_or_removing_region_keeps_the_values(tmp_path: Path, server: Server, aws: dict[str, str]) -> None:
    """The same secret and parameters under another output name: written, never retired."""
    tag = tmp_path.name[-12:].replace("_", "-")
    manifest = f"""
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    outputs:
      - aws_ssm: "/reg-{tag}/"
        region: us-east-1
        keys: {{URL: "{{{{ db.connection_string }}}}"}}
      - aws_secretsmanager: "reg-{tag}"
        region: us-east-1
        keys: {{PW: "{{{{ db.password }}}}"}}
"""
    project = write_project(tmp_path / "p", manifest)
    assert invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws).code == 0
    project.write_text(manifest.replace("        region: us-east-1\n", ""))
    done = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert done.code == 0, done.out + done.err
    live = reveal(server, "shop-prod")
    assert parameters(aws, f"/reg-{tag}/") == {"URL": live["connectionString"]}
    assert secret(aws, f"reg-{tag}") == {"PW": live["password"]}
    assert invoke(["plan", "-f", str(project), "--detailed-exitcode"], server=server, env=aws).code == 0


def test_a_plain_value_never_replaces_a_secret_hepinfra_did_not_write(
    tmp_path: Path, server: Server, aws: dict[str, str]
) -> None:
    tag = tmp_path.name[-12:].replace("_", "-")
    client(aws, "secretsmanager").create_secret(Name=f"foreign-{tag}", SecretString='{"STRIPE_KEY": "sk_x"}')
    manifest = f"""
version: 1
environments: {{prod: {{}}}}
databases:
  shop:
    outputs:
      - aws_secretsmanager: "foreign-{tag}"
        value: "{{{{ db.password }}}}"
"""
    project = write_project(tmp_path / "p", manifest)
    failed = invoke(["apply", "-f", str(project), "--auto-approve"], server=server, env=aws)
    assert failed.code == 1 and "already holds a value hepinfra did not write" in failed.out + failed.err
    assert secret(aws, f"foreign-{tag}") == {"STRIPE_KEY": "sk_x"}
