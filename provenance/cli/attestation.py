"""``mlprov cc-attestation`` and the report behind ``--with-tdx``.

As atlas-cli: on a TDX guest the report comes from the TD, elsewhere a *mock* report labelled with the
OS name is used, and the manifest gets ``{"CustomAssertion": {"label": "tdx-linux", "data": "<JSON
string of the report>"}}``. mlprov would bind the report to the claim by putting the claim's hash in
the report's ``report_data`` when real attestation is available; reading a real TD report is not
implemented yet, so this module always produces the mock (``"bound_to_claim": false``, all-zero
``report_data``) and says so on stderr when a TDX device is present.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any, Final

import click

__all__ = ["TDX_LABEL", "attestation_report", "cc_attestation", "tdx_available"]

TDX_LABEL: Final = "tdx-linux"
_TDX_DEVICES: Final = (Path("/dev/tdx_guest"), Path("/dev/tdx-guest"))


def tdx_available() -> bool:
    return any(p.exists() for p in _TDX_DEVICES)


def platform_name() -> str:
    """``tdx-linux`` on a TDX guest, else the OS name (``linux``, ``darwin``...) as atlas-cli labels it."""
    return TDX_LABEL if tdx_available() else platform.system().lower() or "unknown"


def attestation_report() -> dict[str, Any]:
    """The attestation report for ``--with-tdx``: always the mock (see the module docstring)."""
    if tdx_available():
        click.echo(
            "note: a TDX device is present but reading real TD reports is not implemented; using a mock report",
            err=True,
        )
    return {
        "type": "mock_attestation",
        "platform": platform.system().lower() or "unknown",
        "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "mock_data": {
            "version": "1.0",
            "status": "simulated",
            "message": "This is a mock attestation report for non-Linux or unsupported platforms",
        },
        "report_data": "00" * 64,
        "bound_to_claim": False,
    }


def attestation_assertion_data() -> str:
    """The assertion's ``data``: the report as a JSON string (atlas-cli's shape)."""
    return json.dumps(attestation_report(), indent=2)


@click.group("cc-attestation", invoke_without_command=True)
@click.pass_context
def cc_attestation(ctx: click.Context) -> None:
    """Confidential-computing attestation (as atlas-cli; a mock report without TDX hardware).

    Without a sub-command, prints the report (as `show`).
    """
    if ctx.invoked_subcommand is None:
        click.echo(f"Got report: {attestation_assertion_data()}")


@cc_attestation.command("show")
def show() -> None:
    """Read the attestation report and print it."""
    click.echo(f"Got report: {attestation_assertion_data()}")


@cc_attestation.command("get-launch-measurement")
def get_launch_measurement() -> None:
    """Print the VM launch measurement (all zeros for the mock)."""
    click.echo(f"Launch measurement raw bytes: 0x{'00' * 48}")


@cc_attestation.command("verify-launch")
@click.option("--host-platform", default="gcp-tdx", show_default=True, help="VM host platform.")
def verify_launch(host_platform: str) -> None:
    """Verify the launch measurement against the host's endorsement (needs real TDX: unsupported here)."""
    from provenance.errors import InvalidInputError

    raise InvalidInputError(
        f"launch endorsement verification is not supported for platform {host_platform} without TDX hardware"
    )
