"""`helm lint --strict` through Helm's SDK, on every value set: no warning, no error."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from conftest import CHART, KUBE_VERSIONS, NAMESPACE, VALUE_SETS

WARNING = 2


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_chart_lints_clean_with(name: str) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(
            CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0"
        )
        problems = [m for m in report["messages"] if m["severity"] >= WARNING]
        assert not problems and not report["errors"], (kube, problems, report["errors"])


def test_lint_finds_a_broken_template(tmp_path) -> None:
    """The lint above is not vacuous: a template that does not parse is reported."""
    copy = tmp_path / "factotum"
    helm.Chart.load(CHART).save_dir(tmp_path)
    assert not helm.lint(copy, VALUE_SETS["defaults"], strict=True)["errors"]
    (copy / "templates" / "broken.yaml").write_text("{{ if }}\n")
    report = helm.lint(copy, VALUE_SETS["defaults"], strict=True)
    assert any("broken.yaml" in e for e in report["errors"]), report


def test_the_chart_is_a_v2_chart_with_a_minimum_kubernetes() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["type"] == "application"
    assert meta["kubeVersion"] == ">=1.28.0-0"
    assert (CHART / "values.schema.json").is_file()
    assert (CHART / "templates" / "NOTES.txt").is_file()
    assert (CHART / "README.md").is_file()
