"""``POST /api/v1/services/validate``: registration's checks, per entry, without writing anything."""

from __future__ import annotations

from tests.unit.controller.ingest_support import App


def test_dry_run_names_each_problem_and_writes_nothing(controller_app: App) -> None:
    client, h = controller_app.client, controller_app.admin()
    existing = {"name": "train", "command": ["python", "-m", "train"]}
    assert client.post("/api/v1/services", json=existing, headers=h).status_code == 201
    body = {
        "services": [
            {"name": "prep", "command": ["python", "-m", "prep"]},
            existing,
            {"name": "train2", "kind": "server", "command": ["serve"]},
            {"name": "../etc", "command": ["x"]},
            "not a mapping",
            {"name": "prep", "command": ["again"]},
            {"name": "train", "command": ["python", "-m", "train", "--fast"]} | {"name": "train"},
        ]
    }
    answer = client.post("/api/v1/services/validate", json=body, headers=h)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["ok"] is False
    actions = [(c["name"], c["action"]) for c in result["services"]]
    assert actions == [
        ("prep", "create"),
        ("train", "unchanged"),
        ("train2", "invalid"),
        ("../etc", "invalid"),
        (None, "invalid"),
        ("prep", "invalid"),
        ("train", "invalid"),
    ]
    errors = [c["errors"] for c in result["services"]]
    assert "port and health_path" in errors[2][0]
    assert errors[3][0].startswith("name: service name '../etc' is not allowed")
    assert "twice" in errors[5][0]
    # the same entry registered for real is refused the same way
    refused = client.post("/api/v1/services", json=body["services"][2], headers=h)
    assert refused.status_code == 422
    names = [s["name"] for s in client.get("/api/v1/services", headers=h).json()]
    assert names == ["train"]


def test_update_is_reported_and_readers_may_not_call_it(controller_app: App) -> None:
    client, h = controller_app.client, controller_app.admin()
    client.post("/api/v1/services", json={"name": "train", "command": ["a"]}, headers=h)
    answer = client.post(
        "/api/v1/services/validate", json={"services": [{"name": "train", "command": ["b"]}]}, headers=h
    ).json()
    assert answer == {"ok": True, "services": [{"index": 0, "name": "train", "action": "update", "errors": []}]}
    assert client.get("/api/v1/services/train", headers=h).json()["command"] == ["a"]
    reader = client.post("/api/v1/services/validate", json={"services": []}, headers=controller_app.reader())
    assert reader.status_code == 403
