from pathlib import Path

import pytest

from feedback.errors import ConfigError
from feedback.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no ./flywheel.toml unless a test writes one
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)


def test_defaults_name_the_local_broker_and_default_model() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.topics.partitions == 3
    assert settings.model.source == "smollm2-135m-instruct"
    assert settings.scheduler.cron == "0 3 * * *"


def test_nested_environment_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA__TOPICS__PARTITIONS", "6")
    monkeypatch.setenv("FLYWHEEL_GATEWAY__PORT", "9001")
    settings = load_settings()
    assert settings.kafka.topics.partitions == 6
    assert settings.gateway.port == 9001


def test_toml_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "custom.toml"
    config.write_text('[kafka]\nbootstrap_servers = "broker:9999"\n[worker]\nport = 8200\n')
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(config))
    monkeypatch.setenv("FLYWHEEL_WORKER__PORT", "8300")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "broker:9999"
    assert settings.worker.port == 8300


def test_flywheel_toml_in_working_directory_is_found(tmp_path: Path) -> None:
    (tmp_path / "flywheel.toml").write_text("[duckdb]\nthreads = 4\n")
    assert load_settings().duckdb.threads == 4


def test_invalid_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_KAFKA__TOPICS__PARTITIONS", "many")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "kafka.topics.partitions: Input should be a valid integer" in str(info.value)
    assert "'many'" in str(info.value)


def test_unknown_field_in_toml_is_named(tmp_path: Path) -> None:
    (tmp_path / "flywheel.toml").write_text("[gateway]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"gateway\.prot: Extra inputs are not permitted"):
        load_settings()


def test_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "flywheel.toml").write_text("[kafka\nbroken")
    with pytest.raises(ConfigError, match="config file could not be read"):
        load_settings()


def test_missing_named_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"FLYWHEEL_CONFIG: config file .*absent\.toml does not exist"):
        load_settings()


def test_production_refuses_development_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SECURITY__ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match=r"security\.signing_key: must be set in production"):
        load_settings()
    monkeypatch.setenv("FLYWHEEL_SECURITY__SIGNING_KEY", "s3cret-key")
    assert load_settings().security.environment == "production"


def test_audit_retention_below_180_days_is_refused_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().audit.retention_days == 180
    monkeypatch.setenv("FLYWHEEL_AUDIT__RETENTION_DAYS", "179")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert (
        "audit.retention_days: Value error, must be at least 180 days unless audit.force_retention is true (got 179)"
        in str(info.value)
    )
    monkeypatch.setenv("FLYWHEEL_AUDIT__FORCE_RETENTION", "true")
    assert load_settings().audit.retention_days == 179
    monkeypatch.setenv("FLYWHEEL_AUDIT__RETENTION_DAYS", "0")
    with pytest.raises(ConfigError, match=r"audit\.retention_days: Input should be greater than or equal to 1"):
        load_settings()


def test_auth_is_on_by_default_and_off_only_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().security.auth == "keys"
    monkeypatch.setenv("FLYWHEEL_SECURITY__AUTH", "off")
    assert load_settings().security.auth == "off"
    monkeypatch.setenv("FLYWHEEL_SECURITY__ENVIRONMENT", "production")
    monkeypatch.setenv("FLYWHEEL_SECURITY__SIGNING_KEY", "s3cret-key")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value).startswith(
        'invalid settings:\n  security: Value error, auth = "off" is only accepted with environment = "development"'
    )
