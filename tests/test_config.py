"""The site configuration file: typed, validated with file and line, secrets never inline."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapter.cli import main
from adapter.config import ServerConfig, load_site_config
from adapter.errors import ConfigError, MappingError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_no_file_means_defaults():
    """Without a site file: no auth, 4 requests at once, batches of 100, pages of 1000."""
    site = load_site_config(None)
    assert site.source.auth.type == "none"
    sizes = (site.source.max_concurrent, site.source.batch_size, site.source.page_size)
    assert sizes == (4, 100, 1000)
    assert site.source.limits().max_concurrent == 4
    assert (site.source.retry().attempts, site.source.retry().timeout_total) == (10, 300.0)


def test_a_full_file_is_read_and_relative_secret_files_are_next_to_it(tmp_path):
    """Auth, limits and sizes per server; a relative key file is read from the file's folder."""
    path = write(
        tmp_path,
        """
source:
  auth: {type: smart-backend, client_id: c1, private_key_file: keys/k.pem, algorithm: ES384,
         kid: k1}
  max_concurrent: 2
  requests_per_second: 5
  batch_size: 50
sink:
  auth: {type: bearer, token_env: SINK_TOKEN}
  timeout: 30
""",
    )
    site = load_site_config(path)
    assert site.source.auth.type == "smart-backend"
    assert site.source.auth.private_key_file == tmp_path / "keys" / "k.pem"  # type: ignore[union-attr]
    assert site.source.limits().requests_per_second == 5
    assert site.source.batch_size == 50
    assert site.sink.auth.token_env == "SINK_TOKEN"  # type: ignore[union-attr]
    assert site.sink.timeout == 30


def test_a_secret_written_in_the_file_is_refused_without_echoing_it(tmp_path):
    """Secrets come from the environment or files, never from the configuration itself."""
    path = write(tmp_path, "source:\n  auth: {type: bearer, token: s3cr3t-value}\n")
    with pytest.raises(MappingError) as info:
        load_site_config(path)
    assert "s3cr3t-value" not in str(info.value)
    assert info.value.line == 2


def test_a_bad_value_names_file_line_and_field(tmp_path):
    """A typo fails at start with file, line and field."""
    path = write(tmp_path, "source:\n  max_concurent: 2\n")
    with pytest.raises(MappingError) as info:
        load_site_config(path)
    assert (info.value.line, info.value.field) == (2, "source.max_concurent")


def test_a_missing_file_is_a_config_error(tmp_path):
    """--config pointing nowhere."""
    with pytest.raises(ConfigError, match="not found"):
        load_site_config(tmp_path / "nope.yaml")


def test_the_cli_exits_2_on_a_bad_site_file_and_reads_trial_adapter_config(
    tmp_path, capsys, monkeypatch
):
    """--config or TRIAL_ADAPTER_CONFIG: a bad file is exit 2 with one line."""
    path = write(tmp_path, "source:\n  timeout: -1\n")
    demo = Path(__file__).resolve().parents[1] / "fixtures" / "demo"
    monkeypatch.setenv("TRIAL_ADAPTER_CONFIG", str(path))
    code = main(
        [
            "sweep",
            "--trial",
            "hcc-ablation-lenvatinib-pd1",
            "--source",
            str(demo),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "site.yaml:2" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_secret_variable_is_named_at_start(tmp_path, capsys, monkeypatch):
    """A bearer token variable that is not set stops the sweep with exit 2, naming the variable."""
    path = write(tmp_path, "source:\n  auth: {type: bearer, token_env: NO_SUCH_TOKEN_VAR}\n")
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    code = main(
        [
            "sweep",
            "--trial",
            "hcc-ablation-lenvatinib-pd1",
            "--source",
            "http://127.0.0.1:1/fhir",
            "--config",
            str(path),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "NO_SUCH_TOKEN_VAR" in err


def test_the_limits_of_issue_11_have_their_defaults():
    """256 MiB a response, 10,000 pages and an hour a search; no proxy, the bundled CAs."""
    server = load_site_config(None).source
    assert (server.max_response_mb, server.max_pages_per_search, server.search_seconds) == (
        256.0,
        10_000,
        3600.0,
    )
    assert (server.proxy, server.ca_bundle) == (None, None)


def test_limits_proxy_and_ca_bundle_are_read_with_the_bundle_next_to_the_file(tmp_path):
    """A relative ca_bundle is read from the config file's folder, like the auth key files."""
    path = write(
        tmp_path,
        """
source:
  max_response_mb: 1.5
  max_pages_per_search: 20
  search_seconds: 90
  proxy: http://proxy.hospital.example:3128
  ca_bundle: certs/hospital-ca.pem
sink:
  ca_bundle: /etc/ssl/site.pem
""",
    )
    site = load_site_config(path)
    assert site.source.max_response_bytes() == 1_572_864
    assert (site.source.search_limits().max_pages, site.source.search_limits().seconds) == (20, 90)
    assert site.source.proxy == "http://proxy.hospital.example:3128"
    assert site.source.ca_bundle == tmp_path / "certs" / "hospital-ca.pem"
    assert site.sink.ca_bundle == Path("/etc/ssl/site.pem")


@pytest.mark.parametrize(
    "line",
    [
        "timeout: .inf",
        "timeout: .nan",
        "search_seconds: .inf",
        "max_response_mb: .nan",
        "max_response_mb: 0",
        "max_pages_per_search: 0",
        "retry_budget_seconds: .inf",
        "requests_per_second: .inf",
    ],
)
def test_a_limit_that_is_not_a_finite_positive_number_is_refused(tmp_path, line):
    """`.inf` seconds or a `.nan` limit would switch the limit off unseen."""
    path = write(tmp_path, f"source:\n  {line}\n")
    with pytest.raises(MappingError) as info:
        load_site_config(path)
    assert info.value.line == 2


@pytest.mark.parametrize("field", ["timeout", "search_seconds", "max_response_mb"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), "nan", "-inf"])
def test_the_model_itself_refuses_non_finite_numbers(field, value):
    """Not only the YAML reader: ServerConfig built in code refuses them too."""
    with pytest.raises(ValidationError):
        ServerConfig(**{field: value})


@pytest.mark.parametrize(
    "proxy",
    [
        "http://user:s3cr3t@proxy.example:3128",
        "socks5://proxy.example:1080",
        "proxy.example:3128",
        "http://proxy.example:3128/path",
        "http://proxy.example:3128/?x=1",
    ],
)
def test_a_proxy_must_be_an_http_url_without_credentials(tmp_path, proxy):
    """A proxy password would be a secret in the file: refused, and not echoed."""
    path = write(tmp_path, f"source:\n  proxy: '{proxy}'\n")
    with pytest.raises(MappingError) as info:
        load_site_config(path)
    assert (info.value.line, info.value.field) == (2, "source.proxy")
    assert "s3cr3t" not in str(info.value)


# -- issue 12: one file for the nightly job -------------------------------------------------------


def test_one_file_holds_servers_trials_folders_and_notifications(tmp_path):
    """Server URLs, trials, out_dir and notify; relative files and folders are next to the file."""
    path = write(
        tmp_path,
        """
source:
  url: https://fhir.hospital.example/r4
sink:
  url: http://127.0.0.1:8765/fhir
  auth: {type: bearer, token_file: secrets/sink-token}
trials: [hcc-ablation-lenvatinib-pd1, trials/local.yaml, ./other.yml, /abs/t.json, x.json]
out_dir: reports
state_dir: ~/state
notify:
  smtp: {host: mail.example, from: a@hospital.example, to: [b@hospital.example],
         username: ta, password_file: secrets/smtp, ca_bundle: ca.pem}
  webhook: {url_file: secrets/hook-url, token_file: secrets/hook-token,
            headers: {X-Key: {file: secrets/key}, X-Team: research}}
""",
    )
    site = load_site_config(path)
    assert site.source.url == "https://fhir.hospital.example/r4"
    assert site.sink.url == "http://127.0.0.1:8765/fhir"
    assert site.sink.auth.token_file == tmp_path / "secrets" / "sink-token"  # type: ignore[union-attr]
    assert site.trials == (
        "hcc-ablation-lenvatinib-pd1",
        str(tmp_path / "trials" / "local.yaml"),
        str(tmp_path / "other.yml"),
        "/abs/t.json",
        str(tmp_path / "x.json"),
    )
    assert site.out_dir == tmp_path / "reports"
    assert site.state_dir == Path.home() / "state"
    assert site.notify is not None
    assert site.notify.smtp is not None
    assert site.notify.smtp.password_file == tmp_path / "secrets" / "smtp"
    assert site.notify.smtp.ca_bundle == tmp_path / "ca.pem"
    hook = site.notify.webhook
    assert hook is not None
    assert (hook.url_file, hook.token_file) == (
        tmp_path / "secrets" / "hook-url",
        tmp_path / "secrets" / "hook-token",
    )
    assert hook.headers["X-Key"].file == tmp_path / "secrets" / "key"  # type: ignore[union-attr]
    assert hook.headers["X-Team"] == "research"


def test_without_the_new_keys_nothing_changes():
    """A site file of issue 11 still loads: no URLs, trials, out_dir or notifications."""
    site = load_site_config(None)
    assert (site.source.url, site.sink.url, site.trials, site.out_dir, site.notify) == (
        None,
        None,
        (),
        None,
        None,
    )


@pytest.mark.parametrize(
    "url",
    [
        "fhir.hospital.example/r4",
        "ftp://fhir.hospital.example/r4",
        "https://fhir.hospital.example/r4?_format=json",
        "https://fhir.hospital.example/r4#x",
        "https://user:s3cr3t@fhir.hospital.example/r4",
    ],
)
def test_a_server_url_must_be_an_http_base_without_query_or_credentials(tmp_path, url):
    """The base URL is sent with every request: no query, fragment or password in it."""
    path = write(tmp_path, f"sink:\n  url: '{url}'\n")
    with pytest.raises(MappingError) as info:
        load_site_config(path)
    assert (info.value.line, info.value.field) == (2, "sink.url")
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("trials: hcc-ablation-lenvatinib-pd1\n", 1, "trials"),
        (
            "notify:\n  smtp: {host: m, from: a@b, to: [c@d], password: pw-in-file}\n",
            2,
            "notify.smtp",
        ),
        ("notify:\n  webhook: {url: 'http://alerts.example/h'}\n", 2, "notify.webhook"),
        ("notify: {}\n", 1, "notify"),
    ],
)
def test_a_bad_trials_or_notify_entry_names_file_line_and_field(tmp_path, text, line, field):
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as info:
        load_site_config(path)
    assert (info.value.line, info.value.field) == (line, field)
    assert "pw-in-file" not in str(info.value)
