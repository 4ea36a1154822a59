"""Missing shared assets skip a test locally and fail it in CI (tests/media.py)."""

from __future__ import annotations

import pytest

from .. import media


@pytest.fixture
def no_assets(monkeypatch, tmp_path):
    monkeypatch.setattr(media, "ASSETS", tmp_path / "not-the-assets")


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_in_ci_a_missing_asset_fails_the_test(no_assets, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        media.media_file(*media.ARCADE_VIDEO)
    with pytest.raises(pytest.fail.Exception, match="squeezenet1_1_imagenet.pth"):
        media.squeezenet_weights()


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_missing_asset_skips_the_test(no_assets, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="VISIONSTREAM_TEST_ASSETS"):
        media.media_file(*media.ARCADE_VIDEO)
    assert media.squeezenet_weights() is None  # tests that need only some model run without the real weights
