"""A pod's projected service-account token as the sidecar's credential: the exact TokenReview (audience),
the pod read by name, the mapping to the task by labels and uid, and the same scope as a task token."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import pytest
from kubernetes.client import AuthenticationV1Api, CoreV1Api
from sqlalchemy.orm import Session, sessionmaker

from controller.auth import (
    KubernetesTokenReviewer,
    ReviewedPod,
    Role,
    authenticate,
    authorize,
    is_service_account_token,
    needs_lookup,
)
from controller.errors import ForbiddenError, UnauthorizedError, UnavailableError
from controller.settings import Settings
from controller.store.db import make_engine, make_session_factory, session_scope
from controller.store.models import Base, Job, Task

NS = "ml-jobs"
AUD = "mlprov-controller"


def _jwt(sub: str) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'sub': sub})}.c2lnbmF0dXJl"


TOKEN = _jwt("system:serviceaccount:ml-jobs:mlprov-job")


class Resp:
    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()

    def release_conn(self) -> None:
        pass


def _review(authenticated: bool = True, *, pod: str = "job-pod", uid: str = "pod-uid", ns: str = NS) -> Resp:
    user = {
        "username": f"system:serviceaccount:{ns}:mlprov-job",
        "extra": {"authentication.kubernetes.io/pod-name": [pod], "authentication.kubernetes.io/pod-uid": [uid]},
    }
    return Resp({"status": {"authenticated": authenticated, "audiences": [AUD], "user": user}})


def _pod(task: str, attempt: int, uid: str = "pod-uid") -> Resp:
    labels = {"app.kubernetes.io/managed-by": "mlprov", "mlprov.io/task-id": task, "mlprov.io/attempt": str(attempt)}
    return Resp({"metadata": {"name": "job-pod", "uid": uid, "labels": labels}})


class Env:
    def __init__(self, tmp: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp / 'c.db'}")
        Base.metadata.create_all(engine)
        self.factory: sessionmaker[Session] = make_session_factory(engine)
        with session_scope(self.factory) as s:
            task = Task(service="train", state="running", params={}, inputs=[])
            s.add(task)
            s.flush()
            self.task_id = task.id
            s.add(Job(task_id=task.id, attempt=1, runtime="kubernetes", state="running"))
        self.authn = create_autospec(AuthenticationV1Api, instance=True)
        self.core = create_autospec(CoreV1Api, instance=True)
        self.reviewer = KubernetesTokenReviewer(
            authn=self.authn, core=self.core, namespace=NS, audience=AUD, request_timeout=4.0
        )
        self.settings = Settings(home=tmp / "home", admin_token="admin-token-for-k8s-auth-tests")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_a_pod_token_becomes_its_tasks_principal(env: Env) -> None:
    env.authn.create_token_review.return_value = _review()
    env.core.read_namespaced_pod.return_value = _pod(env.task_id, 1)
    with env.factory() as session:
        principal = authenticate(TOKEN, env.settings, session, reviewer=env.reviewer)
    assert (principal.role, principal.task_id) == (Role.TASK, env.task_id)
    env.authn.create_token_review.assert_called_once_with(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": TOKEN, "audiences": [AUD]}},
        _preload_content=False,
        _request_timeout=4.0,
    )
    env.core.read_namespaced_pod.assert_called_once_with("job-pod", NS, _preload_content=False, _request_timeout=4.0)
    # the same scope as a per-task token: its own task's endpoints only
    authorize(principal, "PUT", {"task_id": env.task_id})
    with pytest.raises(ForbiddenError):
        authorize(principal, "PUT", {"task_id": "another-task"})


def test_reviews_are_cached_by_token_but_the_task_is_checked_each_time(env: Env) -> None:
    env.authn.create_token_review.return_value = _review()
    env.core.read_namespaced_pod.return_value = _pod(env.task_id, 1)
    with env.factory() as session:
        authenticate(TOKEN, env.settings, session, reviewer=env.reviewer)
        authenticate(TOKEN, env.settings, session, reviewer=env.reviewer)
    assert env.authn.create_token_review.call_count == 1
    with session_scope(env.factory) as session:
        task = session.get(Task, env.task_id)
        assert task is not None
        task.state = "succeeded"
    with env.factory() as session, pytest.raises(UnauthorizedError):
        authenticate(TOKEN, env.settings, session, reviewer=env.reviewer)  # the task ended: like a revoked token


@pytest.mark.parametrize(
    ("review", "pod"),
    [
        (_review(authenticated=False), None),
        (_review(ns="other-namespace"), None),
        (_review(uid="another-uid"), "pod"),  # the pod was replaced: its name now belongs to someone else
        (_review(), "old-attempt"),
    ],
)
def test_refused_tokens(env: Env, review: Resp, pod: str | None) -> None:
    env.authn.create_token_review.return_value = review
    env.core.read_namespaced_pod.return_value = _pod(env.task_id, 2 if pod == "old-attempt" else 1)
    with env.factory() as session, pytest.raises(UnauthorizedError):
        authenticate(TOKEN, env.settings, session, reviewer=env.reviewer)
    if pod is None:
        env.core.read_namespaced_pod.assert_not_called()


def test_an_unreachable_api_server_is_unavailable_not_unauthorized(env: Env) -> None:
    env.authn.create_token_review.side_effect = OSError("connection refused")
    with env.factory() as session, pytest.raises(UnavailableError):
        authenticate(TOKEN, env.settings, session, reviewer=env.reviewer)


def test_without_the_kubernetes_runtime_pod_tokens_are_unknown(env: Env) -> None:
    with env.factory() as session, pytest.raises(UnauthorizedError):
        authenticate(TOKEN, env.settings, session)
    env.authn.create_token_review.assert_not_called()


def test_token_shapes() -> None:
    assert is_service_account_token(TOKEN)
    assert needs_lookup(TOKEN)
    assert needs_lookup("mlpt_abc")
    assert not is_service_account_token("mlpt_abc")
    assert not needs_lookup("admin-token")
    assert not needs_lookup(None)


def test_reviewed_pod_is_a_value() -> None:
    assert ReviewedPod(NS, "p", "t", 1) == ReviewedPod(NS, "p", "t", 1)
