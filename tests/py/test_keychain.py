"""The keychain block (static and bearer kinds) and the secret redactor."""

from __future__ import annotations

import logging

import pytest
from engine_harness import Engine

from noetl_pg.credentials import MappingCredentialResolver
from noetl_pg.errors import TemplateError
from noetl_pg.keychain import Keychain, KeychainError, RedactingFilter, SecretRedactor
from noetl_pg.templating import render_value

CREDENTIALS = MappingCredentialResolver({
    "api": {"token": "tok-abcdef-123"},
    "pg": {"db_user": "etl", "db_password": "pw-zyx-987", "db_host": "db"},
})
ENTRIES = [
    {"name": "api", "kind": "bearer", "credential": "api"},
    {"name": "inline", "kind": "bearer", "token": "{{ token_var }}"},
    {"name": "cfg", "kind": "static", "data": {"region": "{{ region }}", "api_key": "k-4455"}},
    {"name": "db", "kind": "static", "credential": "pg"},
    {"name": "bad", "kind": "oauth2"},
]


def keychain(redactor: SecretRedactor | None = None) -> Keychain:
    scope = {"token_var": "tok-from-workload", "region": "eu"}
    return Keychain(ENTRIES, CREDENTIALS, scope, redactor)


def test_bearer_and_static_entries_render_in_templates() -> None:
    scope = {"keychain": keychain()}
    assert render_value("{{ keychain.api.header }}", scope) == "Bearer tok-abcdef-123"
    assert render_value("{{ keychain.inline.token }}", scope) == "tok-from-workload"
    assert render_value("{{ keychain.cfg.region }}", scope) == "eu"
    assert render_value("{{ keychain.db.db_user }}:{{ keychain.db.db_password }}", scope) \
        == "etl:pw-zyx-987"


def test_unknown_entry_is_an_undefined_variable_and_bad_kind_an_error() -> None:
    scope = {"keychain": keychain()}
    with pytest.raises(TemplateError, match="undefined"):
        render_value("{{ keychain.nope.token }}", scope)
    with pytest.raises(KeychainError, match="kind must be one of static, bearer"):
        keychain()["bad"]


def test_entries_resolve_lazily_and_register_only_secrets() -> None:
    redactor = SecretRedactor()
    chain = keychain(redactor)
    assert redactor.secrets() == []
    chain["cfg"]
    assert redactor.secrets() == ["k-4455"]  # region "eu" is not a secret field
    chain["api"]
    chain["db"]
    assert set(redactor.secrets()) == {"k-4455", "tok-abcdef-123", "Bearer tok-abcdef-123",
                                       "pw-zyx-987"}


def test_redactor_hides_values_in_text_structures_and_logs() -> None:
    redactor = SecretRedactor(CREDENTIALS)
    redactor.add(["s3cr3t-value"])
    assert redactor("dsn postgresql://u:s3cr3t-value@h") == "dsn postgresql://u:***@h"
    assert redactor.redact_value({"a": ["x s3cr3t-value", 1], "pw-zyx-987": True}) == \
        {"a": ["x ***", 1], "***": True}
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed with %s", ("s3cr3t-value",),
                               None)
    RedactingFilter(redactor).filter(record)
    assert record.getMessage() == "failed with ***"


KEYCHAIN_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: keychain, path: test/keychain}
workload: {region: eu}
keychain:
  - {name: cfg, kind: static, data: {region: "{{ region }}", password: "p4ss-w0rd-x"}}
workflow:
  - step: use
    tool:
      kind: python
      input: {region: "{{ keychain.cfg.region }}", pw: "{{ keychain.cfg.password }}"}
      code: "result = {'region': region, 'pw': pw}"
"""


def test_keychain_in_a_run_and_results_redacted(fresh_engine: Engine) -> None:
    with fresh_engine.worker(slots=1, redact=SecretRedactor()):
        row = fresh_engine.run(KEYCHAIN_PLAYBOOK)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"region": "eu", "pw": "***"}
    events = fresh_engine.sql("select count(*) as n from noetl.event"
                              " where result::text like '%%p4ss-w0rd-x%%'")
    assert events == [{"n": 0}]
