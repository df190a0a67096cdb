"""Settings.from_env: defaults, seed variable names, unit conversion, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import JobKind, Settings
from actors.model.errors import QueueError, SettingsError
from actors.model.settings import KindLimits


def test_defaults_without_environment_match_the_seed() -> None:
    settings = Settings.from_env({}, dotenv_path=None)
    assert settings == Settings()
    assert settings.max_concurrent_videos == 2
    assert settings.max_concurrent_qa == 10
    assert settings.video_priority == 2
    assert settings.qa_priority == 1
    assert settings.retry_attempts == 3
    assert settings.backoff_base_s == 5.0
    assert settings.job_timeout_s == 300.0
    assert settings.max_memory_mb == 1600.0
    assert settings.memory_threshold_mb == 1600.0
    assert settings.python_api_base_url == "http://localhost:5001"


def test_seed_names_are_read_and_milliseconds_become_seconds() -> None:
    settings = Settings.from_env(
        {
            "QUEUE_MAX_CONCURRENT_VIDEOS": "4",
            "QUEUE_MAX_CONCURRENT_QA": "12",
            "QUEUE_VIDEO_PRIORITY": "3",
            "QUEUE_QA_PRIORITY": "2",
            "QUEUE_RETRY_ATTEMPTS": "5",
            "QUEUE_BACKOFF_DELAY": "5000",
            "QUEUE_BACKOFF_MAX_MS": "60000",
            "QUEUE_JOB_TIMEOUT_MS": "120000",
            "QUEUE_MAX_MEMORY_MB": "1800",
            "MEMORY_THRESHOLD_MB": "1500.5",
            "MEMORY_CHECK_INTERVAL_MS": "2500",
            "QUEUE_MAX_WAITING_VIDEOS": "40",
            "QUEUE_MAX_WAITING_QA": "400",
            "QUEUE_MAX_WAITING_VIDEOS_PER_COMPANY": "10",
            "QUEUE_RETENTION_MS": "3600000",
            "QUEUE_RETENTION_MAX_JOBS": "250",
            "PYTHON_API_BASE_URL": "http://python-api:5001/",
        },
        dotenv_path=None,
    )
    assert settings.max_concurrent_videos == 4
    assert settings.max_concurrent_qa == 12
    assert settings.video_priority == 3
    assert settings.qa_priority == 2
    assert settings.retry_attempts == 5
    assert settings.backoff_base_s == 5.0
    assert settings.backoff_max_s == 60.0
    assert settings.job_timeout_s == 120.0
    assert settings.max_memory_mb == 1800.0
    assert settings.memory_threshold_mb == 1500.5
    assert settings.memory_check_interval_s == 2.5
    assert settings.max_waiting_videos == 40
    assert settings.max_waiting_qa == 400
    assert settings.retention_s == 3600.0
    assert settings.retention_max_jobs == 250
    assert settings.python_api_base_url == "http://python-api:5001"  # trailing slash dropped
    assert settings.limits(JobKind.VIDEO) == KindLimits(4, 40, 3, 10)
    assert settings.limits(JobKind.QA) == KindLimits(12, 400, 2, 400)  # the default


def test_blank_values_fall_back_to_defaults() -> None:
    settings = Settings.from_env({"QUEUE_MAX_CONCURRENT_VIDEOS": "  ", "QUEUE_BACKOFF_DELAY": ""},
                                 dotenv_path=None)
    assert settings.max_concurrent_videos == 2
    assert settings.backoff_base_s == 5.0


def test_every_bad_value_is_reported_at_once_naming_its_variable() -> None:
    bad = {
        "QUEUE_MAX_CONCURRENT_VIDEOS": "two",  # not a number
        "QUEUE_MAX_CONCURRENT_QA": "0",  # zero makes no sense
        "QUEUE_RETRY_ATTEMPTS": "-1",  # negative
        "QUEUE_BACKOFF_DELAY": "soon",  # not a number (ms)
        "QUEUE_JOB_TIMEOUT_MS": "0",  # a zero deadline
        "QUEUE_VIDEO_PRIORITY": "7",  # outside 1..3
        "QUEUE_MAX_MEMORY_MB": "nan",  # not finite
        "MEMORY_THRESHOLD_MB": "-100",  # negative
        "QUEUE_MAX_WAITING_VIDEOS": "1.5",  # not an integer
        "PYTHON_API_BASE_URL": "ftp://python-api",  # not http(s)
        "QUEUE_STORE": "redis",  # not a known store
    }
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(bad, dotenv_path=None)

    problems = caught.value.problems
    assert len(problems) == len(bad), problems
    for name in bad:
        assert sum(problem.startswith(f"{name}=") for problem in problems) == 1, (name, problems)
        assert name in str(caught.value)
    assert isinstance(caught.value, QueueError)
    assert str(caught.value).startswith("invalid configuration: ")


def test_backoff_cap_below_base_delay_is_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"QUEUE_BACKOFF_DELAY": "5000", "QUEUE_BACKOFF_MAX_MS": "1000"},
                          dotenv_path=None)
    assert caught.value.problems == ["QUEUE_BACKOFF_MAX_MS must not be below QUEUE_BACKOFF_DELAY"]


def test_dotenv_file_is_honoured_and_the_real_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# deployed settings\n"
        "QUEUE_MAX_CONCURRENT_VIDEOS=3\n"
        "QUEUE_BACKOFF_DELAY=2500\n"
        "PYTHON_API_BASE_URL=http://from-dotenv:5001\n",
        encoding="utf-8",
    )
    settings = Settings.from_env({"PYTHON_API_BASE_URL": "http://from-env:5001"},
                                 dotenv_path=str(dotenv))
    assert settings.max_concurrent_videos == 3
    assert settings.backoff_base_s == 2.5
    assert settings.python_api_base_url == "http://from-env:5001"


def test_bad_value_in_dotenv_is_reported_too(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("QUEUE_RETRY_ATTEMPTS=many\n", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({}, dotenv_path=str(dotenv))
    assert caught.value.problems == ["QUEUE_RETRY_ATTEMPTS='many' is not an integer"]


def test_a_missing_dotenv_file_is_not_an_error(tmp_path: Path) -> None:
    assert Settings.from_env({}, dotenv_path=str(tmp_path / "absent.env")) == Settings()


def test_replace_returns_a_changed_copy() -> None:
    settings = Settings()
    changed = settings.replace(max_concurrent_videos=1)
    assert changed.max_concurrent_videos == 1
    assert settings.max_concurrent_videos == 2


def test_node_backend_variables_that_are_not_read_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from actors.model.settings import warn_superseded

    with caplog.at_level("WARNING"):
        found = warn_superseded({"MAX_CONCURRENT_QA_REQUESTS": "20", "REQUEST_TIMEOUT_MS": ""})
    assert found == ["MAX_CONCURRENT_QA_REQUESTS is set but not read; use QUEUE_MAX_CONCURRENT_QA"]
    assert "QUEUE_MAX_CONCURRENT_QA" in caplog.text
