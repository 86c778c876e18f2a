"""The version is written once (screener_plans.__version__); everything else reads or checks it."""

import json
from importlib.metadata import version
from pathlib import Path

import screener_plans

ROOT = Path(__file__).resolve().parent.parent


def test_installed_metadata_reads_the_package_version():
    assert version("screener") == screener_plans.__version__


def test_bundles_require_this_screener_version():
    metas = sorted((ROOT / "bundles").glob("*/configs/metadata.json"))
    assert len(metas) == 4
    for meta in metas:
        required = json.loads(meta.read_text())["required_packages_version"]
        assert required["screener"] == screener_plans.__version__, meta


def test_changelog_names_the_version():
    assert f"## {screener_plans.__version__}" in (ROOT / "CHANGELOG.md").read_text()
