"""infra/dev/kind.sh: valid bash (shellcheck when installed), and it installs what the chart expects."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.unit.infra.chart_support import CHART, ROOT, values_of

SCRIPT = ROOT / "infra" / "dev" / "kind.sh"


def test_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None
    done = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout


def test_script_matches_the_chart_and_values() -> None:
    text = SCRIPT.read_text()
    dev = values_of("dev")
    for image in ("controller", "sidecar", "stages"):
        assert (dev["images"][image]["repository"], dev["images"][image]["tag"]) == (f"mlprov-{image}", "dev")
    assert '-t "mlprov-$image:dev"' in text
    assert "values-dev.yaml" in text
    assert (CHART / "values-dev.yaml").is_file()
    assert "pod-security.kubernetes.io/enforce=restricted" in text
    # the Secret names the chart and airflow-values.yaml read
    for secret in ("mlprov-signing-identity", "mlprov-admin-token", "mlprov-controller-connection", "airflow-metadata"):
        assert secret in text, secret
    # every tool version is pinned (overridable through the environment)
    pins = dict(re.findall(r"^([A-Z_]+_VERSION)=\$\{\1:-([^}]+)\}$", text, flags=re.M))
    assert set(pins) >= {"CNPG_CHART_VERSION", "STRIMZI_VERSION", "ECK_VERSION", "AIRFLOW_CHART_VERSION"}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in pins.values()), pins
