"""Settings: defaults, environment, and errors that name the variable and the fix."""

import subprocess
import sys

import pytest

from visionstream.settings import SettingsError, load_settings


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    monkeypatch.setenv("VISIONSTREAM_BATCH_SIZE", "64")
    monkeypatch.setenv("VISIONSTREAM_BROKER_URL", "kafka://10.0.0.1:9092;10.0.0.2:9092")
    monkeypatch.setenv("VISIONSTREAM_MODEL_WEIGHTS", str(weights))
    settings = load_settings()
    assert settings.batch_size == 64
    assert settings.kafka_bootstrap == "10.0.0.1:9092,10.0.0.2:9092"
    assert settings.model_weights == weights


def test_empty_weights_setting_means_none(monkeypatch):
    monkeypatch.setenv("VISIONSTREAM_MODEL_WEIGHTS", "")
    assert load_settings().model_weights is None


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("VISIONSTREAM_BATCH_SIZE", "abc", "VISIONSTREAM_BATCH_SIZE='abc': Input should be a valid integer"),
        ("VISIONSTREAM_BATCH_SIZE", "0", "VISIONSTREAM_BATCH_SIZE='0': Input should be greater than or equal to 1"),
        ("VISIONSTREAM_BROKER_URL", "localhost:9092", "must look like kafka://host:port"),
        ("VISIONSTREAM_DEVICE", "tpu", "VISIONSTREAM_DEVICE='tpu': Input should be 'auto', 'cpu' or 'cuda'"),
        ("VISIONSTREAM_MODEL_WEIGHTS", "/nonexistent/w.pth", "file /nonexistent/w.pth does not exist"),
        ("VISIONSTREAM_MAX_BATCH_DELAY", "-1", "VISIONSTREAM_MAX_BATCH_DELAY='-1': Input should be greater than 0"),
    ],
)
def test_invalid_value_names_setting_and_fix(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert expected in message
    assert f"Fix: set {variable} to " in message


def test_secrets_never_shown(monkeypatch):
    monkeypatch.setenv("VISIONSTREAM_DATABASE_URL", "mysql://root:hunter2@db/x")
    monkeypatch.setenv("VISIONSTREAM_S3_SECRET_ACCESS_KEY", "s3cr3t")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "VISIONSTREAM_DATABASE_URL: Value error, must start with postgresql://" in message
    assert "hunter2" not in message

    monkeypatch.setenv("VISIONSTREAM_DATABASE_URL", "postgresql://root:hunter2@db/x")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "set both VISIONSTREAM_S3_ACCESS_KEY_ID and VISIONSTREAM_S3_SECRET_ACCESS_KEY" in message
    assert "hunter2" not in message and "s3cr3t" not in message

    monkeypatch.setenv("VISIONSTREAM_S3_ACCESS_KEY_ID", "key")
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "s3cr3t" not in repr(settings)


def test_cli_reports_invalid_setting_and_exits_2(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VISIONSTREAM_TOP_K": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "visionstream.cli.main", "migrate"], capture_output=True, text=True, env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "VISIONSTREAM_TOP_K='0'" in result.stderr
    assert "Fix: set VISIONSTREAM_TOP_K to" in result.stderr


def test_analyzer_settings_name_built_in_entry_point_and_dotted_analyzers():
    settings = load_settings(image_analyzers="classify,torchvision,mypkg.mod:build", frame_analyzers="")
    assert settings.image_analyzers == ["classify", "torchvision", "mypkg.mod:build"]
    with pytest.raises(SettingsError, match="VISIONSTREAM_IMAGE_ANALYZERS.*'nope' is not an analyzer"):
        load_settings(image_analyzers="classify,nope")
    with pytest.raises(SettingsError, match="VISIONSTREAM_FRAME_ANALYZERS.*each analyzer once"):
        load_settings(frame_analyzers="faces,faces")


def test_a_frames_only_worker_names_no_image_analyzer_but_some_worker_must_analyze():
    assert load_settings(image_analyzers="", frame_analyzers="faces").image_analyzers == []
    with pytest.raises(SettingsError, match="VISIONSTREAM_IMAGE_ANALYZERS or VISIONSTREAM_FRAME_ANALYZERS"):
        load_settings(image_analyzers="", frame_analyzers="")


def test_only_the_env_file_named_by_visionstream_env_file_is_read(monkeypatch, tmp_path):
    # A .env in the directory a command runs in (a checkout, a download folder) is not read: it could point a
    # worker at another database or bind its web server to every address.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VISIONSTREAM_ENV_FILE", raising=False)
    (tmp_path / ".env").write_text("VISIONSTREAM_WEB_HOST=0.0.0.0\nVISIONSTREAM_TOP_K=7\n")
    assert (load_settings().web_host, load_settings().top_k) == ("127.0.0.1", 5)
    named = tmp_path / "worker.env"
    named.write_text("VISIONSTREAM_TOP_K=7\n")
    monkeypatch.setenv("VISIONSTREAM_ENV_FILE", str(named))
    assert load_settings().top_k == 7
    monkeypatch.setenv("VISIONSTREAM_TOP_K", "3")  # the environment wins over the file
    assert load_settings().top_k == 3
    monkeypatch.setenv("VISIONSTREAM_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(SettingsError, match="VISIONSTREAM_ENV_FILE=.*no such file"):
        load_settings()
