"""Fixtures of the chart tests: the chart rendered once per values file (default, dev, prod)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.infra.chart_support import VALUES, objects, render, values_of


@pytest.fixture(scope="module", params=sorted(VALUES))
def flavour(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def rendered(flavour: str) -> list[dict[str, Any]]:
    return objects(render(values_of(flavour)))
